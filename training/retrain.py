"""`python -m training.retrain`: the next model version, trained on the drawings people labelled.

Reads the labelled drawings from the app's database (read-only), brings each to MNIST form with
the handler's own preprocessing, splits them by drawing into train and holdout, and
fine-tunes the current model on the train part with MNIST mixed in (so it does not forget
MNIST). The candidate and the current model are compared on the MNIST test set and on the
holdout drawings (results/retrain.json, results/retrain.md, results/retrain_confusion.png).
The candidate is archived as the next version of the model only when it is not worse on MNIST
(it does not misread significantly more of its test digits than the current model, nor than
`make train`'s) and at least as good on the holdout, or with --force. Its temperature is
refitted on the holdout drawings once there are enough of them (--min-calibration-drawings).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest
from sqlalchemy import MetaData, Table, create_engine, select

from config import PROJECT_ROOT, get_settings, normalise_database_url
from handler.preprocessing import InvalidInputError, decode_image, to_mnist_pixels
from model import versions
from model.calibration import served_model, temperature_of
from model.files import written_whole
from model.net import MnistNet
from model.torchscript import export_torchscript, load_torchscript, save_checkpoint, state_dict_path
from training import plots
from training.calibration import choose_temperature
from training.data import MnistSplit, load_mnist
from training.train import (
    TrainConfig,
    confusion_matrix,
    evaluate,
    fit,
    seed_everything,
    to_model_input,
)

RESULTS_JSON, RESULTS_MD, CONFUSION_PLOT = "retrain.json", "retrain.md", "retrain_confusion.png"
LOCK_FILE = ".retrain.lock"
# Below this many holdout drawings a temperature fitted on them strays too far from the one
# fitted on thousands (docs/retraining.md, "The temperature, from people's drawings").
MIN_CALIBRATION_DRAWINGS = 1000
# "Worse on MNIST" means misreading significantly more test digits than the current model (a
# one-sided exact test on the digits only one of them misreads): a loss of a few digits in
# 10,000 is chance, and refusing it refused candidates far better on people's drawings
# (docs/retraining.md, "When is a candidate worse on MNIST").
MNIST_SIGNIFICANCE = 0.05
# The models a candidate must not be worse on MNIST than. `make train`'s too: otherwise a chain
# of candidates, each losing a few digits to the one before, could drift (docs/retraining.md).
MNIST_REFERENCES = {"current": "the current model", "first": "`make train`'s model"}
# MNIST images mixed in per view of a train drawing (at least MIN_MNIST_IMAGES, at most all):
# with fewer, a candidate trained on thousands of drawings forgets MNIST measurably
# (docs/retraining.md, "When is a candidate worse on MNIST").
MNIST_PER_DRAWING_VIEW = 2
MIN_MNIST_IMAGES = 20_000


class RetrainRunningError(RuntimeError):
    """Another retrain holds the model store."""


class NotEnoughDrawingsError(RuntimeError):
    """Fewer labelled drawings than the threshold; the message says how many more."""


class MissingModelError(RuntimeError):
    """The store, or the default version's weights in it, are missing; the message says what
    to restore."""


@dataclass(frozen=True)
class Drawings:
    train: MnistSplit
    holdout: MnistSplit
    skipped: int


def read_labelled(database_url: str) -> list[tuple[str, bytes, int]]:
    """(drawing, image, true label) of every labelled drawing, read in a read-only transaction.

    A drawing is named by its key, which the app gives it and a dump and reload keeps; a row
    written before drawings had keys, by its id. The app upserts one row per drawing, so its
    label is the latest one given; a drawing deleted on the History page has no row."""
    engine = create_engine(normalise_database_url(database_url))
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            elif engine.dialect.name == "sqlite":
                connection.exec_driver_sql("PRAGMA query_only = ON")
            table = Table("predictions", MetaData(), autoload_with=connection)
            query = (
                select(table.c.id, table.c.drawing_key, table.c.image_data, table.c.true_label)
                .where(table.c.true_label.is_not(None))
                .order_by(table.c.id)
            )
            rows = [
                (key or str(row_id), bytes(image), int(label))
                for row_id, key, image, label in connection.execute(query)
            ]
            connection.rollback()
    finally:
        engine.dispose()
    return rows


def in_holdout(drawing: str, holdout_percent: int) -> bool:
    """The same drawing always lands on the same side, whatever else is in the database."""
    digest = hashlib.sha256(f"drawing-{drawing}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < holdout_percent


def prepare(rows: list[tuple[str, bytes, int]], holdout_percent: int) -> Drawings:
    """MNIST-form pixels for every readable drawing, split by drawing."""
    sides: dict[bool, tuple[list[np.ndarray], list[int]]] = {True: ([], []), False: ([], [])}
    skipped = 0
    for drawing, image, label in rows:
        try:
            pixels = to_mnist_pixels(decode_image(image))
        except InvalidInputError:
            skipped += 1
            continue
        images, labels = sides[in_holdout(drawing, holdout_percent)]
        images.append(pixels)
        labels.append(label)

    def split(holdout: bool) -> MnistSplit:
        images, labels = sides[holdout]
        stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
        return MnistSplit(torch.from_numpy(stacked), torch.tensor(labels, dtype=torch.int64))

    return Drawings(train=split(False), holdout=split(True), skipped=skipped)


def mnist_images_for(train_drawings: int, repeats: int, available: int) -> int:
    """How many MNIST training images to mix in when none is asked for."""
    wanted = MNIST_PER_DRAWING_VIEW * train_drawings * repeats
    return min(available, max(MIN_MNIST_IMAGES, wanted))


def training_mix(
    drawings: MnistSplit, mnist: MnistSplit, mnist_images: int, repeats: int, seed: int
) -> MnistSplit:
    """The train drawings, `repeats` times each, among a random sample of MNIST's training set."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(mnist.labels), generator=generator)[:mnist_images]
    return MnistSplit(
        images=torch.cat([mnist.images[chosen], drawings.images.repeat(repeats, 1, 1)]),
        labels=torch.cat([mnist.labels[chosen], drawings.labels.repeat(repeats)]),
    )


