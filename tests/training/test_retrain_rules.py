"""Retraining's rules: how much of MNIST it mixes in, and when it archives a candidate (not
worse on MNIST beyond chance than the current model nor than `make train`'s, and at least as
good on the holdout drawings)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from training.retrain import (
    MIN_MNIST_IMAGES,
    MissingModelError,
    current_model_file,
    decide,
    mnist_images_for,
    paired_change,
    parse_args,
)


def readings(lost: int, gained: int, both_right: int = 9_000) -> tuple[torch.Tensor, ...]:
    """Labels and two models' digits: `lost` read right by the current model only, `gained` by
    the candidate only, `both_right` by both, and 50 misread by both."""
    labels = torch.zeros(lost + gained + both_right + 50, dtype=torch.int64)
    current, candidate = labels.clone(), labels.clone()
    candidate[:lost] = 1
    current[lost : lost + gained] = 1
    current[-50:] = candidate[-50:] = 2
    return labels, current, candidate


def accuracy(mnist: float, holdout: float | None) -> dict:
    return {"mnist_test": {"accuracy": mnist}, "holdout": {"accuracy": holdout}}


def test_the_mnist_mixed_in_grows_with_the_drawings_within_what_mnist_has() -> None:
    assert mnist_images_for(480, 5, 60_000) == MIN_MNIST_IMAGES  # a few drawings: the floor
    assert mnist_images_for(2_500, 5, 60_000) == 25_000  # twice the drawings' 12,500 views
    assert mnist_images_for(20_000, 5, 60_000) == 60_000  # never more than MNIST has


def test_the_paired_change_counts_each_side_and_tests_the_losses() -> None:
    change = paired_change(*readings(lost=30, gained=10))
    assert (change["lost"], change["gained"]) == (30, 10)
    assert change["reference_accuracy"] == pytest.approx(9_030 / 9_090)
    assert change["candidate_accuracy"] == pytest.approx(9_010 / 9_090)
    assert change["p_value"] == pytest.approx(0.00111, rel=0.01)  # P(X >= 30), X ~ B(40, 1/2)
    assert paired_change(*readings(lost=0, gained=0))["p_value"] == 1.0


def test_a_few_digits_lost_on_mnist_are_chance_not_worse() -> None:
    mnist = {"current": paired_change(*readings(lost=16, gained=13))}
    accepted, reason = decide(accuracy(0.9943, 0.96), accuracy(0.9940, 0.99), mnist, force=False)
    assert accepted, reason
    assert reason.startswith("not worse on MNIST than the current model (99.27 % against 99.31 %")


def test_significantly_more_digits_lost_on_mnist_are_worse() -> None:
    mnist = {"current": paired_change(*readings(lost=41, gained=11))}
    accepted, reason = decide(accuracy(0.9943, 0.96), accuracy(0.9913, 0.99), mnist, force=False)
    assert not accepted
    assert reason.startswith("worse on MNIST's test set than the current model (99.00 % against")
    assert "41 digits read right by it only, 11 by the candidate only" in reason
    forced, why = decide(accuracy(0.9943, 0.96), accuracy(0.9913, 0.99), mnist, force=True)
    assert forced and why.endswith("archived because of --force")


def test_a_chain_of_small_losses_is_refused_against_make_trains_model() -> None:
    """Each step within chance of the one before, but together significantly worse than the
    model `make train` made."""
    mnist = {
        "current": paired_change(*readings(lost=16, gained=13)),
        "first": paired_change(*readings(lost=45, gained=15)),
    }
    accepted, reason = decide(accuracy(0.9940, 0.96), accuracy(0.9937, 0.99), mnist, force=False)
    assert not accepted
    assert reason.startswith("worse on MNIST's test set than `make train`'s model (")
    mnist["first"] = paired_change(*readings(lost=20, gained=15))
    accepted, reason = decide(accuracy(0.9940, 0.96), accuracy(0.9937, 0.99), mnist, force=False)
    assert accepted, reason
    assert "the current model (" in reason and " or `make train`'s model (" in reason


@pytest.mark.parametrize(
    ("holdout_now", "holdout_new", "accepted"), [(0.96, 0.95, False), (0.96, 0.96, True)]
)
def test_the_holdout_must_be_read_at_least_as_well(
    holdout_now: float, holdout_new: float, accepted: bool
) -> None:
    mnist = {"current": paired_change(*readings(lost=5, gained=5))}
    decided, reason = decide(
        accuracy(0.99, holdout_now), accuracy(0.99, holdout_new), mnist, force=False
    )
    assert decided is accepted, reason
    assert accepted or reason.startswith("worse on the holdout drawings (95.00 % < 96.00 %)")


def test_no_holdout_drawings_means_no_archive() -> None:
    mnist = {"current": paired_change(*readings(lost=0, gained=3))}
    decided, reason = decide(accuracy(0.99, None), accuracy(0.99, None), mnist, force=False)
    assert not decided and reason == "no holdout drawings to judge it on"


def a_store(tmp_path: Path, archived: dict[str, str]) -> Path:
    """Archives named file -> version (only their manifests) and make train's model file."""
    for name, version in archived.items():
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            manifest = {"model": {"modelVersion": version}}
            archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    model = tmp_path / "mnist_cnn.pt"
    model.write_bytes(b"make train's")
    (tmp_path / "mnist_cnn_state_dict.pth").write_bytes(b"make train's weights")
    return model


def test_retraining_starts_from_the_default_versions_own_weights(tmp_path: Path) -> None:
    model = a_store(tmp_path, {"mnist.mar": "1.0", "mnist-2.0.mar": "2.0"})
    assert current_model_file(model, "mnist", None) == model
    assert current_model_file(model, "mnist", "1.0") == model
    with pytest.raises(MissingModelError, match=r"^mnist_cnn-2\.0\.pt and .* 2\.0 is the default"):
        current_model_file(model, "mnist", "2.0")  # never make train's weights in their place
    (tmp_path / "mnist_cnn-2.0.pt").write_bytes(b"2.0's")
    with pytest.raises(MissingModelError, match=r"^mnist_cnn-2\.0_state_dict\.pth in "):
        current_model_file(model, "mnist", "2.0")
    (tmp_path / "mnist_cnn-2.0_state_dict.pth").write_bytes(b"2.0's weights")
    assert current_model_file(model, "mnist", "2.0") == tmp_path / "mnist_cnn-2.0.pt"


def test_make_trains_weights_missing_say_how_to_train_them_again(tmp_path: Path) -> None:
    model = a_store(tmp_path, {"mnist.mar": "1.0"})
    (tmp_path / "mnist_cnn_state_dict.pth").unlink()
    with pytest.raises(MissingModelError, match=r"^mnist_cnn_state_dict\.pth .* FORCE=1"):
        current_model_file(model, "mnist", "1.0")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--holdout-percent", "0", "must be in [1, 99]"),
        ("--holdout-percent", "100", "must be in [1, 99]"),
        ("--epochs", "0", "must be at least 1"),
        ("--repeats", "0", "must be at least 1"),
        ("--mnist-images", "-1", "must not be negative"),
    ],
)
def test_out_of_range_flags_are_refused(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args([flag, value])
    assert refused.value.code == 2
    assert f"{flag} {message}" in capsys.readouterr().err
