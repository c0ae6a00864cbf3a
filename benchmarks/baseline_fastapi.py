"""The baseline most teams write first: a plain FastAPI app that runs the PyTorch model eagerly, one
forward pass per request, in one uvicorn worker. No ONNX, no batching across requests, no server.

It speaks the same routes and bodies as the Bento service (``service.py``: ``/embed`` with ``text``,
``/embed/batch`` with ``texts``, ``/predict`` with a base64 ``image``), so the same Locust user
(``benchmarks/locustfile.py:BentoUser``) drives both and the comparison is request for request.

    python -m benchmarks.baseline_fastapi --text-model DIR --checkpoint CKPT --port PORT

It listens on 127.0.0.1 only. (Not on an inherited socket: uvicorn takes a ``--fd`` socket for a
UNIX one and leaves Nagle's algorithm on, which adds ~40 ms to every small response and would make
the baseline look worse than what teams actually run.)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import io
import logging
import sys
from pathlib import Path

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

DEFAULT_MODULE = "converters.examples.image_classifier:ImageClassifier"
MAX_ITEMS = 64
MAX_TEXT_CHARS = 10000


class EmbedRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class EmbedBatchRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=MAX_ITEMS)


class PredictRequest(BaseModel):
    image: str = Field(min_length=1, description="an image file (PNG, JPEG), base64")
    top_k: int = Field(default=3, ge=1)


class TextEncoder:
    """Hugging Face model + tokenizer, mean pooling and L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, folder: Path, max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> list[list[float]]:
        torch = self.torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()


class ImageModel:
    """A LightningModule from its checkpoint; preprocessing from its hyperparameters."""

    def __init__(self, checkpoint: Path, module: str) -> None:
        import numpy as np
        import torch

        module_name, _, class_name = module.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        self.np, self.torch = np, torch
        self.model = cls.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=True).eval()
        hp = self.model.hparams
        self.labels = list(hp["labels"])
        self.shape = (int(hp["channels"]), int(hp["height"]), int(hp["width"]))
        self.mean = np.asarray(hp["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(hp["std"], dtype=np.float32).reshape(-1, 1, 1)

    def preprocess(self, data: bytes):
        from PIL import Image

        channels, height, width = self.shape
        image = Image.open(io.BytesIO(data)).convert("RGB" if channels == 3 else "L").resize((width, height))
        array = self.np.asarray(image, dtype=self.np.float32).reshape(height, width, channels)
        return (array.transpose(2, 0, 1) / 255.0 - self.mean) / self.std

    def __call__(self, images: list[bytes], top_k: int) -> list[list[dict]]:
        torch = self.torch
        batch = torch.from_numpy(self.np.stack([self.preprocess(b) for b in images]).astype(self.np.float32))
        with torch.inference_mode():
            probs = torch.softmax(self.model(batch), dim=1)
        scores, indices = probs.topk(min(top_k, len(self.labels)), dim=1)
        return [
            [{"label": self.labels[i], "score": float(s)} for s, i in zip(row_s, row_i, strict=True)]
            for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
        ]


def create_app(text_model: Path | None, checkpoint: Path | None, module: str = DEFAULT_MODULE):
    from fastapi import FastAPI, HTTPException

    encoder = TextEncoder(text_model) if text_model else None
    classifier = ImageModel(checkpoint, module) if checkpoint else None
    app = FastAPI(title="FastAPI-eager baseline")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    # Plain `def` endpoints: FastAPI runs each in its thread pool, as a first version usually does.
    @app.post("/embed")
    def embed(request: EmbedRequest) -> dict:
        if encoder is None:
            raise HTTPException(404, "this baseline was started without --text-model")
        return {"embedding": encoder([request.text])[0]}

    @app.post("/embed/batch")
    def embed_batch(request: EmbedBatchRequest) -> dict:
        if encoder is None:
            raise HTTPException(404, "this baseline was started without --text-model")
        return {"embeddings": encoder(request.texts)}

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:
        if classifier is None:
            raise HTTPException(404, "this baseline was started without --checkpoint")
        try:
            data = base64.b64decode(request.image, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(
                400, "image: not valid base64; send the file's bytes base64-encoded"
            ) from None
        try:
            return {"predictions": classifier([data], request.top_k)[0]}
        except OSError as err:  # PIL: not an image
            raise HTTPException(400, f"image: not a readable image file ({err})") from None

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline_fastapi", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--text-model", type=Path, help="Hugging Face model folder (serves /embed)")
    parser.add_argument("--checkpoint", type=Path, help="Lightning .ckpt (serves /predict)")
    parser.add_argument(
        "--module", default=DEFAULT_MODULE, help=f"LightningModule class (default {DEFAULT_MODULE})"
    )
    parser.add_argument(
        "--port", type=int, required=True, help="serve on 127.0.0.1:PORT (0: the kernel picks)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.text_model is None and args.checkpoint is None:
        parser.error("give --text-model, --checkpoint or both")
    for flag, path in (("--text-model", args.text_model), ("--checkpoint", args.checkpoint)):
        if path is not None and not path.exists():
            print(f"error: {flag}: {path} does not exist", file=sys.stderr)
            return 2
    import uvicorn

    app = create_app(args.text_model, args.checkpoint, args.module)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
