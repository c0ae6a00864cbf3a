"""Per-task processing around the Triton call, one table per step, keyed by the names the task registry
(``core/tasks.py``) gives each task and route:

- ``PREPROCESS[task.input_kind]``: a request's inputs, checked against ``limits``, -> the tensors of the
  chosen model version;
- ``POSTPROCESS[task.postprocess]``: Triton's output rows -> one result per item;
- ``REPLIES[route.reply]``: the results -> the answer's fields (beside ``model`` and ``version``).

A new task adds its functions here under new names (or reuses these) and names them in its entry.
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from core.errors import InvalidArgument
from serving.http import check_items, check_texts
from serving.models import ModelEntry, VersionEntry
from serving.settings import Limits

# ---- what an endpoint hands the shared request path -----------------------------------------------


@dataclass(frozen=True)
class TextField:
    name: str  # the body field, as errors name it
    texts: list[str]
    many: bool  # the body gives a list (checked against limits.max_items)


@dataclass(frozen=True)
class Texts:
    """A request's text fields in body order; their texts go to the tokenizer as one batch, in order."""

    kind: ClassVar[str] = "text"
    fields: tuple[TextField, ...]

    @classmethod
    def of(cls, **fields: str | list[str]) -> "Texts":
        """``Texts.of(query=query, candidates=candidates)``: a str is one text, a list is many."""
        return cls(
            tuple(
                TextField(name, [value] if isinstance(value, str) else value, many=not isinstance(value, str))
                for name, value in fields.items()
            )
        )

    def field(self, name: str) -> list[str]:
        return next(f.texts for f in self.fields if f.name == name)


@dataclass(frozen=True)
class Images:
    """A request's images: image files (base64) or pixel arrays; exactly one of the two is sent."""

    kind: ClassVar[str] = "image"
    files: list[str] | None
    arrays: list | None
    many: bool

    @classmethod
    def one(cls, image: str | None, array: list | None) -> "Images":
        return cls(None if image is None else [image], None if array is None else [array], many=False)

    @classmethod
    def many(cls, images: list[str] | None, arrays: list[list] | None) -> "Images":
        return cls(images, arrays, many=True)


@dataclass(frozen=True)
class Request:
    """One request as the processing steps see it: its inputs and the options of its answer."""

    inputs: Texts | Images
    top_k: int | None = None  # labels per item (classifiers), or ranked candidates (similarity)
    # OpenAI's embeddings options: "float" (lists of numbers) or "base64" (little-endian float32 bytes),
    # and the width asked for (only the model's own is served).
    encoding_format: str = "float"
    dimensions: int | None = None
    # Tokens per text the model was given (its attention mask), set once the inputs are tensors.
    tokens: tuple[int, ...] = ()


# ---- preprocessing, per input kind ----------------------------------------------------------------


def text_tensors(inputs: Texts, version: VersionEntry, limits: Limits) -> dict[str, np.ndarray]:
    for field in inputs.fields:
        if field.many:
            check_items(field.texts, field.name, limits)
        for i, text in enumerate(field.texts):
            if not isinstance(text, str):  # OpenAI's token arrays: ids of a tokenizer that is not the model's
                where = f"{field.name}[{i}]" if field.many else field.name
                raise InvalidArgument(
                    f"{where}: {text!r:.60} is not text; token ids are not accepted (each model tokenizes "
                    "with its own tokenizer): send the text itself, a string or a list of strings",
                    field=field.name,
                )
    for field in inputs.fields:
        check_texts(field.texts, field.name, limits)
    encoded = version.text.encode([text for field in inputs.fields for text in field.texts])
    return {name: encoded[name] for name in version.input_names}


