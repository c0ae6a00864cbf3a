"""Per-task processing around the Triton call, one table per step, keyed by the names the task registry
(``core/tasks.py``) gives each task and route:

- ``PREPROCESS[task.input_kind]``: a request's inputs, checked against ``limits``, -> the tensors of the
  chosen model version;
- ``POSTPROCESS[task.postprocess]``: Triton's outputs (by name) -> one result per item;
- ``REPLIES[route.reply]``: the results -> the answer's fields (beside ``model`` and ``version``).

A new task adds its functions here under new names (or reuses these) and names them in its entry.
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from core.companions import TEXT_INPUT
from core.errors import InvalidArgument
from serving.http import check_items, check_pixels, check_texts
from serving.models import ModelEntry, VersionEntry
from serving.protocol import check_batch, check_tensor
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
class Features:
    """Rows of numbers (a tabular classifier's features): one row, or many."""

    kind: ClassVar[str] = "features"
    rows: list
    many: bool

    @classmethod
    def one(cls, features: list) -> "Features":
        return cls([features], many=False)

    @classmethod
    def of(cls, rows: list) -> "Features":
        return cls(rows, many=True)


@dataclass(frozen=True)
class Tensors:
    """Named tensors as nested lists, e.g. ``{"features": [[0.1, 0.2]], "mask": [[true, false]]}``."""

    kind: ClassVar[str] = "tensors"
    values: dict[str, Any]


@dataclass(frozen=True)
class Request:
    """One request as the processing steps see it: its inputs and the options of its answer."""

    inputs: Texts | Images | Features | Tensors
    top_k: int | None = None  # labels per item (classifiers), or ranked candidates (similarity)
    # OpenAI's embeddings options: "float" (lists of numbers) or "base64" (little-endian float32 bytes),
    # and the width asked for (only the model's own is served).
    encoding_format: str = "float"
    dimensions: int | None = None
    # Tokens per text the model was given (its attention mask), set once the inputs are tensors.
    tokens: tuple[int, ...] = ()


# ---- preprocessing, per input kind ----------------------------------------------------------------


def text_tensors(inputs: Texts, version: VersionEntry, limits: Limits) -> dict[str, np.ndarray]:
    """The token tensors of the texts (tokenized here), or, for a version served through the entry's
    ensemble (``tokenize: triton``), the texts themselves: one UTF-8 string per row."""
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
    texts = [text for field in inputs.fields for text in field.texts]
    if version.via_text_model:
        return {TEXT_INPUT: np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)}
    encoded = version.text.encode(texts)
    return {name: encoded[name] for name in version.input_names}


def image_tensors(inputs: Images, version: VersionEntry, limits: Limits) -> dict[str, np.ndarray]:
    """Every image's size is read first (file headers, array lengths) and the request's total checked
    against ``limits.max_request_pixels``; only then is any image decoded."""
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
    where = [f"{field_name}[{i}]" if inputs.many else field_name for i in range(len(items))]
    pipeline = version.image
    if inputs.files is not None:
        opened = [pipeline.open(item, at) for item, at in zip(items, where, strict=True)]
        sizes = [image.pixels for image in opened]
    else:
        sizes = [height * width for height, width in map(pipeline.array_size, items, where)]
    check_pixels(sum(sizes), len(items), field_name, limits)
    if inputs.files is not None:
        tensors = [pipeline.pixels(image, at) for image, at in zip(opened, where, strict=True)]
    else:
        tensors = [pipeline.from_array(item, at) for item, at in zip(items, where, strict=True)]
    return {version.input_names[0]: np.stack(tensors)}


def token_counts(tensors: dict[str, np.ndarray], inputs: Texts, version: VersionEntry) -> tuple[int, ...]:
    """Tokens per text as the model sees them (special tokens included, after truncation): the sums of
    the attention mask; for texts sent to the ensemble (``tokenize: triton``), which answers with the
    embeddings only, the lengths of the same tokenizer's encodings here (unpadded, as truncated)."""
    mask = tensors.get("attention_mask")
    if mask is not None:
        return tuple(int(n) for n in mask.sum(axis=1))
    if version.text is None:
        return ()
    texts = [text for field in inputs.fields for text in field.texts]
    return tuple(len(encoding.ids) for encoding in version.text.encodings(texts))


def feature_tensors(inputs: Features, version: VersionEntry, limits: Limits) -> dict[str, np.ndarray]:
    """Each row: as many numbers as the entry's input has features, in its datatype."""
    field_name = "rows" if inputs.many else "features"
    if inputs.many:
        check_items(inputs.rows, field_name, limits)
    spec = version.inputs[0]
    width = spec.shape[1]
    for i, row in enumerate(inputs.rows):
        where = f"{field_name}[{i}]" if inputs.many else field_name
        if not isinstance(row, list) or (width > 0 and len(row) != width):
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise InvalidArgument(
                f"{where}: {got}; the model takes a list of {width if width > 0 else 'N'} numbers",
                field=where,
            )
    array = check_tensor(inputs.rows, None, spec, field_name, "the model", limits.max_items)
    return {spec.name: array}


