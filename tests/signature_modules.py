"""LightningModules with the signatures users bring, each trained for a few steps on seeded synthetic
data by ``train`` and saved as a real ``.ckpt`` (the session fixture ``signature_ckpts``).

- ``TabularClassifier``: ``example_input_array`` a tensor [batch, 12] -> logits [batch, 3], with labels
  in its hyperparameters: a ``classification`` entry.
- ``TupleNet``: a tuple (positional ``dense`` FP32 [batch, 6], ``ids`` INT64 [batch, seq]) -> a tuple
  (``score`` [batch, 2], per-token ``states`` [batch, seq, 4]): declared with ``--input ids:int64:-1``,
  so ``seq`` is a dynamic axis besides the batch.
- ``DictNet``: a dict (keyword ``features`` FP16 [batch, 5], ``ids`` INT32 [batch, 7], ``mask`` BOOL
  [batch, 7]) -> a dict (``logits`` FP32, ``count`` INT32 [batch], ``kept`` BOOL [batch, 7], ``half``
  FP16 [batch, 3]).
- ``Undeclared``: no ``example_input_array`` at all: its inputs come from ``--input`` flags.
- ``Unused``: a parameter ``forward`` never reads, which the exported graph leaves out.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

TABULAR_LABELS = ("low", "mid", "high")


class TabularClassifier(L.LightningModule):
    def __init__(self, features: int = 12, labels: list[str] | tuple[str, ...] = TABULAR_LABELS) -> None:
        super().__init__()
        self.save_hyperparameters({"features": features, "labels": list(labels)})
        self.net = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, len(labels)))
        self.example_input_array = torch.randn(4, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    @staticmethod
    def data(count: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(count, 12, generator=generator)
        return torch.utils.data.TensorDataset(x, (x[:, :3]).argmax(dim=1))


class TupleNet(L.LightningModule):
    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.save_hyperparameters({"vocab": vocab})
        self.embed = nn.Embedding(vocab, 4)
        self.dense = nn.Linear(6, 4)
        self.head = nn.Linear(4, 2)
        # Token ids spanning the whole vocabulary: generated inputs take the example's range.
        ids = torch.linspace(0, vocab - 1, 18).long().reshape(2, 9)
        self.example_input_array = (torch.randn(2, 6), ids)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor):
        states = self.embed(ids) + self.dense(dense).unsqueeze(1)
        return self.head(states.mean(dim=1)), states

    def training_step(self, batch, batch_idx):
        dense, ids, y = batch
        return nn.functional.cross_entropy(self(dense, ids)[0], y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    @staticmethod
    def data(count: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        dense = torch.randn(count, 6, generator=generator)
        ids = torch.randint(0, 50, (count, 9), generator=generator)
        return torch.utils.data.TensorDataset(dense, ids, (dense[:, 0] > 0).long())


class DictNet(L.LightningModule):
    def __init__(self, vocab: int = 20) -> None:
        super().__init__()
        self.save_hyperparameters({"vocab": vocab})
        self.embed = nn.Embedding(vocab, 5)
        self.mix = nn.Linear(5, 3)
        self.example_input_array = {
            "features": torch.randn(2, 5).half(),
            "ids": torch.randint(0, vocab, (2, 7), dtype=torch.int32),
            "mask": torch.ones(2, 7, dtype=torch.bool),
        }

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, features: torch.Tensor) -> dict:
        tokens = self.embed(ids.long()) * mask.unsqueeze(-1).float()
        pooled = tokens.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        logits = self.mix(pooled + features.float())
        return {
            "logits": logits,
            "count": mask.sum(dim=1).int(),
            "kept": mask & (ids % 2 == 0),
            "half": logits.half(),
        }

    def training_step(self, batch, batch_idx):
        features, ids, mask, y = batch
        return nn.functional.cross_entropy(self(ids=ids, mask=mask, features=features)["logits"], y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    @staticmethod
    def data(count: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(count, 5, generator=generator).half()
        ids = torch.randint(0, 20, (count, 7), generator=generator, dtype=torch.int32)
        mask = torch.rand(count, 7, generator=generator) > 0.2
        return torch.utils.data.TensorDataset(features, ids, mask, (ids[:, 0] % 3).long())


class Undeclared(L.LightningModule):
    """No example_input_array: ``--input x:float32:4 --input scale:float32:`` declares it (``scale``
    is one number per row: a [batch] tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * scale.reshape(-1, 1)

    def training_step(self, batch, batch_idx):
        x, scale, y = batch
        return nn.functional.mse_loss(self(x, scale), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    @staticmethod
    def data(count: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(count, 4, generator=generator)
        return torch.utils.data.TensorDataset(x, torch.ones(count), x[:, :2] * 2)


class Unused(L.LightningModule):
    """``forward(x, unused)`` reads only ``x``: the exporter drops ``unused`` from the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.example_input_array = (torch.randn(2, 3), torch.randn(2, 5))

    def forward(self, x: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def training_step(self, batch, batch_idx):
        x, unused, y = batch
        return nn.functional.mse_loss(self(x, unused), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    @staticmethod
    def data(count: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(count, 3, generator=generator)
        return torch.utils.data.TensorDataset(x, torch.zeros(count, 5), x[:, :2])


MODULES = {cls.__name__: cls for cls in (TabularClassifier, TupleNet, DictNet, Undeclared, Unused)}


def train(cls, out: Path, *, steps: int = 5, batch_size: int = 16, seed: int = 0) -> Path:
    """``cls`` trained for ``steps`` on its seeded synthetic data, saved as a Lightning checkpoint."""
    L.seed_everything(seed, verbose=False)
    module = cls()
    loader = torch.utils.data.DataLoader(cls.data(steps * batch_size, seed), batch_size=batch_size)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out.parent),
    )
    trainer.fit(module, loader)
    trainer.save_checkpoint(str(out))
    return out
