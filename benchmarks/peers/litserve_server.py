"""The LitServe peer: LitServe 0.2.19 + ONNX Runtime serving a repository entry's own ``model.onnx``.

What a user who picked LitServe would write for our model: a LitAPI that tokenizes (the entry's
``tokenizer.json``, padded to the batch's longest), runs ONNX Runtime on the batch LitServe formed and
returns one embedding per request. It answers the Bento's route and body (``POST /embed``
``{"text": ...}`` -> ``{"embedding": [...]}``), so the benchmark drives it with the same Locust user.

Runs in its own venv (``.venv-peers/litserve``, ``make peers``), not the project's: it imports
nothing from this repository.

    .venv-peers/litserve/bin/python benchmarks/peers/litserve_server.py --model-dir REPO/minilm/1 --port 8100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import litserve as ls
import numpy as np


class EmbedAPI(ls.LitAPI):
    """Tokenize the batch LitServe formed (padded to its longest), one ONNX Runtime call, one
    embedding per request."""

    def __init__(self, model_dir: Path, max_length: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_dir, self.max_length = model_dir, max_length

    def setup(self, device) -> None:  # noqa: ARG002 - LitServe's signature; CPU only here
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.names = {i.name for i in self.session.get_inputs()}
        manifest = json.loads((self.model_dir / "manifest.json").read_text())
        tokenizer_dir = self.model_dir / manifest.get("preprocessing", {}).get("tokenizer", "tokenizer")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding()

    def decode_request(self, request: dict) -> str:
        text = request.get("text")
        if not isinstance(text, str) or not text:
            raise ValueError("text: give a non-empty string")
        return text

    def batch(self, inputs: list[str]) -> list[str]:
        return inputs

    def predict(self, texts: list[str]):
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        }
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.names})[0]

    def unbatch(self, output) -> list:
        return list(output)

    def encode_response(self, output) -> dict:
        return {"embedding": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a repository version folder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds (default 0.005)")
    args = parser.parse_args()
    api = EmbedAPI(
        args.model_dir.resolve(),
        args.max_length,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        api_path="/embed",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