def named_tensors(inputs: Tensors, version: VersionEntry, limits: Limits) -> dict[str, np.ndarray]:
    """Every input of the entry, by name, each checked against its manifest spec."""
    specs = {spec.name: spec for spec in version.inputs}
    if not isinstance(inputs.values, dict):
        raise InvalidArgument("inputs: send an object of named tensors", field="inputs")
    unknown = [name for name in inputs.values if name not in specs]
    if unknown:
        raise InvalidArgument(
            f"inputs.{unknown[0]}: not an input of the model (its inputs: {', '.join(specs)})",
            field=f"inputs.{unknown[0]}",
        )
    absent = [name for name in specs if name not in inputs.values]
    if absent:
        raise InvalidArgument(f"inputs: the model also needs {', '.join(map(repr, absent))}", field="inputs")
    arrays = {
        name: check_tensor(value, None, specs[name], f"inputs.{name}", "the model", limits.max_items)
        for name, value in inputs.values.items()
    }
    check_batch(arrays, "inputs")
    return arrays


PREPROCESS: dict[str, Callable[[Any, VersionEntry, Limits], dict[str, np.ndarray]]] = {
    "text": text_tensors,
    "image": image_tensors,
    "features": feature_tensors,
    "tensors": named_tensors,
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


Outputs = dict[str, np.ndarray]


def embeddings(outputs: Outputs, request: Request, entry: ModelEntry, chosen: VersionEntry) -> np.ndarray:
    """The vectors as the graph gives them (pooling and normalisation are inside it)."""
    return outputs[chosen.output_name]


def labels(outputs: Outputs, request: Request, entry: ModelEntry, chosen: VersionEntry) -> list:
    """Logits -> the top-k labels of each item with softmax probabilities (top_k: the request's, else
    the model's configured one; at most the number of labels)."""
    return top_labels(
        outputs[chosen.output_name], chosen.labels, check_top_k(request.top_k, chosen, entry.top_k)
    )


def _tag(label: str) -> tuple[str, str]:
    """("B" or "I", the entity type) of a label: B-PER -> (B, PER), I-PER -> (I, PER), other -> (I, it)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def token_entities(text: str, encoding: Any, logits: np.ndarray, labels: tuple[str, ...]) -> list[dict]:
    """One text's entities from its per-token logits, as Hugging Face's token-classification pipeline
    gives them with ``aggregation_strategy="simple"``: each token (special ones skipped) takes its top
    label; adjacent tokens of one entity type merge unless a token starts a new one (B-); a group's
    score is the mean of its tokens'; groups labelled O are left out. ``start``/``end`` are character
    offsets in ``text`` and ``text`` is that span of it."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    scores = shifted / shifted.sum(axis=-1, keepdims=True)
    groups: list[list[tuple[str, float, int, int]]] = []
    for index, (special, (start, end)) in enumerate(
        zip(encoding.special_tokens_mask, encoding.offsets, strict=True)
    ):
        if special:
            continue
        best = int(np.argmax(scores[index]))
        label = labels[best] if best < len(labels) else str(best)
        token = (label, float(scores[index, best]), int(start), int(end))
        if groups:
            bi, tag = _tag(label)
            if tag == _tag(groups[-1][-1][0])[1] and bi != "B":
                groups[-1].append(token)
                continue
        groups.append([token])
    found = []
    for group in groups:
        tag = group[0][0].split("-", 1)[-1]
        if tag == "O":
            continue
        start, end = group[0][2], group[-1][3]
        score = float(np.mean([token[1] for token in group]))
        found.append({"label": tag, "score": score, "text": text[start:end], "start": start, "end": end})
    return found


def entities(outputs: Outputs, request: Request, entry: ModelEntry, chosen: VersionEntry) -> list:
    """Per-token logits -> each text's entities (``token_entities``), from its own encoding."""
    logits = outputs[chosen.output_name]
    texts = [text for field in request.inputs.fields for text in field.texts]
    encodings = chosen.text.encodings(texts)
    return [
        token_entities(text, encoding, logits[row, : len(encoding.ids)], chosen.labels)
        for row, (text, encoding) in enumerate(zip(texts, encodings, strict=True))
    ]


def tensors(outputs: Outputs, request: Request, entry: ModelEntry, chosen: VersionEntry) -> Outputs:
    """Every output, by name, as Triton gave it."""
    return outputs


POSTPROCESS: dict[str, Callable[[Outputs, Request, ModelEntry, VersionEntry], Any]] = {
    "embeddings": embeddings,
    "labels": labels,
    "entities": entities,
    "tensors": tensors,
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
    "entities": lambda found, request: {"entities": found[0]},
    "entity_results": lambda found, request: {"results": [{"entities": e} for e in found]},
    "tensors": lambda outputs, request: {"outputs": outputs},
}
