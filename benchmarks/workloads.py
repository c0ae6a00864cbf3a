"""The workloads, as data, and the fixed local inputs every stack is given.

Each workload names a repository entry and the shape of one item. Text items are real sentences
(``converters.sentences``) cut to exactly ``tokens`` tokens by the entry's own tokenizer, so the
ceiling, Triton, the Bento service and the FastAPI baseline all see the same sequences; image items
are seeded random images of the entry's declared shape. Every request carries one item. ``repeats`` is
the cache stack's workload: known items at a given rate, new ones otherwise.

A mixed-length workload (``lengths``) draws each item's token count from a seeded log-normal
distribution clipped to a range (most items short, a long tail), as real traffic is: one length for
every item hides what padding a batch to its longest member costs. Its items are reported in tokens/s
as well as items/s (``Inputs.mean_tokens``).
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.companions import TEXT_INPUT
from core.errors import InvalidArgument, NotFound
from core.repository import Repository

SAMPLES = 64  # distinct items per workload; requests cycle through them


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # repository entry
    kind: str  # "text" | "image"
    tokens: int = 0  # text: tokens per sequence, [CLS] and [SEP] included
    description: str = ""
    # Mixed lengths: (shortest, longest, median) tokens of a seeded log-normal draw; None = ``tokens``.
    lengths: tuple[int, int, int] | None = None
    seed: int = 16

    def token_counts(self, samples: int) -> list[int]:
        """Tokens of each item ([CLS] and [SEP] included): ``tokens`` every time, or, for a mixed
        workload, a seeded log-normal draw around the median (sigma 0.8: about 9 items in 10 under
        3x the median) clipped to [shortest, longest]."""
        if self.lengths is None:
            return [self.tokens] * samples
        low, high, median = self.lengths
        rng = np.random.default_rng(self.seed)
        drawn = np.exp(rng.normal(np.log(median), 0.8, size=samples))
        return [int(n) for n in np.clip(np.rint(drawn), low, high)]


WORKLOADS: dict[str, Workload] = {
    "minilm-short": Workload(
        "minilm-short",
        "minilm",
        "text",
        tokens=16,
        description="MiniLM embeddings, one 16-token sentence per request",
    ),
    "minilm-long": Workload(
        "minilm-long",
        "minilm",
        "text",
        tokens=128,
        description="MiniLM embeddings, one 128-token passage per request",
    ),
    "minilm-mixed": Workload(
        "minilm-mixed",
        "minilm",
        "text",
        lengths=(8, 256, 24),
        description="MiniLM embeddings, one sentence per request, 8 to 256 tokens (median 24, seeded "
        "log-normal: most short, a long tail)",
    ),
    "image": Workload(
        "image",
        "image_classifier",
        "image",
        description="Lightning example CNN, one 3x32x32 image per request",
    ),
}


def get_workloads(names: list[str] | None) -> list[Workload]:
    if not names:
        return list(WORKLOADS.values())
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise InvalidArgument(
            f"--workloads: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(WORKLOADS)}",
            field="workloads",
        )
    return [WORKLOADS[n] for n in names]


@dataclass
class Inputs:
    """The items of one workload, in both the tensor form (Triton, ONNX Runtime) and the form an HTTP
    client sends (texts, or images as PNG)."""

    workload: Workload
    tensors: list[dict[str, np.ndarray]]  # one dict per item, without the batch axis
    texts: list[str] | None = None
    png_b64: list[str] | None = None  # the raw images, PNG, base64

    def http_bodies(self) -> list[dict]:
        """One JSON body per item, as the Bento service (and the baseline, which mirrors it) takes it."""
        if self.texts is not None:
            return [{"text": text} for text in self.texts]
        return [{"image": png} for png in self.png_b64 or []]

    def batch(self, size: int, offset: int = 0) -> dict[str, np.ndarray]:
        """``size`` items stacked along a new batch axis, zero-padded to the longest (token ids and
        attention masks of mixed lengths; a padded position has mask 0, so outputs do not change)."""
        return stack_padded([self.tensors[(offset + i) % len(self.tensors)] for i in range(size)])

    def token_counts(self) -> list[int]:
        """Real tokens of each item (the attention mask's ones); empty for images."""
        if self.workload.kind != "text":
            return []
        return [int(item["attention_mask"].sum()) for item in self.tensors]

    def mean_tokens(self) -> float | None:
        """Mean real tokens per item: every stack cycles through the items in order, so items/s times
        this is tokens/s (to within one cycle of the measurement)."""
        counts = self.token_counts()
        return sum(counts) / len(counts) if counts else None

    def sorted_batches(self, size: int) -> list[dict[str, np.ndarray]]:
        """Every item once, sorted by length and cut into batches of ``size``, each padded to its own
        longest member: the least padding a server could do (the mixed workload's ceiling)."""
        order = sorted(range(len(self.tensors)), key=lambda i: self.tensors[i]["input_ids"].shape[0])
        items = [self.tensors[i] for i in order]
        return [stack_padded(items[i : i + size]) for i in range(0, len(items), size)]


def stack_padded(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Items stacked along a new batch axis; 1-D items of different lengths zero-padded at the end."""
    stacked = {}
    for name in items[0]:
        arrays = [item[name] for item in items]
        longest = max(a.shape[0] for a in arrays) if arrays[0].ndim else 0
        if arrays[0].ndim == 1 and any(a.shape[0] != longest for a in arrays):
            arrays = [np.pad(a, (0, longest - a.shape[0])) for a in arrays]
        stacked[name] = np.stack(arrays)
    return stacked


def load_inputs(workload: Workload, repository: Repository, samples: int = SAMPLES) -> Inputs:
    version = repository.require(workload.model)
    manifest = repository.manifest(workload.model, version)
    folder = repository.version_dir(workload.model, version)
    if workload.kind == "text":
        return _text_inputs(workload, folder, manifest, samples)
    return _image_inputs(workload, manifest, samples)


def _text_inputs(workload: Workload, folder: Path, manifest: dict, samples: int) -> Inputs:
    from tokenizers import Tokenizer

    from converters.sentences import SENTENCES

    tokenizer_dir = folder / manifest.get("preprocessing", {}).get("tokenizer", "tokenizer")
    tokenizer_file = tokenizer_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise NotFound(
            f"{tokenizer_file}: the entry {workload.model!r} has no fast tokenizer", field="tokenizer"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    words = " ".join(SENTENCES).split()
    # Tokens per word, counted once: the tokenizer splits on whitespace first, so counts add up.
    cost = [len(tokenizer.encode(word, add_special_tokens=False).ids) for word in words]
    special = len(tokenizer.encode("").ids)
    texts, tensors = [], []
    for i, tokens in enumerate(workload.token_counts(samples)):
        tokenizer.enable_truncation(max_length=tokens)
        start = (i * 7) % len(words)
        count, total = 0, special
        # Take words (wrapping around the corpus) until they fill the budget; truncation cuts the rest.
        while True:
            total += cost[(start + count) % len(words)]
            count += 1
            if total >= tokens:
                encoding = tokenizer.encode(" ".join(words[(start + k) % len(words)] for k in range(count)))
                if len(encoding.ids) == tokens:
                    break
        ids = np.asarray(encoding.ids, dtype=np.int64)
        tensors.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        texts.append(tokenizer.decode(encoding.ids, skip_special_tokens=True))
    return Inputs(workload, tensors, texts=texts)


def _image_inputs(workload: Workload, manifest: dict, samples: int) -> Inputs:
    from PIL import Image

    pre = manifest.get("preprocessing", {})
    try:
        channels, height, width = int(pre["channels"]), int(pre["height"]), int(pre["width"])
    except KeyError as err:
        raise InvalidArgument(
            f"manifest of {workload.model!r}: preprocessing lacks {err.args[0]!r}; re-export the entry",
            field="preprocessing",
        ) from None
    mean = np.asarray(pre.get("mean", [0.0] * channels), dtype=np.float32).reshape(channels, 1, 1)
    std = np.asarray(pre.get("std", [1.0] * channels), dtype=np.float32).reshape(channels, 1, 1)
    scale = float(pre.get("scale", 1 / 255))
    rng = np.random.default_rng(0)
    tensors, pngs = [], []
    for _ in range(samples):
        raw = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        chw = ((raw.transpose(2, 0, 1).astype(np.float32) * scale) - mean) / std
        tensors.append({"input": chw.astype(np.float32)})
        buffer = io.BytesIO()
        Image.fromarray(raw if channels == 3 else raw[..., 0]).save(buffer, format="PNG")
        pngs.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return Inputs(workload, tensors, png_b64=pngs)


def write_perf_analyzer_data(inputs: Inputs, path: Path, *, texts: bool = False) -> Path:
    """perf_analyzer's ``--input-data`` JSON: one entry per item, shapes without the batch axis (the
    token inputs' length is not in the config). ``texts``: the items' texts as the one string of the
    ``text`` input of the entry's ensemble ``NAME_text``."""
    if texts:
        if inputs.texts is None:
            raise InvalidArgument(
                f"{inputs.workload.name}: an {inputs.workload.kind} workload has no texts to send to a "
                "text model",
                field="workloads",
            )
        data = [{TEXT_INPUT: {"content": [text], "shape": [1]}} for text in inputs.texts]
    else:
        data = [
            {
                name: {"content": value.reshape(-1).tolist(), "shape": list(value.shape)}
                for name, value in item.items()
            }
            for item in inputs.tensors
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}), encoding="utf-8")
    return path


