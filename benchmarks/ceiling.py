"""`python -m benchmarks.ceiling`: how much of each drawing style's loss is the network's.

Trains, with `make train`'s data, augmentation and schedule, a reference CNN about 14 times the
size of the served one, and then that reference and the served network with training digits
drawn in one style (default: the very thick pen) added to their training set. Each model reads
the same drawings per style in-process, through the handler's preprocessing and the upright
reading (`model.upright`), beside the trained model of `model_store/` ("served"). Where even
the large network trained on the style itself stays below a target, the drawing has lost what
the target asks for (docs/drawings.md). Three trainings long; writes `results/ceiling.json`
and `results/ceiling.md`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from config import get_settings
from handler.preprocessing import decode_image, normalise, to_mnist_pixels
from model.calibration import served_model
from model.net import MnistNet, count_parameters
from model.torchscript import load_torchscript
from training.calibration import DEFAULT_HOLDOUT, logits_of, redrawn
from training.data import TRAIN_COUNT, MnistSplit, load_mnist
from training.drawings import STYLES, drawings, spread_step
from training.train import TrainConfig, fit, seed_everything


class ReferenceNet(nn.Module):
    """The served design made wider (32 and 64 filters, 256 hidden units): about 317,000
    parameters against 21,840, as a reference for what a larger network reads."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=5),
            nn.Dropout2d(0.25),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(1024, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def drawn_pixels(
    style: str, count: int, seed: int, every: int, data_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """What the model sees for `count` MNIST test digits drawn in `style`, and their labels."""
    samples = drawings(style, count, data_dir=data_dir, seed=seed, every=every)
    pixels = np.stack([to_mnist_pixels(decode_image(body)) for body, _ in samples])
    return pixels, np.array([label for _, label in samples])


def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor], pixels: np.ndarray, labels: np.ndarray
) -> float:
    logits = logits_of(model, torch.stack([normalise(digit) for digit in pixels]))
    return float((logits.argmax(dim=1).numpy() == labels).mean())


def trained(
    build: Callable[[], nn.Module],
    train: MnistSplit,
    test: MnistSplit,
    config: TrainConfig,
    extra: MnistSplit | None = None,
) -> nn.Module:
    """The network `build` makes, trained with `make train`'s recipe and seed (its initial
    weights included), `extra` digits joining the training set, in the served form (each
    digit read as given and upright)."""
    if extra is not None:
        train = MnistSplit(
            images=torch.cat([train.images, extra.images]),
            labels=torch.cat([train.labels, extra.labels]),
        )
    generator = seed_everything(config.seed)
    net = build()
    fit(net, train, test, config, generator)
    return served_model(net.eval()).eval()


def measure(
    model_path: Path,
    styles: Sequence[str],
    per_style: int,
    seed: int,
    training_style: str,
    training_count: int,
    config: TrainConfig,
    data_dir: Path,
) -> dict:
    """Accuracy per style of the served model and the three trained here, on the same digits."""
    train, test = load_mnist(data_dir)
    # The training digits `make train` uses: all but the calibration's held-out tail.
    kept = min(config.train_subset or TRAIN_COUNT, TRAIN_COUNT - DEFAULT_HOLDOUT)
    train = MnistSplit(train.images[:kept], train.labels[:kept])
    every = spread_step(per_style)
    with ProcessPoolExecutor() as pool:
        jobs = [(style, per_style, seed, every, data_dir) for style in styles]
        drawn = dict(zip(styles, pool.map(drawn_pixels, *zip(*jobs, strict=True)), strict=True))
    extra = MnistSplit(
        images=torch.from_numpy(redrawn(train.images[:training_count], [training_style], seed + 1)),
        labels=train.labels[:training_count],
    )
    served_design = partial(MnistNet, dropout=config.dropout, conv_dropout=config.conv_dropout)
    models = {
        "served": load_torchscript(model_path),
        "reference": trained(ReferenceNet, train, test, config),
        f"reference + {training_style}": trained(ReferenceNet, train, test, config, extra),
        f"served design + {training_style}": trained(served_design, train, test, config, extra),
    }
    plain = (test.images.numpy()[::every][:per_style], test.labels.numpy()[::every][:per_style])
    figures = {}
    for name, model in models.items():
        row = {"mnist_same_digits": accuracy(model, *plain)}
        row.update({style: accuracy(model, *drawn[style]) for style in styles})
        figures[name] = row
        print(f"{name}: " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in row.items()), flush=True)
    return {
        "model": str(model_path),
        "per_style": per_style,
        "seed": seed,
        "training_style": training_style,
        "training_count": training_count,
        "parameters": {
            "served design": count_parameters(MnistNet()),
            "reference": count_parameters(ReferenceNet()),
        },
        "accuracy": figures,
    }


def markdown(report: dict) -> str:
    figures = report["accuracy"]
    names = list(figures)
    rows = list(next(iter(figures.values())))
    lines = [
        "# How much of each style's loss is the network's",
        "",
        f"{report['per_style']} MNIST test digits per style (drawing seed {report['seed']}), read "
        "in-process through the handler's preprocessing and the upright reading. Parameters: "
        f"served design {report['parameters']['served design']:,}, reference "
        f"{report['parameters']['reference']:,}. `+ {report['training_style']}`: trained with "
        f"{report['training_count']:,} training digits drawn that way added.",
        "",
        "| input | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        *(
            f"| {row} | " + " | ".join(f"{100 * figures[n][row]:.2f} %" for n in names) + " |"
            for row in rows
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, default=settings.torchscript_path)
    parser.add_argument("--per-style", type=int, default=2000, help="drawings per style")
    parser.add_argument("--seed", type=int, default=3, help="drawing randomness")
    parser.add_argument("--styles", default=",".join(STYLES), help="comma-separated styles")
    parser.add_argument("--training-style", default="very_thick_stroke", help="style trained on")
    parser.add_argument("--training-count", type=int, default=12000, help="digits drawn for it")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="as `make train`")
    parser.add_argument("--train-subset", type=int, help="first N training digits (quick runs)")
    parser.add_argument("--results-dir", type=Path, default=settings.results_dir)
    args = parser.parse_args(argv)
    styles = [name.strip() for name in args.styles.split(",") if name.strip()]
    if unknown := sorted({*styles, args.training_style} - set(STYLES)):
        parser.error(f"unknown styles {', '.join(unknown)}; known: {', '.join(STYLES)}")
    if not styles:
        parser.error("--styles names no style")
    try:
        spread_step(args.per_style)
    except ValueError as error:
        parser.error(f"--per-style {error}")
    if not 1 <= args.training_count <= TRAIN_COUNT - DEFAULT_HOLDOUT:
        parser.error(f"--training-count must be from 1 to {TRAIN_COUNT - DEFAULT_HOLDOUT}")
    if args.epochs < 1 or (args.train_subset is not None and args.train_subset < 1):
        parser.error("--epochs and --train-subset must be at least 1")
    if args.train_subset is not None and args.training_count > args.train_subset:
        parser.error("--training-count cannot exceed --train-subset")
    if not args.model_path.is_file():
        print(f"error: no model at {args.model_path}: run `make train` first")
        return 1
    config = TrainConfig(epochs=args.epochs, train_subset=args.train_subset, show_progress=False)
    report = measure(
        args.model_path,
        styles,
        args.per_style,
        args.seed,
        args.training_style,
        args.training_count,
        config,
        settings.data_dir,
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "ceiling.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.results_dir / "ceiling.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
