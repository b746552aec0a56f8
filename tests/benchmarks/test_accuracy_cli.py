"""`python -m benchmarks.accuracy` refuses what it cannot measure before it starts a server,
and reads people's labelled drawings from digit folders or a CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import accuracy


@pytest.mark.parametrize(
    ("styles", "message"),
    [("thin_stroke,no_such_style", "unknown styles no_such_style"), (" , ", "names no style")],
)
def test_styles_it_does_not_know_are_refused(
    styles: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main(["--styles", styles, "--model-path", str(tmp_path / "none.pt")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_only_the_named_styles_are_drawn_and_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    asked = {}

    def measure(model_path, per_style, seed, data_dir, styles, labelled):
        asked.update(styles=list(styles), per_style=per_style)
        return {"mnist_test": 1.0, "mnist_same_digits": 1.0, **dict.fromkeys(styles, 0.5)}, {}

    monkeypatch.setattr(accuracy, "measure", measure)
    code = accuracy.main(
        ["--model-path", str(model), "--per-style", "10", "--styles", "slanted, thin_stroke",
         "--results-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    assert asked == {"styles": ["slanted", "thin_stroke"], "per_style": 10}
    assert "Lowest style: slanted" in (tmp_path / "accuracy.md").read_text()


@pytest.mark.parametrize("per_style", ["0", "6000", "10001"])
def test_a_number_per_style_that_cannot_spread_over_the_test_set_is_refused(
    per_style: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main(["--per-style", per_style])
    assert exit_info.value.code == 2
    assert "--per-style must divide 10,000" in capsys.readouterr().err


def test_an_images_folder_without_digit_folders_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "drawings" / "seven").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main(["--images", str(tmp_path / "drawings"), "--styles", ""])
    assert exit_info.value.code == 2
    assert "holds no labelled images" in capsys.readouterr().err


def test_images_are_labelled_by_their_digit_folder(tmp_path: Path) -> None:
    for name in ("3/a.png", "3/b.png", "7/c.png", "notes/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert accuracy.labelled_images(tmp_path) == [
        (tmp_path / "3/a.png", 3),
        (tmp_path / "3/b.png", 3),
        (tmp_path / "7/c.png", 7),
    ]


def test_images_are_labelled_by_a_csv_beside_them(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("image,label\nimg/4-001.png,4\nimg/9-001.png, 9\n")
    assert accuracy.labelled_images(tmp_path / "labels.csv") == [
        (tmp_path / "img/4-001.png", 4),
        (tmp_path / "img/9-001.png", 9),
    ]


def test_each_images_set_is_measured_and_reported_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    for name in ("tablet/1/a.png", "tablet/7/b.png", "web/3/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")

    def measure(model_path, per_style, seed, data_dir, styles, labelled):
        assert styles == []
        wrong = {"images/tablet": [{"image": "b.png", "label": 7, "digit": 2}], "images/web": []}
        return {"mnist_test": 1.0, "images/tablet": 0.5, "images/web": 1.0}, wrong

    monkeypatch.setattr(accuracy, "measure", measure)
    arguments = ["--model-path", str(model), "--styles", "", "--results-dir", str(tmp_path)]
    images = ["--images", str(tmp_path / "tablet"), str(tmp_path / "web")]
    assert accuracy.main(arguments + images) == 0
    report = json.loads((tmp_path / "accuracy.json").read_text())
    assert report["images"] == {
        "images/tablet": str(tmp_path / "tablet"),
        "images/web": str(tmp_path / "web"),
    }
    assert report["misread"]["images/tablet"][0]["digit"] == 2
    assert "| images/tablet | 50.00 % |" in (tmp_path / "accuracy.md").read_text()
