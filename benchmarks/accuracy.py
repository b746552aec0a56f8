"""`python -m benchmarks.accuracy`: accuracy per drawing style, measured through TorchServe.

Archives a TorchScript model, serves it on a private TorchServe configured by the repository,
sends every MNIST test digit (as a PNG) and `--per-style` drawings of each style from
`training.drawings` over REST, and writes `results/accuracy.json` and `results/accuracy.md`.
The drawn digits are spread evenly over the test set (MNIST's first test digits are harder than
its last), and the same digits sent as plain MNIST PNGs are measured too, so what a style
costs is told apart from how hard its digits are.
`make accuracy` runs it on the trained model; `--model-path` compares another one, and
`--per-style 5000 --styles ...` measures the weak styles finely enough to judge a target
(docs/drawings.md).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.served import running
from config import get_settings
from serving.archive import build_archive
from serving.client import TorchServeClient
from training.drawings import STYLES, drawings, load_mnist_test

CALLERS = 8
MNIST_TEST_COUNT = 10_000


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def served_accuracy(client: TorchServeClient, samples: Sequence[tuple[bytes, int]]) -> float:
    """Share of `samples` whose served answer is the true label."""
    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        answers = list(pool.map(client.predict, [body for body, _ in samples]))
    correct = sum(
        answer["digit"] == label for answer, (_, label) in zip(answers, samples, strict=True)
    )
    return correct / len(samples)


def measure(
    model_path: Path,
    per_style: int,
    seed: int,
    data_dir: Path,
    styles: Sequence[str] = tuple(STYLES),
) -> dict[str, float]:
    """MNIST test accuracy and accuracy per style, all through one private TorchServe."""
    images, labels = load_mnist_test(data_dir)
    with tempfile.TemporaryDirectory(prefix="mnist-accuracy-") as workdir:
        mar = build_archive(model_path, Path(workdir) / "archive", "mnist", "accuracy")
        with running(mar, Path(workdir) / "torchserve") as instance:
            client = TorchServeClient(instance.settings)
            every = len(labels) // per_style
            plain = [(png(image), int(label)) for image, label in zip(images, labels, strict=True)]
            figures = {
                "mnist_test": served_accuracy(client, plain),
                "mnist_same_digits": served_accuracy(client, plain[: per_style * every : every]),
            }
            for style in styles:
                samples = drawings(style, per_style, data_dir=data_dir, seed=seed, every=every)
                figures[style] = served_accuracy(client, samples)
                print(f"  {style:26s} {100 * figures[style]:.2f} %", flush=True)
            client.close()
    return figures


def markdown(figures: dict[str, float], model_path: Path, per_style: int, seed: int) -> str:
    worst = min((value, name) for name, value in figures.items() if name in STYLES)
    lines = [
        "# Accuracy through TorchServe, per drawing style",
        "",
        f"Model `{model_path}`; the MNIST test digits as PNG (`mnist_test`), and {per_style} "
        "of them, spread evenly over the test set, as PNG (`mnist_same_digits`) and drawn in "
        f"each style of `training/drawings.py` (seed {seed}), sent over REST.",
        "",
        "| input | accuracy |",
        "|---|---|",
        *(f"| {name} | {100 * value:.2f} % |" for name, value in figures.items()),
        "",
        f"Lowest style: {worst[1]} at {100 * worst[0]:.2f} %.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, default=settings.torchscript_path)
    parser.add_argument("--per-style", type=int, default=1000, help="drawings per style")
    parser.add_argument("--seed", type=int, default=0, help="drawing randomness")
    parser.add_argument(
        "--styles", default=",".join(STYLES), help="comma-separated styles (default: all)"
    )
    parser.add_argument("--results-dir", type=Path, default=settings.results_dir)
    args = parser.parse_args(argv)
    styles = [name.strip() for name in args.styles.split(",") if name.strip()]
    if not styles:
        parser.error("--styles names no style")
    if unknown := sorted(set(styles) - set(STYLES)):
        parser.error(f"unknown styles {', '.join(unknown)}; known: {', '.join(STYLES)}")
    if not 1 <= args.per_style <= MNIST_TEST_COUNT:
        parser.error(f"--per-style must be from 1 to {MNIST_TEST_COUNT}")
    if not args.model_path.is_file():
        print(f"error: no model at {args.model_path}: run `make train` first")
        return 1
    figures = measure(args.model_path, args.per_style, args.seed, settings.data_dir, styles)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(args.model_path),
        "per_style": args.per_style,
        "seed": args.seed,
        "accuracy": figures,
    }
    (args.results_dir / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(figures, args.model_path, args.per_style, args.seed)
    (args.results_dir / "accuracy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
