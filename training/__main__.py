"""``python -m training --mode train|test|both ...``: train, export and evaluate the MNIST CNN."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config import get_settings
from model.torchscript import ExportMismatchError
from training.calibration import DEFAULT_DRAWINGS, DEFAULT_HOLDOUT, calibrate
from training.data import TRAIN_COUNT, MnistDataError
from training.train import TrainConfig, choose_device, run_test, run_training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    settings = get_settings()
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the MNIST CNN, export it to TorchScript and evaluate it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=("train", "test", "both"),
        default="both",
        help="train and export; evaluate the saved model; or train then evaluate the export",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="passes over the data")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="training")
    parser.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help="peak (one-cycle)"
    )
    parser.add_argument(
        "--dropout", type=float, default=defaults.dropout, help="before the last layer"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="weights, dropout, order, augmentation"
    )
    parser.add_argument("--no-cuda", action="store_true", help="use the CPU even if CUDA works")
    parser.add_argument("--no-augment", action="store_true", help="train on unaltered images")
    parser.add_argument(
        "--train-subset", type=int, default=None, help="use only the first N training images"
    )
    parser.add_argument(
        "--test-samples", type=int, default=20, help="digits drawn in test_predictions.png"
    )
    parser.add_argument(
        "--calibration-holdout",
        type=int,
        default=DEFAULT_HOLDOUT,
        help="last N training images kept out of training to fit the temperature (0: none)",
    )
    parser.add_argument(
        "--calibration-drawings",
        type=int,
        default=DEFAULT_DRAWINGS,
        help="held-out and test digits redrawn like canvas drawings for calibration",
    )
    parser.add_argument(
        "--model-path", type=Path, default=settings.torchscript_path, help="TorchScript file"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=settings.data_dir, help="holds MNIST/raw/*-ubyte"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=settings.results_dir, help="history and plots"
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "test_samples", "train_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.calibration_holdout < TRAIN_COUNT:
        parser.error(f"--calibration-holdout must be in [0, {TRAIN_COUNT})")
    if args.calibration_drawings < 1:
        parser.error("--calibration-drawings must be at least 1")
    if args.learning_rate <= 0:
        parser.error("--learning-rate must be positive")
    if not 0 <= args.dropout < 1:
        parser.error("--dropout must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = choose_device(args.no_cuda)
    try:
        if args.mode in ("train", "both"):
            config = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                dropout=args.dropout,
                seed=args.seed,
                augment=not args.no_augment,
                # The held-out tail is what calibration fits on, so training never sees it.
                train_subset=min(
                    args.train_subset or TRAIN_COUNT, TRAIN_COUNT - args.calibration_holdout
                ),
            )
            run_training(
                config,
                args.data_dir,
                args.model_path,
                args.results_dir,
                device,
                args.test_samples,
                plot_evaluation=args.mode == "train",
                export=not args.calibration_holdout,
            )
            if args.calibration_holdout:
                calibrate(
                    args.model_path,
                    args.data_dir,
                    args.results_dir,
                    args.calibration_holdout,
                    min(args.calibration_drawings, args.calibration_holdout),
                )
        if args.mode in ("test", "both"):
            run_test(args.model_path, args.data_dir, args.results_dir, device, args.test_samples)
    except (MnistDataError, ExportMismatchError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
