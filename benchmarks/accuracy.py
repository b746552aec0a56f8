"""`python -m benchmarks.accuracy`: accuracy per drawing style, measured through TorchServe.

Archives a TorchScript model, serves it on a private TorchServe configured by the repository,
sends every MNIST test digit (as a PNG) and `--per-style` drawings of each style from
`training.drawings` over REST, and writes `results/accuracy.json` and `results/accuracy.md`.
The drawn digits are spread evenly over the test set (MNIST's first test digits are harder than
its last), and the same digits sent as plain MNIST PNGs are measured too, so what a style
costs is told apart from how hard its digits are.
`make accuracy` runs it on the trained model; `--model-path` compares another one,
`--per-style 5000 --styles ...` measures the weak styles finely enough to judge a target, and
`--images PATH...` measures digits people drew, labelled by folder or CSV (docs/drawings.md).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

from benchmarks.served import running
from config import get_settings
from serving.archive import build_archive
from serving.client import TorchServeClient
from training.drawings import STYLES, drawings, load_mnist_test, spread_step

CALLERS = 8
DIGITS = {str(digit) for digit in range(10)}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def served_digits(client: TorchServeClient, bodies: Sequence[bytes]) -> list[int]:
    """The served answer to each encoded image, in order."""
    pool = ThreadPoolExecutor(max_workers=CALLERS)
    try:
        return [answer["digit"] for answer in pool.map(client.predict, bodies)]
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, the requests not yet sent are not sent


def served_accuracy(client: TorchServeClient, samples: Sequence[tuple[bytes, int]]) -> float:
    """Share of `samples` whose served answer is the true label."""
    digits = served_digits(client, [body for body, _ in samples])
    correct = sum(digit == label for digit, (_, label) in zip(digits, samples, strict=True))
    return correct / len(samples)


def labelled_images(source: Path) -> list[tuple[Path, int]]:
    """Image files and their digits: a folder with one subfolder per digit (`0/` to `9/`), or a
    CSV whose rows give an image's path, relative to the CSV, then its digit (a header row,
    whose label is not a digit, is skipped)."""
    if source.is_dir():
        found = [
            (path, int(folder.name))
            for folder in sorted(source.iterdir())
            if folder.is_dir() and folder.name in DIGITS
            for path in sorted(folder.iterdir())
            if path.is_file()
        ]
    else:
        with source.open(newline="") as rows:
            found = [
                (source.parent / row[0].strip(), int(row[1]))
                for row in csv.reader(rows)
                if len(row) >= 2 and row[1].strip() in DIGITS
            ]
    if not found:
        raise ValueError(f"{source} holds no labelled images (digit folders or a CSV)")
    return found


def misread(
    client: TorchServeClient, images: Sequence[tuple[Path, int]]
) -> list[dict[str, str | int]]:
    """Each image the served model reads as another digit: its path, label and the answer."""
    digits = served_digits(client, [path.read_bytes() for path, _ in images])
    return [
        {"image": str(path), "label": label, "digit": digit}
        for digit, (path, label) in zip(digits, images, strict=True)
        if digit != label
    ]


def measure(
    model_path: Path,
    per_style: int,
    seed: int,
    data_dir: Path,
    styles: Sequence[str] = tuple(STYLES),
    labelled: Mapping[str, Sequence[tuple[Path, int]]] = MappingProxyType({}),
) -> tuple[dict[str, float], dict[str, list[dict[str, str | int]]]]:
    """MNIST test accuracy, accuracy per style and on each set of `labelled` image files, all
    through one private TorchServe; and the files of each set it misread."""
    images, labels = load_mnist_test(data_dir)
    with tempfile.TemporaryDirectory(prefix="mnist-accuracy-") as workdir:
        mar = build_archive(model_path, Path(workdir) / "archive", "mnist", "accuracy")
        with running(mar, Path(workdir) / "torchserve") as instance:
            client = TorchServeClient(instance.settings)
            every = spread_step(per_style)
            plain = [(png(image), int(label)) for image, label in zip(images, labels, strict=True)]
            figures = {
                "mnist_test": served_accuracy(client, plain),
                "mnist_same_digits": served_accuracy(client, plain[: per_style * every : every]),
            }
            for style in styles:
                samples = drawings(style, per_style, data_dir=data_dir, seed=seed, every=every)
                figures[style] = served_accuracy(client, samples)
                print(f"  {style:26s} {100 * figures[style]:.2f} %", flush=True)
            wrong = {name: misread(client, images) for name, images in labelled.items()}
            for name, images in labelled.items():
                figures[name] = 1 - len(wrong[name]) / len(images)
                print(f"  {name:26s} {100 * figures[name]:.2f} %", flush=True)
            client.close()
    return figures, wrong


def markdown(
    figures: dict[str, float],
    model_path: Path,
    per_style: int,
    seed: int,
    labelled: Mapping[str, Sequence[tuple[Path, int]]] = MappingProxyType({}),
) -> str:
    lines = [
        "# Accuracy through TorchServe, per drawing style",
        "",
        f"Model `{model_path}`; the MNIST test digits as PNG (`mnist_test`), and {per_style} "
        "of them, spread evenly over the test set, as PNG (`mnist_same_digits`) and drawn in "
        f"each style of `training/drawings.py` (seed {seed}), sent over REST.",
    ]
    if labelled:
        lines += [
            "",
            "Drawings people made, labelled: "
            + ", ".join(f"`{name}` ({len(images)})" for name, images in labelled.items())
            + ".",
        ]
    lines += [
        "",
        "| input | accuracy |",
        "|---|---|",
        *(f"| {name} | {100 * value:.2f} % |" for name, value in figures.items()),
    ]
    if drawn := [(value, name) for name, value in figures.items() if name in STYLES]:
        value, name = min(drawn)
        lines += ["", f"Lowest style: {name} at {100 * value:.2f} %."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, default=settings.torchscript_path)
    parser.add_argument("--per-style", type=int, default=1000, help="drawings per style")
    parser.add_argument("--seed", type=int, default=0, help="drawing randomness")
    parser.add_argument(
        "--styles",
        default=",".join(STYLES),
        help="comma-separated styles (default: all; may be empty with --images)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        default=[],
        help="labelled drawings to read too: folders of digit folders 0/ to 9/, or CSVs of "
        "image path and digit",
    )
    parser.add_argument("--results-dir", type=Path, default=settings.results_dir)
    args = parser.parse_args(argv)
    styles = [name.strip() for name in args.styles.split(",") if name.strip()]
    if not styles and not args.images:
        parser.error("--styles names no style")
    if unknown := sorted(set(styles) - set(STYLES)):
        parser.error(f"unknown styles {', '.join(unknown)}; known: {', '.join(STYLES)}")
    try:
        spread_step(args.per_style)
    except ValueError as error:
        parser.error(f"--per-style {error}")
    try:
        labelled = {f"images/{path.stem}": labelled_images(path) for path in args.images}
    except (OSError, ValueError) as error:
        parser.error(f"--images: {error}")
    if len(labelled) < len(args.images):
        parser.error("--images: two sets have the same name")
    if not args.model_path.is_file():
        print(f"error: no model at {args.model_path}: run `make train` first")
        return 1
    figures, wrong = measure(
        args.model_path, args.per_style, args.seed, settings.data_dir, styles, labelled
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(args.model_path),
        "per_style": args.per_style,
        "seed": args.seed,
        "accuracy": figures,
        "images": {name: str(path) for name, path in zip(labelled, args.images, strict=True)},
        "misread": wrong,
    }
    (args.results_dir / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(figures, args.model_path, args.per_style, args.seed, labelled)
    (args.results_dir / "accuracy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
