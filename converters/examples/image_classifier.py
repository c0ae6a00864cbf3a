"""The Lightning example: a small CNN classifying 3x32x32 images into 10 classes.

``python -m converters.examples.image_classifier --out PATH [--steps N]`` trains it for a few steps on
seeded synthetic data (each class is a fixed random colour pattern plus noise, so it does learn) and
saves a real Lightning ``.ckpt``, which ``python -m converters lightning`` then converts.

The module declares what a server needs to feed it: ``example_input_array`` (the input shape), and in
its hyperparameters the class ``labels`` and the normalisation (``mean``/``std`` per channel, applied to
pixels scaled by 1/255).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn

from core.errors import InvalidArgument

log = logging.getLogger(__name__)

LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class ImageClassifier(L.LightningModule):
    def __init__(
        self,
        channels: int = 3,
        height: int = 32,
        width: int = 32,
        labels: list[str] | tuple[str, ...] = LABELS,
        mean: list[float] | tuple[float, ...] = MEAN,
        std: list[float] | tuple[float, ...] = STD,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        # Plain lists, so the checkpoint's hyperparameters load under torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "channels": channels,
                "height": height,
                "width": width,
                "labels": list(labels),
                "mean": list(mean),
                "std": list(std),
                "lr": lr,
            }
        )
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(32 * 4 * 4, len(labels))
        self.example_input_array = torch.zeros(1, channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss = nn.functional.cross_entropy(self(images), targets)
        self.log("train_loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def synthetic_dataset(count: int, *, classes: int = len(LABELS), shape=(3, 32, 32), seed: int = 0):
    """Seeded images: class k is a fixed random pattern k plus Gaussian noise (already normalised)."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, *shape, generator=generator)
    targets = torch.randint(0, classes, (count,), generator=generator)
    images = patterns[targets] + 0.5 * torch.randn(count, *shape, generator=generator)
    return torch.utils.data.TensorDataset(images, targets)


def train(out: str | Path, *, steps: int = 30, batch_size: int = 32, seed: int = 0) -> Path:
    """Train briefly on synthetic data and save a real Lightning checkpoint at ``out``."""
    out = Path(out)
    if steps <= 0:
        raise InvalidArgument(f"--steps: must be a positive integer, got {steps}", field="steps")
    out.parent.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, verbose=False)
    model = ImageClassifier()
    loader = torch.utils.data.DataLoader(
        synthetic_dataset(steps * batch_size, seed=seed), batch_size=batch_size, shuffle=True
    )
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
    trainer.fit(model, loader)
    trainer.save_checkpoint(str(out))
    log.info("saved %s after %d steps", out, steps)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.examples.image_classifier",
        description="Train the example image classifier briefly on synthetic data and save a .ckpt.",
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write the checkpoint (.ckpt)")
    parser.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        train(args.out, steps=args.steps, seed=args.seed)
    except InvalidArgument as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
