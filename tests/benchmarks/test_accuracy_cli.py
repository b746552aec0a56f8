"""`python -m benchmarks.accuracy` refuses what it cannot measure before it starts a server."""

from __future__ import annotations

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

    def measure(model_path, per_style, seed, data_dir, styles):
        asked.update(styles=list(styles), per_style=per_style)
        return {"mnist_test": 1.0, "mnist_same_digits": 1.0, **dict.fromkeys(styles, 0.5)}

    monkeypatch.setattr(accuracy, "measure", measure)
    code = accuracy.main(
        ["--model-path", str(model), "--per-style", "10", "--styles", "slanted, thin_stroke",
         "--results-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    assert asked == {"styles": ["slanted", "thin_stroke"], "per_style": 10}
    assert "Lowest style: slanted" in (tmp_path / "accuracy.md").read_text()
