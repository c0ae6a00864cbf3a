"""``NAME_tokenizer``: texts in, the token tensors of ``NAME`` out, for Triton's python backend.

The converters copy this file into every version of a text entry's tokenizer model
(``<repo>/NAME_tokenizer/<version>/model.py``) beside that version's own tokenizer files
(``tokenizer/``, copied from ``NAME/<version>/tokenizer/``) and ``settings.json`` (``max_length``,
the pad token, the length buckets). The ensemble ``NAME_text`` runs it before ``NAME``, so a plain
Triton client sends strings.

Each execution (Triton's dynamic batcher may hand it several requests) tokenizes all its rows in one
``encode_batch`` call, truncated to ``max_length``, and pads them all to ONE length: the smallest
bucket (16, 24, 32, 48, 64, 96, ...: each power of two and 1.5 times it, below ``max_length``, and
``max_length``) that holds the longest row.
So the requests it answers have equal shapes, and the encoder's dynamic batcher (which merges only
requests of equal shapes) can run them, and those of other executions in the same bucket, as one
batch.

It runs in the Triton server's python (``.venv-triton`` locally, NVIDIA's image in production):
only the standard library, numpy (<2 locally) and ``tokenizers``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# What each output the config may declare holds, by name: an attribute of a tokenizers Encoding.
_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "settings.json"), encoding="utf-8") as handle:
            settings = json.load(handle)
        self.max_length = int(settings["max_length"])
        self.pad_id = int(settings["pad_id"])
        self.buckets = sorted(int(b) for b in settings["buckets"])
        if not self.buckets or self.buckets[-1] != self.max_length:
            raise pb_utils.TritonModelException(
                f"{self.name}: settings.json buckets {self.buckets} must end at max_length {self.max_length}"
            )
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer", "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.input_name = config["input"][0]["name"]
        # (output name, Encoding attribute, numpy type, pad value) for each output of the config.
        self.outputs = []
        for output in config.get("output", []):
            if output["name"] not in _FIELDS:
                raise pb_utils.TritonModelException(
                    f"{self.name}: output {output['name']!r} is not one this model makes "
                    f"({', '.join(_FIELDS)})"
                )
            dtype = pb_utils.triton_string_to_numpy(output["data_type"])
            pad = self.pad_id if output["name"] == "input_ids" else 0
            self.outputs.append((output["name"], _FIELDS[output["name"]], dtype, pad))

    def _texts(self, request) -> list[str]:
        array = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
        texts = []
        for value in array.reshape(-1):
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ValueError(
                        f"{self.name}: input {self.input_name!r} holds bytes that are not UTF-8 ({err}); "
                        "send UTF-8 text"
                    ) from None
            texts.append(str(value))
        return texts

    def bucket(self, longest: int) -> int:
        """The smallest bucket that holds ``longest`` tokens (rows are truncated to max_length)."""
        return next(b for b in self.buckets if b >= longest)

    def execute(self, requests: list) -> list:
        texts: list[list[str] | None] = []
        errors: list[str | None] = []
        for request in requests:
            try:
                texts.append(self._texts(request))
                errors.append(None)
            except ValueError as err:
                texts.append(None)
                errors.append(str(err))
        rows = [text for request_texts in texts if request_texts for text in request_texts]
        encodings = self.tokenizer.encode_batch(rows) if rows else []
        width = self.bucket(max((len(e.ids) for e in encodings), default=1))
        tensors = {}
        for name, field, dtype, pad in self.outputs:
            values = np.full((len(encodings), width), pad, dtype=dtype)
            for row, encoding in enumerate(encodings):
                got = getattr(encoding, field)
                values[row, : len(got)] = got
            tensors[name] = values

        responses = []
        start = 0
        for request_texts, error in zip(texts, errors, strict=True):
            if error is not None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error)))
                continue
            stop = start + len(request_texts)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, values[start:stop]) for name, values in tensors.items()
                    ]
                )
            )
            start = stop
        return responses
