"""`python -m benchmarks.real_drawings` reads pen trajectories and pixel lists, draws strokes as
the app's canvas does and writes folders that `benchmarks.accuracy --images` reads back."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from benchmarks import accuracy, real_drawings
from client_ui.canvas import DrawingCanvas
from client_ui.draw import DEFAULT_STROKE_WIDTH

UNIPEN = """.VERSION 1.0
.SEGMENT DIGIT 0 ? "1"
.PEN_DOWN
 100 400
 100 100
.PEN_UP
.DT 100
.SEGMENT DIGIT 1 ? "7"
.PEN_DOWN
 0 300
 200 300
 100 0
.PEN_UP
.PEN_DOWN
 50 150
 150 150
.PEN_UP
"""


def one_hot(symbol: int) -> str:
    return " ".join("1.0" if index == symbol else "0.0" for index in range(62))


def test_unipen_segments_keep_their_strokes_and_turn_y_over(tmp_path: Path) -> None:
    (tmp_path / "digits.txt").write_text(UNIPEN)
    digits = list(real_drawings.unipen_digits(tmp_path / "digits.txt"))
    assert [label for _, label in digits] == [1, 7]
    assert digits[0][0] == [[(100.0, -400.0), (100.0, -100.0)]]
    assert [len(stroke) for stroke in digits[1][0]] == [3, 2]


def test_digilets_splits_strokes_where_the_pen_leaves_and_skips_letters(tmp_path: Path) -> None:
    points = [
        (0.1, 0.9, 0.5, 1, 0.0), (0.1, 0.1, 0.5, 0, 0.1),  # a stroke
        (0.3, 0.5, 0.0, 0, 0.2),  # the pen in the air
        (0.0, 0.5, 0.4, 1, 0.3), (0.2, 0.5, 0.4, 0, 0.4),  # another stroke
    ]  # fmt: skip
    line = " ".join(" ".join(str(value) for value in point) for point in points)
    (tmp_path / "writer").write_text(f"{line}\n{one_hot(4)}\n{line}\n{one_hot(12)}\n")
    digits = list(real_drawings.digilets_digits(tmp_path / "writer"))
    assert [label for _, label in digits] == [4]
    assert digits[0][0] == [[(0.1, -0.9), (0.1, -0.1)], [(0.0, -0.5), (0.2, -0.5)]]


def test_the_pen_and_the_canvas_are_the_apps() -> None:
    # benchmarks/ may not import client_ui/, so the values are repeated there and checked here.
    assert real_drawings.PEN_WIDTH == DEFAULT_STROKE_WIDTH
    app_canvas = inspect.signature(DrawingCanvas).parameters["size"].default
    assert app_canvas == real_drawings.CANVAS


def test_a_stroke_is_drawn_with_the_apps_pen_on_a_transparent_canvas() -> None:
    drawing = real_drawings.canvas_drawing([[(0.0, 0.0), (0.0, -10.0)]])
    assert drawing.size == (280, 280) and drawing.mode == "RGBA"
    colour, alpha = np.asarray(drawing)[..., :3], np.asarray(drawing)[..., 3]
    assert not colour.any()  # black ink
    inked_rows = np.flatnonzero(alpha.max(axis=1) > 127)
    assert abs(len(inked_rows) - (200 + 24)) <= 2  # the digit's size plus the round ends
    assert abs(int((alpha[140] > 127).sum()) - 24) <= 1  # the pen's width
    sent = real_drawings.sent_at_28(drawing)
    assert sent.size == (28, 28) and np.asarray(sent).min() < 64 < np.asarray(sent).max()


def test_written_folders_are_read_back_with_their_labels(tmp_path: Path) -> None:
    pixels = [{"image": [255] * 784, "label": 3}, {"image": [0] * 784, "label": 8}]
    (tmp_path / "digits.json").write_text(json.dumps(pixels))
    (tmp_path / "digits.txt").write_text(UNIPEN)
    for arguments in (
        ["pixels", str(tmp_path / "digits.json"), "--out", str(tmp_path / "a")],
        ["unipen", str(tmp_path / "digits.txt"), "--out", str(tmp_path / "b"), "--sent-28"],
    ):
        assert real_drawings.main(arguments) == 0
    assert [label for _, label in accuracy.labelled_images(tmp_path / "a")] == [3, 8]
    assert [label for _, label in accuracy.labelled_images(tmp_path / "b")] == [1, 7]
