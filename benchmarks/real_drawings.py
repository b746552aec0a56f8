"""`python -m benchmarks.real_drawings`: digits that people drew, from public data sets, written
as labelled image folders for `python -m benchmarks.accuracy --images`.

Pen trajectories recorded on tablets (UNIPEN files such as UCI's pendigits-orig, or the raw
files of DigiLeTs) are drawn as the app's canvas draws a stroke: black ink on a transparent
280x280 canvas, a round pen 24 px wide, anti-aliased, the digit's longer side 200 px.
`--sent-28` shrinks each canvas to 28x28 on white, as a client that resizes before sending
does. JSON lists of 28x28 grey levels (ink dark on light) are written as they are. The data
sets are measured, never trained on (docs/drawings.md, "Digits people drew").
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

Stroke = list[tuple[float, float]]

CANVAS = 280
# The app's default pen (client_ui/draw.py) and a digit drawn over most of its canvas.
PEN_WIDTH = 24
DIGIT_SIZE = 200
SUPERSAMPLING = 4
SENT_SIZE = 28
DIGITS_CLASSES = 10


def unipen_digits(path: Path) -> Iterator[tuple[list[Stroke], int]]:
    """Each segment of a UNIPEN file whose pen-down strokes follow it, with its digit label
    (`.SEGMENT DIGIT 0 ? "8"`); y points up on a tablet, so it is turned over."""
    label, strokes, stroke = None, [], None
    for line in [*path.read_text(errors="replace").splitlines(), ".SEGMENT END"]:
        words = line.split()
        if not words:
            continue
        if words[0] == ".SEGMENT":
            if label is not None and (drawn := [stroke for stroke in strokes if stroke]):
                yield drawn, label
            text = line.rsplit('"', 2)
            label = int(text[1]) if len(text) == 3 and text[1].isdigit() else None
            strokes, stroke = [], None
        elif words[0] == ".PEN_DOWN":
            stroke = []
            strokes.append(stroke)
        elif words[0].startswith("."):
            stroke = None
        elif stroke is not None:
            stroke.append((float(words[0]), -float(words[1])))


def digilets_digits(path: Path) -> Iterator[tuple[list[Stroke], int]]:
    """The digits of one DigiLeTs raw file: a line of points (x, y, pressure, pen put down,
    time) then a one-hot line over 62 symbols, of which the first 10 are the digits. A point
    without pressure that does not put the pen down is the pen in the air."""
    lines = path.read_text().splitlines()
    for points, symbol in zip(lines[0::2], lines[1::2], strict=True):
        label = int(np.argmax([float(value) for value in symbol.split()]))
        if label >= DIGITS_CLASSES:
            continue
        strokes, stroke = [], None
        for x, y, pressure, pen_down, _ in np.array(points.split(), float).reshape(-1, 5):
            if pen_down:
                stroke = []
                strokes.append(stroke)
            elif pressure == 0:
                stroke = None
                continue
            elif stroke is None:
                stroke = []
                strokes.append(stroke)
            stroke.append((x, -y))
        if strokes := [stroke for stroke in strokes if stroke]:
            yield strokes, label


def pixel_list_digits(path: Path) -> Iterator[tuple[Image.Image, int]]:
    """A JSON list of `{"image": [784 grey levels], "label": digit}`."""
    for item in json.loads(path.read_text()):
        pixels = np.asarray(item["image"], dtype=np.uint8).reshape(SENT_SIZE, SENT_SIZE)
        yield Image.fromarray(pixels), int(item["label"])


def canvas_drawing(strokes: Sequence[Stroke]) -> Image.Image:
    """The strokes as the app's canvas draws them: scaled to DIGIT_SIZE, centred, a round pen
    PEN_WIDTH wide in black on transparent pixels."""
    points = np.concatenate([np.asarray(stroke) for stroke in strokes])
    low, high = points.min(axis=0), points.max(axis=0)
    scale = SUPERSAMPLING * DIGIT_SIZE / max(float((high - low).max()), 1e-9)
    offset = (SUPERSAMPLING * CANVAS - (high - low) * scale) / 2
    radius = SUPERSAMPLING * PEN_WIDTH / 2
    coverage = Image.new("L", (SUPERSAMPLING * CANVAS,) * 2)
    pen = ImageDraw.Draw(coverage)
    for stroke in strokes:
        path = [tuple(point) for point in (np.asarray(stroke) - low) * scale + offset]
        if len(path) > 1:
            pen.line(path, fill=255, width=round(2 * radius), joint="curve")
        for x, y in path:
            pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    drawing = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    drawing.putalpha(coverage.reduce(SUPERSAMPLING))
    return drawing


def sent_at_28(drawing: Image.Image) -> Image.Image:
    """The canvas on white, shrunk to 28x28 by a client before sending."""
    white = Image.new("RGBA", drawing.size, (255, 255, 255, 255))
    white.alpha_composite(drawing)
    return white.convert("L").resize((SENT_SIZE, SENT_SIZE), Image.Resampling.BILINEAR)


def write_folders(digits: Iterator[tuple[Image.Image, int]], out: Path) -> list[int]:
    """PNGs under `out/<digit>/`, numbered in reading order; the count per digit."""
    counts = [0] * DIGITS_CLASSES
    for image, label in digits:
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{sum(counts):06d}.png")
        counts[label] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("format", choices=("unipen", "digilets", "pixels"))
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder of digit folders")
    parser.add_argument("--sent-28", action="store_true", help="shrink each canvas to 28x28")
    args = parser.parse_args(argv)
    if args.format == "pixels":
        digits = (digit for path in args.files for digit in pixel_list_digits(path))
    else:
        read = unipen_digits if args.format == "unipen" else digilets_digits
        finish = sent_at_28 if args.sent_28 else (lambda drawing: drawing)
        digits = (
            (finish(canvas_drawing(strokes)), label)
            for path in args.files
            for strokes, label in read(path)
        )
    counts = write_folders(digits, args.out)
    print(f"{sum(counts)} digits in {args.out} (per digit: {counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
