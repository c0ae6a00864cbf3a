"""Requests into the tensors a model version takes, as its repository entry declares them: texts through
the entry's own fast tokenizer, images decoded, resized and normalised by the manifest's
``preprocessing`` block. Every bad input is an error naming its field."""

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidArgument, NotFound, PayloadTooLarge


class TextPipeline:
    """An entry's own fast tokenizer: batched, truncated to ``max_length``, padded to the longest text."""

    def __init__(self, tokenizer_dir: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        path = tokenizer_dir / "tokenizer.json"
        if not path.is_file():
            raise NotFound(
                f"{path}: the entry has no fast tokenizer file; re-publish it with the converters",
                field="tokenizer",
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        self.max_length = max_length
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        pad_token, pad_id = _pad_token(tokenizer_dir, self.tokenizer)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    def encodings(self, texts: list[str]) -> list[Any]:
        """Each text's own encoding (truncated as ``encode`` truncates it, never padded): its tokens'
        character offsets in the text and which tokens are special, for token-level results."""
        return [self.tokenizer.encode(text) for text in texts]

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        if len(texts) == 1:
            encodings = [self.tokenizer.encode(texts[0])]
        else:
            encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }


def _pad_token(tokenizer_dir: Path, tokenizer: Any) -> tuple[str, int]:
    """The pad token named in tokenizer_config.json (or [PAD]/<pad>), and its id."""
    names = []
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file():
        pad = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
        names.append(pad.get("content") if isinstance(pad, dict) else pad)
    for name in [*names, "[PAD]", "<pad>"]:
        if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
            return name, tokenizer.token_to_id(name)
    return "[PAD]", 0  # padded positions are masked out, so the id only has to be a valid one


# PIL's resampling filters by the names a manifest uses.
RESAMPLE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

# The image formats a manifest may declare (``preprocessing.formats``), each known by the first bytes of
# its file. A request's bytes are matched against these before Pillow sees them: Pillow would otherwise
# try every plugin it has (an EPS goes to Ghostscript). Entries that declare none accept PNG and JPEG.
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "WEBP": (b"RIFF",),  # and "WEBP" at offset 8, checked in sniff()
}
DEFAULT_FORMATS = ("PNG", "JPEG")
# base64 is decoded this many characters at a time (a multiple of 4): between two pieces the decoding
# thread lets the event loop run, where one call on a 16 MB string would hold the GIL for ~30 ms.
B64_PIECE = 1 << 20


def sniff(raw: bytes) -> str | None:
    """The format whose signature ``raw`` starts with, or None."""
    for name, signatures in SIGNATURES.items():
        if raw.startswith(signatures) and (name != "WEBP" or raw[8:12] == b"WEBP"):
            return name
    return None


def describe_bytes(raw: bytes) -> str:
    """What a refused file looks like, for the error: a format we know by name, else its first bytes."""
    known = sniff(raw)
    if known:
        return f"a {known} file"
    if raw.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "a PostScript/EPS file"
    return f"bytes starting {raw[:8]!r}"


def b64decode(data: str) -> bytes:
    """Strict base64 (standard alphabet, padded), decoded piece by piece (see B64_PIECE)."""
    if len(data) <= B64_PIECE:
        return base64.b64decode(data, validate=True)
    return b"".join(
        base64.b64decode(data[i : i + B64_PIECE], validate=True) for i in range(0, len(data), B64_PIECE)
    )