def read_digits(model: Any, split: MnistSplit) -> torch.Tensor:
    """The digit `model` reads for each image of `split`."""
    if not len(split.labels):
        return torch.zeros(0, dtype=torch.int64)
    return evaluate(model, split).predictions.long()


def scores(read: dict[str, torch.Tensor], splits: dict[str, MnistSplit]) -> dict[str, Any]:
    """Accuracy of the digits `read` on each split, overall and per digit."""
    found: dict[str, Any] = {}
    for name, split in splits.items():
        matrix = confusion_matrix(split.labels, read[name])
        per_digit = {
            str(digit): (
                float(matrix[digit, digit] / matrix[digit].sum()) if matrix[digit].sum() else None
            )
            for digit in range(10)
        }
        total = int(matrix.sum())
        found[name] = {
            "count": total,
            "accuracy": float(np.trace(matrix) / total) if total else None,
            "per_digit": per_digit,
            "confusion": matrix.tolist(),
        }
    return found


def compare(
    current: Any, candidate: Any, first: Any, splits: dict[str, MnistSplit]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """Both models' scores on each split, and how the candidate differs digit by digit on MNIST's
    test set from the current model and, when that is another, from `make train`'s model
    `first` (`paired_change`, keyed as `MNIST_REFERENCES`)."""
    read_now = {name: read_digits(current, split) for name, split in splits.items()}
    read_new = {name: read_digits(candidate, split) for name, split in splits.items()}
    mnist_test = splits["mnist_test"]
    references = {"current": read_now["mnist_test"]}
    if first is not current:
        references["first"] = read_digits(first, mnist_test)
    changes = {
        name: paired_change(mnist_test.labels, read, read_new["mnist_test"])
        for name, read in references.items()
    }
    return scores(read_now, splits), scores(read_new, splits), changes


def paired_change(
    labels: torch.Tensor, reference: torch.Tensor, candidate: torch.Tensor
) -> dict[str, Any]:
    """Both models' accuracy, the digits the candidate misreads that the reference model reads
    right (`lost`), the reverse (`gained`), and how likely so many losses are if neither model is
    the better (McNemar's exact test, one-sided)."""
    reference_right, candidate_right = reference == labels, candidate == labels
    lost = int((reference_right & ~candidate_right).sum())
    gained = int((~reference_right & candidate_right).sum())
    changed = lost + gained
    p_value = binomtest(lost, changed, alternative="greater").pvalue if changed else 1.0
    return {
        "reference_accuracy": float(reference_right.float().mean()),
        "candidate_accuracy": float(candidate_right.float().mean()),
        "lost": lost,
        "gained": gained,
        "p_value": float(p_value),
    }


def describe_change(change: dict[str, Any]) -> str:
    """A `paired_change` in words, for the decision's reason."""
    return (
        f"{100 * change['candidate_accuracy']:.2f} % against "
        f"{100 * change['reference_accuracy']:.2f} %; {change['lost']} digits read right by it "
        f"only, {change['gained']} by the candidate only, p = {change['p_value']:.2g}"
    )


def decide(
    current: dict[str, Any],
    candidate: dict[str, Any],
    mnist_changes: dict[str, dict[str, Any]],
    force: bool,
) -> tuple[bool, str]:
    """Archive only a candidate not worse on MNIST than any of the models in `mnist_changes`
    (`paired_change` on its test set, keyed as `MNIST_REFERENCES`) and at least as good on the
    holdout."""
    holdout_now, holdout_new = current["holdout"]["accuracy"], candidate["holdout"]["accuracy"]
    worse = [
        name for name, change in mnist_changes.items() if change["p_value"] < MNIST_SIGNIFICANCE
    ]
    if worse:
        change = describe_change(mnist_changes[worse[0]])
        reason = (
            f"worse on MNIST's test set than {MNIST_REFERENCES[worse[0]]} "
            f"({change} < {MNIST_SIGNIFICANCE})"
        )
    elif holdout_new is None:
        reason = "no holdout drawings to judge it on"
    elif holdout_new < holdout_now:
        reason = (
            f"worse on the holdout drawings ({100 * holdout_new:.2f} % < {100 * holdout_now:.2f} %)"
        )
    else:
        compared = " or ".join(
            f"{MNIST_REFERENCES[name]} ({describe_change(change)})"
            for name, change in mnist_changes.items()
        )
        return (
            True,
            f"not worse on MNIST than {compared}, and at least as good on the holdout drawings",
        )
    return force, f"{reason}; archived because of --force" if force else reason


def archive_candidate(model_file: Path, store: Path, model_name: str, version: str) -> Path:
    """`python -m serving.archive` for the candidate, saved as ``<name>-<version>.mar``.

    Through the command line: training and serving are separate layers (docs/development.md)."""
    with tempfile.TemporaryDirectory(prefix="mnist-retrain-") as workspace:
        command = [
            sys.executable, "-m", "serving.archive", "--model-file", str(model_file),
            "--export-path", workspace, "--version", version, "--model-name", model_name,
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=PROJECT_ROOT, capture_output=True, text=True)
        target = store / versions.archive_name(model_name, version)
        with written_whole(target) as partial:  # /tmp may be another disk: no rename from it
            shutil.copyfile(Path(workspace, f"{model_name}.mar"), partial)
    return target


def temperature_line(chosen: dict[str, Any]) -> str:
    """What became of the temperature (`TemperatureChoice` as a dict), for the report and the
    terminal alike."""
    how = "refitted" if chosen["refitted"] else "kept"
    return f"Temperature {chosen['temperature']:.3f} {how}: {chosen['reason']}."


def write_report(report: dict[str, Any], results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / RESULTS_JSON).write_text(json.dumps(report, indent=2) + "\n")
    current, candidate = report["current"], report["candidate"]

    def row(title: str, pick: Any) -> str:
        shown = [
            "–" if (v := pick(m)) is None else f"{100 * v:.2f} %" for m in (current, candidate)
        ]
        return f"| {title} | {shown[0]} | {shown[1]} |"

    counts = report["drawings"]
    lines = [
        "# Retraining from the labelled drawings",
        "",
        f"{counts['train']} drawings to train on, {counts['holdout']} held out (by drawing, "
        f"{counts['holdout_percent']} %), "
        f"{counts['skipped']} unreadable; {report['mix']['mnist_images']} MNIST training images "
        "mixed in.",
        "",
        f"**{report['decision']}**: {report['reason']}.",
        "",
        temperature_line(report["temperature"]),
        "",
        f"| | current ({report['current_version']}) | candidate ({report['candidate_version']}) |",
        "|---|---|---|",
        row("MNIST test", lambda m: m["mnist_test"]["accuracy"]),
        row("holdout drawings", lambda m: m["holdout"]["accuracy"]),
        *(
            row(f"holdout digit {d}", lambda m, d=d: m["holdout"]["per_digit"][str(d)])
            for d in range(10)
        ),
        "",
        f"![Confusion matrices on the holdout drawings]({CONFUSION_PLOT})",
        "",
    ]
    (results_dir / RESULTS_MD).write_text("\n".join(lines))
    plots.plot_confusion_pair(
        np.array(current["holdout"]["confusion"]),
        np.array(candidate["holdout"]["confusion"]),
        ("current", "candidate"),
        results_dir / CONFUSION_PLOT,
    )


def current_model_file(model_path: Path, model_name: str, default_version: str | None) -> Path:
    """The TorchScript file of the default version: a promoted retrained version's own
    (``mnist_cnn-<version>.pt``, written beside the store's model), else `model_path`, the one
    `make archive` packed as ``<name>.mar``. Never another version's weights in its place."""
    base = model_path.parent / f"{model_name}.mar"
    if default_version is None or (
        base.is_file() and versions.archive_version(base) == default_version
    ):
        _require_weights(
            model_path, "are missing: `make train-and-archive FORCE=1` trains them again"
        )
        return model_path
    promoted = model_path.with_name(f"{model_path.stem}-{default_version}.pt")
    _require_weights(
        promoted,
        f"are missing, and {model_name} {default_version} is the default: restore them beside "
        "its archive, or promote a version whose weights are there",
    )
    return promoted


def _require_weights(model_file: Path, why_missing: str) -> None:
    """Retraining starts from the TorchScript file's checkpoint and is compared with the file."""
    missing = [
        path.name for path in (model_file, state_dict_path(model_file)) if not path.is_file()
    ]
    if missing:
        raise MissingModelError(
            f"{' and '.join(missing)} in {model_file.parent} (retraining starts from them) "
            + why_missing
        )


@contextmanager
def only_retrain(store: Path) -> Iterator[None]:
    """One retrain at a time per model store: two at once would choose the same next version,
    and the second archive would replace the first."""
    if not store.is_dir():
        raise MissingModelError(
            f"There is no model store at {store}: run `make train-and-archive`, or give the "
            "model's path with --model-path"
        )
    with open(store / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainRunningError(
                f"Another retrain is writing to {store}; run this one once it has finished."
            ) from None
        yield


def retrain(args: argparse.Namespace) -> dict[str, Any]:
    settings = get_settings()
    rows = read_labelled(args.database_url or settings.database_url)
    if len(rows) < args.min_drawings:
        raise NotEnoughDrawingsError(
            f"{len(rows)} labelled drawings in the database; retraining needs {args.min_drawings} "
            f"({args.min_drawings - len(rows)} more). Label drawings on the Draw page."
        )
    drawings = prepare(rows, args.holdout_percent)
    generator = seed_everything(args.seed)
    mnist_train, mnist_test = load_mnist(args.data_dir or settings.data_dir)
    store = args.model_path.parent
    current_version = versions.default_version(store, settings.model_name)
    current_file = current_model_file(args.model_path, settings.model_name, current_version)
    if not args.model_path.is_file():
        raise MissingModelError(
            f"`make train`'s model {args.model_path} is missing; candidates are compared with it "
            "on MNIST: run `make train-and-archive FORCE=1` to train it again"
        )
    current = load_torchscript(current_file)
    config = TrainConfig(epochs=args.epochs, learning_rate=args.learning_rate, seed=args.seed)
    net = MnistNet(dropout=config.dropout, conv_dropout=config.conv_dropout)  # as `make train`
    if not args.from_scratch:
        net.load_state_dict(torch.load(state_dict_path(current_file), map_location="cpu"))
    mnist_images = args.mnist_images
    if mnist_images is None:
        mnist_images = mnist_images_for(
            len(drawings.train.labels), args.repeats, len(mnist_train.labels)
        )
    mix = training_mix(drawings.train, mnist_train, mnist_images, args.repeats, args.seed)
    fit(net, mix, mnist_test, config, generator)
    temperature = choose_temperature(
        served_model(net.eval()),
        to_model_input(drawings.holdout.images),
        drawings.holdout.labels,
        kept=temperature_of(current),
        minimum=args.min_calibration_drawings,
    )
    candidate = served_model(net.eval(), temperature.temperature).eval()

    stamp = f"{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    version = versions.next_version(store, settings.model_name, stamp)
    splits = {"mnist_test": mnist_test, "holdout": drawings.holdout}
    first = current if current_file == args.model_path else load_torchscript(args.model_path)
    current_scores, candidate_scores, mnist = compare(current, candidate, first, splits)
    accepted, reason = decide(current_scores, candidate_scores, mnist, args.force)
    report: dict[str, Any] = {
        "current_version": current_version,
        "current_model": str(current_file),
        "candidate_version": version,
        "drawings": {
            "holdout_percent": args.holdout_percent,
            "train": len(drawings.train.labels),
            "holdout": len(drawings.holdout.labels),
            "skipped": drawings.skipped,
        },
        "mix": {"mnist_images": mnist_images, "repeats": args.repeats, "epochs": args.epochs},
        "current": current_scores,
        "candidate": candidate_scores,
        "mnist_change": mnist,
        "decision": "archived" if accepted else "refused",
        "reason": reason,
        "temperature": asdict(temperature),
    }
    if accepted:
        model_file = store / f"{args.model_path.stem}-{version}.pt"
        save_checkpoint(net, model_file)
        export_torchscript(candidate, model_file, to_model_input(mnist_test.images[:64]))
        report["archive"] = str(archive_candidate(model_file, store, settings.model_name, version))
    write_report(report, args.results_dir or settings.results_dir)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--database-url", help="default: the app's database (config/settings.py)")
    parser.add_argument(
        "--model-path",
        type=Path,
        default=settings.torchscript_path,
        help="`make train`'s model; a promoted version's own file beside it is used instead",
    )
    parser.add_argument("--min-drawings", type=int, default=100, help="labelled drawings needed")
    parser.add_argument(
        "--holdout-percent", type=int, default=20, help="share held out, by drawing"
    )
    parser.add_argument(
        "--from-scratch", action="store_true", help="new weights, not the current ones"
    )
    parser.add_argument("--epochs", type=int, default=3, help="passes over the mix")
    parser.add_argument("--learning-rate", type=float, default=0.001, help="peak (one-cycle)")
    parser.add_argument(
        "--mnist-images",
        type=int,
        help="MNIST training images mixed in; when not given, twice the train drawings' views, "
        f"at least {MIN_MNIST_IMAGES:,}, at most all",
    )
    parser.add_argument("--repeats", type=int, default=5, help="times each train drawing appears")
    parser.add_argument(
        "--min-calibration-drawings",
        type=int,
        default=MIN_CALIBRATION_DRAWINGS,
        help="holdout drawings needed to refit the temperature on them",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="archive even a worse candidate")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    for name in ("min_drawings", "epochs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("mnist_images", "min_calibration_drawings"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if not 1 <= args.holdout_percent <= 99:
        parser.error("--holdout-percent must be in [1, 99]")
    if args.learning_rate <= 0:
        parser.error("--learning-rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with only_retrain(args.model_path.parent):
            report = retrain(args)
    except NotEnoughDrawingsError as error:
        print(error)
        return 0
    except (MissingModelError, RetrainRunningError, versions.VersionError) as error:
        print(error, file=sys.stderr)
        return 1
    current, candidate = report["current"], report["candidate"]
    for name in ("mnist_test", "holdout"):
        now, new = current[name]["accuracy"], candidate[name]["accuracy"]
        shown = [("–" if v is None else f"{100 * v:.2f} %") for v in (now, new)]
        print(f"{name}: current {shown[0]}, candidate {shown[1]} ({current[name]['count']} images)")
    print(temperature_line(report["temperature"]))
    print(f"Candidate {report['candidate_version']} {report['decision']}: {report['reason']}.")
    if "archive" in report:
        print(f"Archived {report['archive']}; serve it with `make stop serve`, then "
              f"`python -m serving.models promote {report['candidate_version']}`.")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