# ---- a workload with repeats (the cache stack, benchmarks/caching.py) ----------------------------------


def hit_rate(value: str | None) -> float | None:
    """``$MODELPACK_HIT_RATE`` (a share of repeats in [0, 1]), or None when unset (the items in turn)."""
    if not value:
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1:
        raise InvalidArgument(
            f"MODELPACK_HIT_RATE={value!r}: give a share of repeats from 0 to 1", field="MODELPACK_HIT_RATE"
        )
    return rate


def repeats(data: dict, rate: float, triton: bool, rng: random.Random) -> Iterator[str]:
    """Request bodies: a known item with probability ``rate`` (the caches hold them after the warm-up),
    else a new one: for the Bento, the words of a known text shuffled with a few redrawn; for Triton,
    a known sequence's inner token ids redrawn from the ids the items use (same length)."""
    if data["kind"] != "text":
        raise InvalidArgument(
            "MODELPACK_HIT_RATE: the cache workload needs a text workload", field="workload"
        )
    known = data["triton_bodies"] if triton else data["bodies"]
    words = sorted({w for text in data["texts"] for w in text.split()})
    ids = sorted({i for seq in data["token_ids"] for i in seq[1:-1]})
    names = [i["name"] for i in json.loads(data["triton_bodies"][0])["inputs"]] if triton else []
    known_set = set(known)
    while True:
        if rng.random() < rate:
            yield rng.choice(known)
            continue
        body = known[0]
        while body in known_set:  # a new item is never one of the known ones
            body = new_body(data, triton, words, ids, names, rng)
        yield body


def new_body(data: dict, triton: bool, words: list, ids: list, names: list, rng: random.Random) -> str:
    """One item made from the known ones (see ``repeats``)."""
    if triton:
        seq = list(rng.choice(data["token_ids"]))
        seq[1:-1] = [rng.choice(ids) for _ in seq[1:-1]]
        # The entry's own token inputs, as the known bodies name them (token_type_ids: zeros).
        fill = {"input_ids": seq, "attention_mask": [1] * len(seq), "token_type_ids": [0] * len(seq)}
        inputs = [
            {"name": name, "shape": [1, len(seq)], "datatype": "INT64", "data": fill[name]} for name in names
        ]
        return json.dumps({"inputs": inputs, "outputs": [{"name": data["output"]}]})
    else:
        text = rng.choice(data["texts"]).split()
        rng.shuffle(text)
        text[: len(text) // 3] = [rng.choice(words) for _ in range(len(text) // 3)]
        body = {"text": " ".join(text)}
        if data["version"] is not None:
            body["version"] = data["version"]
        return json.dumps(body)