@dataclass(frozen=True)
class OpenedImage:
    """An image file whose header has been read (format and size known), no pixel decoded yet."""

    raw: bytes
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class ImagePipeline:
    """Decode, resize, crop and normalise as the manifest's ``preprocessing`` block declares.

    The block (docs/repository.md): ``channels``, ``height``, ``width`` (the model's input), ``mean``,
    ``std``, ``scale``; optionally ``resize`` (``{"height", "width"}`` or ``{"shortest_edge"}``, the
    aspect ratio kept as Hugging Face's image processors keep it; absent: resized to height x width),
    ``resample`` (a PIL filter name, default bilinear) and ``crop`` (``{"height", "width"}``, a center
    crop after the resize, as Hugging Face's ``center_crop`` does it, zero-padded when the image is
    smaller). Then ``(pixels * scale - mean) / std``, channels first.
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    max_pixels: int
    resize: tuple[tuple[str, int], ...] | None = None  # the `resize` block's items; None: height x width
    resample: str = "bilinear"
    crop: tuple[int, int] | None = None  # (height, width)
    formats: tuple[str, ...] = DEFAULT_FORMATS

    @classmethod
    def from_manifest(cls, pre: dict, max_pixels: int, where: str) -> "ImagePipeline":
        try:
            channels, height, width = int(pre["channels"]), int(pre["height"]), int(pre["width"])
            mean = tuple(float(v) for v in pre.get("mean", [0.0] * channels))
            std = tuple(float(v) for v in pre.get("std", [1.0] * channels))
            scale = float(pre.get("scale", 1 / 255))
            resize = pre.get("resize")
            resize = None if resize is None else tuple(sorted((str(k), int(v)) for k, v in resize.items()))
            crop = pre.get("crop")
            crop = None if crop is None else (int(crop["height"]), int(crop["width"]))
            resample = str(pre.get("resample", "bilinear"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidArgument(
                f"{where}: preprocessing needs channels, height, width (and mean, std, scale; resize, "
                f"resample, crop): {err}",
                field="preprocessing",
            ) from None
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels or 0 in std:
            raise InvalidArgument(
                f"{where}: preprocessing has channels={channels}, mean={list(mean)}, std={list(std)}; "
                "channels must be 1 or 3 with one non-zero std and one mean per channel",
                field="preprocessing",
            )
        keys = None if resize is None else {k for k, _ in resize}
        if keys not in (None, {"height", "width"}, {"shortest_edge"}) or resample not in RESAMPLE_FILTERS:
            raise InvalidArgument(
                f"{where}: preprocessing has resize={pre.get('resize')}, resample={resample!r}; resize is "
                "{height, width} or {shortest_edge}, resample one of " + ", ".join(RESAMPLE_FILTERS),
                field="preprocessing",
            )
        formats = pre.get("formats", DEFAULT_FORMATS)
        if (
            isinstance(formats, str)
            or not isinstance(formats, list | tuple)
            or not formats
            or any(f not in SIGNATURES for f in formats)
        ):
            raise InvalidArgument(
                f"{where}: preprocessing.formats is {formats!r}; list image formats out of "
                f"{', '.join(SIGNATURES)} (default: {', '.join(DEFAULT_FORMATS)})",
                field="preprocessing.formats",
            )
        return cls(
            channels, height, width, mean, std, scale, max_pixels, resize, resample, crop, tuple(formats)
        )

    def decode(self, data: str, field_name: str) -> np.ndarray:
        """A base64 image (PNG, JPEG, ...; a data: URL prefix is accepted) -> the model's CHW input."""
        return self.pixels(self.open(data, field_name), field_name)

    def open(self, data: str, field_name: str) -> OpenedImage:
        """A base64 image file -> its format and size from its header; nothing is decoded yet. Refused:
        bad base64, a format the manifest does not declare (by the file's signature, before Pillow sees
        it), a header Pillow cannot read, more pixels than ``max_pixels`` (413)."""
        from PIL import Image, UnidentifiedImageError

        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            raw = b64decode(data)
        except (binascii.Error, ValueError):
            raise InvalidArgument(
                f"{field_name}: not valid base64 (standard alphabet, padded); send the image file's bytes "
                "base64-encoded, e.g. base64.b64encode(open('cat.png','rb').read()).decode()",
                field=field_name,
            ) from None
        kind = sniff(raw)
        if kind not in self.formats:
            raise InvalidArgument(
                f"{field_name}: the {len(raw)} decoded bytes are {describe_bytes(raw)}; this model takes "
                f"{', '.join(self.formats)} files (its manifest's preprocessing.formats); send one of those",
                field=field_name,
            )
        try:
            with Image.open(io.BytesIO(raw), formats=[kind]) as image:
                size = image.size
        except Image.DecompressionBombError as err:
            raise self._too_large(field_name, str(err)) from None
        except UnidentifiedImageError:
            raise InvalidArgument(
                f"{field_name}: the {len(raw)} decoded bytes start like a {kind} file but its header "
                f"cannot be read; send a complete {kind} file",
                field=field_name,
            ) from None
        except (OSError, SyntaxError, ValueError) as err:
            raise self._damaged(field_name, kind, err) from None
        opened = OpenedImage(raw, kind, *size)
        if opened.pixels > self.max_pixels:
            raise PayloadTooLarge(
                f"{field_name}: the image is {opened.width}x{opened.height} pixels; the limit is "
                f"{self.max_pixels} pixels (limits.max_image_pixels); send a smaller image",
                field=field_name,
            )
        return opened

    def pixels(self, opened: OpenedImage, field_name: str) -> np.ndarray:
        """Decode an opened image (Pillow releases the GIL while it decodes and resizes) -> CHW input."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(opened.raw), formats=[opened.format]) as image:
                image.load()
                return self.prepare(image)
        except Image.DecompressionBombError as err:
            raise self._too_large(field_name, str(err)) from None
        except (OSError, SyntaxError, ValueError) as err:
            raise self._damaged(field_name, opened.format, err) from None

    def _too_large(self, field_name: str, why: str) -> PayloadTooLarge:
        size = re.search(r"(\d+) pixels", why)
        return PayloadTooLarge(
            f"{field_name}: the image decodes to {size.group(1) + ' pixels' if size else 'too many pixels'} "
            f"(a decompression bomb); the limit is {self.max_pixels} pixels (limits.max_image_pixels)",
            field=field_name,
        )

    def _damaged(self, field_name: str, kind: str, err: Exception) -> InvalidArgument:
        if "too large" in str(err).lower():  # Pillow's MAX_TEXT_CHUNK / ImageFile.SAFEBLOCK guards
            return PayloadTooLarge(
                f"{field_name}: the {kind} file inflates past Pillow's limit on its chunks ({err}); "
                "send a plain image file",
                field=field_name,
            )
        return InvalidArgument(
            f"{field_name}: the image is damaged or truncated ({err}); send a complete {kind} file",
            field=field_name,
        )

    def array_size(self, values: Any, field_name: str) -> tuple[int, int]:
        """Height and width of nested lists from their lengths, before any number is converted."""
        if not isinstance(values, list) or not values or not isinstance(values[0], list):
            raise InvalidArgument(
                f"{field_name}: not a rectangular array of numbers; "
                f"send H x W x {self.channels} pixel values",
                field=field_name,
            )
        return len(values), len(values[0])

    def from_array(self, values: Any, field_name: str) -> np.ndarray:
        """Pixels as nested lists, HxWxC (or HxW for one channel), values 0..255 -> the model's CHW input.
        Converted row by row: numpy holds the GIL while it converts a Python list, and one call on a
        whole 16 MB array would stall the event loop for ~300 ms; between rows the loop gets its turn."""
        from PIL import Image

        height, width = self.array_size(values, field_name)
        if height * width > self.max_pixels:
            raise PayloadTooLarge(
                f"{field_name}: {height}x{width} pixels; the limit is {self.max_pixels} pixels "
                "(limits.max_image_pixels); send a smaller array",
                field=field_name,
            )
        try:
            array = np.stack([np.asarray(row, dtype=np.float32) for row in values])
        except (ValueError, TypeError):
            raise InvalidArgument(
                f"{field_name}: not a rectangular array of numbers; "
                f"send H x W x {self.channels} pixel values",
                field=field_name,
            ) from None
        if array.ndim == 2 and self.channels == 1:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] != self.channels or 0 in array.shape:
            raise InvalidArgument(
                f"{field_name}: shape {list(array.shape)}; expected height x width x {self.channels} "
                f"(e.g. {self.height} x {self.width} x {self.channels}) pixel values 0..255",
                field=field_name,
            )
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise InvalidArgument(
                f"{field_name}: values must be finite pixel values in 0..255 (got min {array.min()}, "
                f"max {array.max()})",
                field=field_name,
            )
        if array.shape[:2] != (self.height, self.width) or self.resize is not None or self.crop is not None:
            pixels = array.round().astype(np.uint8)
            mode = "L" if self.channels == 1 else "RGB"
            image = Image.fromarray(pixels[:, :, 0] if self.channels == 1 else pixels, mode=mode)
            return self.prepare(image)
        return self._scale(array)

    def prepare(self, image: Any) -> np.ndarray:
        """A PIL image -> the model's CHW input: mode, resize, crop, scale, normalise."""
        from PIL import Image

        image = image.convert("L" if self.channels == 1 else "RGB")
        size = self._resized_size(image.width, image.height)
        if image.size != size:
            image = image.resize(size, getattr(Image.Resampling, self.resample.upper()))
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.crop is not None:
            array = center_crop(array, *self.crop)
        return self._scale(array.astype(np.float32))

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step (Hugging Face's rule for the shortest edge)."""
        resize = dict(self.resize or (("height", self.height), ("width", self.width)))
        if "shortest_edge" not in resize:
            return resize["width"], resize["height"]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize["shortest_edge"], int(resize["shortest_edge"] * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def _scale(self, hwc: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((hwc * np.float32(self.scale) - mean) / std).transpose(2, 0, 1))


def center_crop(hwc: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre ``height`` x ``width`` of an HxWxC array, as Hugging Face's ``center_crop`` takes it
    (offsets rounded down; zero padding, centred, where the image is smaller)."""
    orig_height, orig_width = hwc.shape[:2]
    top, left = (orig_height - height) // 2, (orig_width - width) // 2
    if top >= 0 and left >= 0:
        return hwc[top : top + height, left : left + width]
    new_height, new_width = max(height, orig_height), max(width, orig_width)
    padded = np.zeros((new_height, new_width, hwc.shape[2]), dtype=hwc.dtype)
    top_pad, left_pad = -(-(new_height - orig_height) // 2), -(-(new_width - orig_width) // 2)
    padded[top_pad : top_pad + orig_height, left_pad : left_pad + orig_width] = hwc
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_height, top + height), max(0, left) : min(new_width, left + width)]
