"""Pack the TorchScript model, the handler and its preprocessing into a TorchServe .mar.

``python -m serving.archive [--model-file P] [--export-path DIR] [--version V] [--model-name N]``

The archive holds the model file, ``mnist_handler.py`` (TorchServe's entry point), the
``handler/`` package (so the handler's ``import handler.preprocessing`` works inside the
worker, whose working directory and import path is the unpacked archive) and
``model-config.yaml`` (batching, workers, timeouts). Without ``--version`` the version is
``1.<UTC modification time of the model file, YYYYMMDDHHMMSS>``: a retrained model gets a
newer version, re-archiving the same file keeps it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from config import get_settings
from model.files import written_whole

HANDLER_DIR = Path(__file__).resolve().parent.parent / "handler"
HANDLER_FILE = HANDLER_DIR / "mnist_handler.py"
MODEL_CONFIG = HANDLER_DIR / "model-config.yaml"


class ArchiveError(RuntimeError):
    """The archive cannot be built; the message says what to do."""


def default_version(model_file: Path) -> str:
    """``1.<YYYYMMDDHHMMSS>`` from the model file's modification time (UTC)."""
    modified = datetime.fromtimestamp(model_file.stat().st_mtime, tz=timezone.utc)
    return f"1.{modified:%Y%m%d%H%M%S}"


def build_archive(
    model_file: Path, export_path: Path, model_name: str, version: str | None = None
) -> Path:
    """Run torch-model-archiver (overwriting) and return the path of the .mar."""
    if not model_file.is_file():
        raise ArchiveError(f"no trained model at {model_file}: run `make train` first")
    if model_file.suffix != ".pt":
        raise ArchiveError(f"{model_file} must end in .pt for TorchServe to load it as TorchScript")
    export_path.mkdir(parents=True, exist_ok=True)
    target = export_path / f"{model_name}.mar"
    with tempfile.TemporaryDirectory(prefix="mnist-archive-") as workspace:
        extra_files = _stage_handler_package(Path(workspace) / "extra")
        built = Path(workspace) / "built"
        built.mkdir()
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", model_name,
            "--version", version or default_version(model_file),
            "--serialized-file", str(model_file),
            "--handler", str(HANDLER_FILE),
            "--extra-files", str(extra_files),
            "--config-file", str(MODEL_CONFIG),
            "--export-path", str(built),
        ]  # fmt: skip
        # The archiver stages files in $TMPDIR/<model name>: a private TMPDIR lets two builds run.
        environment = {**os.environ, "TMPDIR": workspace}
        result = subprocess.run(command, capture_output=True, text=True, env=environment)
        if result.returncode != 0:
            raise ArchiveError(f"torch-model-archiver failed:\n{result.stderr or result.stdout}")
        with written_whole(target) as partial:
            shutil.copyfile(built / target.name, partial)
    return target


def _stage_handler_package(staging: Path) -> Path:
    """A folder holding just ``handler/*.py`` (the archiver copies a folder's contents)."""
    package = staging / "handler"
    package.mkdir(parents=True)
    for source in HANDLER_DIR.glob("*.py"):
        shutil.copy2(source, package / source.name)
    return staging


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", type=Path, default=settings.torchscript_path)
    parser.add_argument("--export-path", type=Path, default=settings.model_store)
    parser.add_argument("--version", help="model version (default: 1.<model file mtime>)")
    parser.add_argument("--model-name", default=settings.model_name)
    args = parser.parse_args(argv)
    try:
        mar = build_archive(args.model_file, args.export_path, args.model_name, args.version)
    except ArchiveError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(mar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
