"""Fixed, real inputs for an entry, built from its manifest: the parity checks, the int8 gate, the
in-process speed measurements and the benchmarks all feed the same data.

- text tasks: ``SENTENCES`` through the entry's own tokenizer (``<version>/tokenizer/``);
- image-classification: seeded standard-normal tensors of the declared C,H,W;
- Lightning entries of any signature: the seeded inputs of their recorded signature
  (``converters.signatures``).
"""

from __future__ import annotations

from itertools import cycle, islice
from pathlib import Path

import numpy as np

from converters.sentences import SENTENCES
from core.errors import InvalidArgument

IMAGE_SEED = 1234


# Where speed measurements start in SENTENCES: a sentence of 16 tokens, as in the baseline of DESIGN.md.
TYPICAL = 2


def sentences(batch: int, start: int = 0) -> list[str]:
    """``batch`` sentences, cycling through SENTENCES from index ``start``."""
    return list(islice(cycle(SENTENCES[start:] + SENTENCES[:start]), batch))


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise InvalidArgument(f"{folder}: the entry has no tokenizer files", field="tokenizer")
    return AutoTokenizer.from_pretrained(str(folder))


def tokenize(tokenizer, texts, max_length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return {k: np.asarray(encoded[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}


def seeded_images(shape: tuple[int, ...], batch: int, seed: int = IMAGE_SEED) -> np.ndarray:
    return np.random.default_rng(seed + batch).standard_normal((batch, *shape)).astype(np.float32)


class EntryInputs:
    """Makes feeds of any batch size for one version of an entry."""

    def __init__(self, manifest: dict, version_dir: Path):
        self.task = manifest["task"]
        self.tokenizer = None
        self.signature = None
        if "signature" in manifest:  # Lightning entries: the seeded inputs of the recorded signature
            from converters.signatures import Signature

            self.signature = Signature.from_manifest(manifest)
        elif self.task == "image-classification":
            self.name = manifest["inputs"][0]["name"]
            self.shape = tuple(int(d) for d in manifest["inputs"][0]["shape"][1:])
        else:
            self.tokenizer = load_tokenizer(version_dir / manifest["preprocessing"]["tokenizer"])
            self.max_length = int(manifest["preprocessing"]["max_length"])

    def feeds(self, batch: int, start: int = 0) -> dict[str, np.ndarray]:
        """A batch of the fixed inputs (text: from sentence ``start`` on)."""
        if self.signature is not None:
            from converters.signatures import generate

            return generate(list(self.signature.inputs), batch, 0, self.signature.seed)
        if self.tokenizer is None:
            return {self.name: seeded_images(self.shape, batch)}
        return tokenize(self.tokenizer, sentences(batch, start), self.max_length)