def image_tensors(inputs: Images, version: VersionEntry, limits: Limits) -> dict[str, np.ndarray]:
    names = ("images", "arrays") if inputs.many else ("image", "array")
    if (inputs.files is None) == (inputs.arrays is None):
        raise InvalidArgument(
            f"{names[0]}/{names[1]}: send exactly one of `{names[0]}` (base64 file bytes) or "
            f"`{names[1]}` (pixel values)",
            field=names[0],
        )
    items = inputs.files if inputs.files is not None else inputs.arrays
    field_name = names[0] if inputs.files is not None else names[1]
    if inputs.many:
        check_items(items, field_name, limits)
    tensors = []
    for i, item in enumerate(items):
        where = f"{field_name}[{i}]" if inputs.many else field_name
        if inputs.files is not None:
            tensors.append(version.image.decode(item, where))
        else:
            tensors.append(version.image.from_array(item, where))
    return {version.input_names[0]: np.stack(tensors)}


def token_counts(tensors: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Tokens per item as the model sees them (special tokens included, after truncation): the sums of
    the attention mask; () for inputs without one (images)."""
    mask = tensors.get("attention_mask")
    return () if mask is None else tuple(int(n) for n in mask.sum(axis=1))


PREPROCESS: dict[str, Callable[[Any, VersionEntry, Limits], dict[str, np.ndarray]]] = {
    "text": text_tensors,
    "image": image_tensors,
}


# ---- post-processing, per kind of output ----------------------------------------------------------


def check_top_k(top_k: int | None, entry: VersionEntry, default: int) -> int:
    top_k = default if top_k is None else top_k
    return min(top_k, len(entry.labels)) if entry.labels else top_k


def top_labels(logits: np.ndarray, labels: tuple[str, ...], top_k: int) -> list[list[dict]]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1)[:, :top_k]
    return [
        [
            {"label": labels[j] if j < len(labels) else str(j), "index": int(j), "score": float(row[j])}
            for j in idx
        ]
        for row, idx in zip(probs, order, strict=True)
    ]


def embeddings(output: np.ndarray, request: Request, entry: ModelEntry, chosen: VersionEntry) -> np.ndarray:
    """The vectors as the graph gives them (pooling and normalisation are inside it)."""
    return output


def labels(output: np.ndarray, request: Request, entry: ModelEntry, chosen: VersionEntry) -> list:
    """Logits -> the top-k labels of each item with softmax probabilities (top_k: the request's, else
    the model's configured one; at most the number of labels)."""
    return top_labels(output, chosen.labels, check_top_k(request.top_k, chosen, entry.top_k))


POSTPROCESS: dict[str, Callable[[np.ndarray, Request, ModelEntry, VersionEntry], Any]] = {
    "embeddings": embeddings,
    "labels": labels,
}


# ---- replies, per route ---------------------------------------------------------------------------


def similarity(vectors: np.ndarray, request: Request) -> dict:
    """Candidates ranked by cosine similarity to the query (the first text), best first."""
    candidates = request.inputs.field("candidates")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    scores = unit[1:] @ unit[0]
    order = np.argsort(-scores, kind="stable")[: request.top_k or len(candidates)]
    return {"results": [{"index": int(i), "text": candidates[i], "score": float(scores[i])} for i in order]}


def openai_embeddings(vectors: np.ndarray, request: Request) -> dict:
    """OpenAI's embeddings answer: ``data`` in input order, each vector as numbers or, with
    ``encoding_format: base64``, its little-endian float32 bytes in base64 (what the ``openai`` client
    asks for by default and decodes); ``usage`` counts the tokens the model was given."""
    width = int(vectors.shape[1])
    if request.dimensions is not None and request.dimensions != width:
        raise InvalidArgument(
            f"dimensions: {request.dimensions} is not this model's width; it gives {width}-dimensional "
            f"embeddings: leave `dimensions` out or send {width}",
            field="dimensions",
        )
    if request.encoding_format == "base64":
        little = np.ascontiguousarray(vectors, dtype="<f4")
        encoded: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        encoded = list(vectors)
    tokens = sum(request.tokens)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


REPLIES: dict[str, Callable[[Any, Request], dict]] = {
    "embedding": lambda vectors, request: {"embedding": vectors[0]},
    "embeddings": lambda vectors, request: {"embeddings": vectors},
    "similarity": similarity,
    "predictions": lambda ranked, request: {"predictions": ranked[0]},
    "results": lambda ranked, request: {"results": [{"predictions": p} for p in ranked]},
    "openai_embeddings": openai_embeddings,
}
