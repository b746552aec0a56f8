"""Real MNIST test digits redrawn the way people draw them and the way clients send them.

Each digit is enlarged (optionally flatter than MNIST's writer drew it), turned into a pen
stroke (the writer's own stroke made thin to very thick, or its centre line drawn again with a
round pen of one width, as a canvas draws), optionally slanted, and put on a canvas in one of
several styles: black ink on a transparent canvas (what a browser's ``toDataURL`` gives),
black on white, white on black, coloured ink, JPEG, off-centre, filling the frame, small in a
corner. Many clients shrink the canvas to 28x28 themselves before sending (without centring
the digit): the ``sent_28*`` styles do that. Handler tests, the serving tests (through the real
server) and the benchmark share these drawings, so "about as accurate as on MNIST" is measured
on the same pictures everywhere.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

from config import get_settings
from training.data import TEST_COUNT, load_split

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
INK_COLOURS = ((200, 30, 30), (30, 60, 200), (20, 130, 40), (120, 40, 160), (230, 110, 0))


@dataclass(frozen=True)
class Style:
    """How a digit is put on the canvas. `background=None` means transparent pixels.

    `size` is the range of the digit's longer side as a share of the canvas's shorter side;
    `flatter`, when set, is the range of the factor its height is divided by before the pen
    draws it (a digit compressed like many people's, who fill a square box); `pen`, when set,
    is the range of a round pen's width in canvas pixels that draws the stroke's centre line
    again, one width for the whole digit, as a browser canvas draws; `placement` is
    "centre" (with a little jitter), "anywhere" or "corner"; `slant` is the largest horizontal
    shear (x moves by slant * height); `sent_size`, when set, is the size the client shrinks
    the whole canvas to before sending.
    """

    canvas: tuple[int, int] = (280, 280)
    ink: tuple[int, int, int] | None = BLACK
    background: tuple[int, int, int] | None = None
    stroke: str = "normal"
    size: tuple[float, float] = (0.55, 0.8)
    flatter: tuple[float, float] | None = None
    pen: tuple[float, float] | None = None
    placement: str = "centre"
    slant: float = 0.0
    sent_size: tuple[int, int] | None = None
    image_format: str = "PNG"


SMALL = (0.25, 0.4)
FILLING = (0.9, 1.0)
SENT_28 = (28, 28)
# From a fine pen to a marker on a 280 px canvas; the app's pen is 24 px (client_ui/draw.py).
ROUND_PEN = (12.0, 36.0)

STYLES: dict[str, Style] = {
    "canvas_transparent": Style(),
    "black_on_white": Style(background=WHITE),
    "white_on_black": Style(ink=WHITE, background=BLACK),
    "coloured_ink": Style(ink=None, background=WHITE),
    "jpeg": Style(canvas=(400, 300), background=WHITE, image_format="JPEG"),
    "off_centre": Style(canvas=(400, 300), size=SMALL, placement="anywhere"),
    "thin_stroke": Style(stroke="thin"),
    "thick_stroke": Style(stroke="thick"),
    "very_thick_stroke": Style(stroke="very_thick"),
    "slanted": Style(slant=0.45),
    "compressed": Style(flatter=(1.3, 1.7)),
    "round_pen": Style(pen=ROUND_PEN),
    "fills_frame": Style(size=FILLING),
    "small_in_corner": Style(size=SMALL, placement="corner"),
    "sent_28": Style(ink=WHITE, background=BLACK, sent_size=SENT_28),
    "sent_28_dark_on_light": Style(background=WHITE, sent_size=SENT_28),
    "sent_28_fills_frame": Style(ink=WHITE, background=BLACK, size=FILLING, sent_size=SENT_28),
    "sent_28_small_in_corner": Style(
        ink=WHITE, background=BLACK, size=SMALL, placement="corner", sent_size=SENT_28
    ),
    "sent_28_thick_stroke": Style(ink=WHITE, background=BLACK, stroke="thick", sent_size=SENT_28),
    "sent_28_round_pen": Style(ink=WHITE, background=BLACK, pen=ROUND_PEN, sent_size=SENT_28),
}

# Threshold on the enlarged soft digit that becomes the stroke's edge, and a dilation size.
_STROKES = {"thin": (200, 0), "normal": (110, 0), "thick": (60, 9), "very_thick": (60, 17)}


def load_mnist_test(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 10,000 test images (uint8, Nx28x28) and labels, as training reads them."""
    test = load_split(data_dir or get_settings().data_dir, train=False)
    return test.images.numpy(), test.labels.numpy()


def spread_step(count: int) -> int:
    """The `every` that spreads `count` digits evenly over MNIST's test set, whose first digits
    are harder than its last; ValueError unless `count` divides the test set."""
    if not 1 <= count <= TEST_COUNT or TEST_COUNT % count:
        raise ValueError(f"must divide {TEST_COUNT:,}, so that the digits are spread evenly")
    return TEST_COUNT // count


def drawings(
    style: str, count: int, *, data_dir: Path | None = None, seed: int = 0, every: int = 1
) -> list[tuple[bytes, int]]:
    """(encoded image, true label) for `count` MNIST test digits drawn in `style`: the first
    ones, or with `every`, digits 0, every, 2 * every, ... spread over the test set."""
    images, labels = load_mnist_test(data_dir)
    rng = np.random.default_rng(seed)
    chosen = range(0, count * every, every)
    return [(render_drawing(images[i], STYLES[style], rng), int(labels[i])) for i in chosen]


def render_drawing(digit: np.ndarray, style: Style, rng: np.random.Generator) -> bytes:
    """One 28x28 MNIST digit as an encoded canvas drawing in `style`."""
    stroke = _slant(_stroke(digit, style, rng), style.slant, rng)
    coverage = _place(stroke, style, rng)
    ink = style.ink or INK_COLOURS[rng.integers(len(INK_COLOURS))]
    picture = _paint(coverage, ink, style.background)
    if style.sent_size is not None:
        picture = picture.resize(style.sent_size, Image.Resampling.BILINEAR)
    return _encode(picture, style.image_format)


def _stroke(digit: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """The digit enlarged to canvas scale as pen coverage 0-255 with anti-aliased edges."""
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    if style.flatter:
        height = height / rng.uniform(*style.flatter)
    scale = rng.uniform(*style.size) * min(style.canvas) / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    soft = Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC)
    if style.pen:
        coverage = _round_pen(np.asarray(soft), rng.uniform(*style.pen))
    else:
        coverage = _writers_stroke(soft, style.stroke)
    return _fit(coverage, style.canvas)


def _writers_stroke(soft: Image.Image, stroke: str) -> np.ndarray:
    """The writer's own stroke with the edge and widening of the pen `stroke` names: coverage
    0-255, anti-aliased."""
    edge, dilation = _STROKES[stroke]
    # A square maximum of size 2k+1 is k successive 3x3 ones: the same pixels, several times
    # faster than Pillow's filter of the full size.
    for _ in range(dilation // 2):
        soft = soft.filter(ImageFilter.MaxFilter(3))
    coverage = np.clip((np.asarray(soft, dtype=np.float32) - edge) * 6 + 128, 0, 255)
    return coverage.astype(np.uint8)


def _round_pen(soft: np.ndarray, width: float) -> np.ndarray:
    """The centre line of the writer's stroke drawn again with a round pen of `width` pixels:
    coverage 0-255, falling off over one pixel at the edge."""
    margin = math.ceil(width / 2) + 1
    centre_line = skeletonize(np.pad(soft >= _STROKES["normal"][0], margin))
    distance = distance_transform_edt(~centre_line)
    return np.clip((width / 2 + 0.5 - distance) * 255, 0, 255).astype(np.uint8)


def _slant(stroke: np.ndarray, slant: float, rng: np.random.Generator) -> np.ndarray:
    """Shear the stroke by a random amount up to `slant`, either way, on a wider canvas."""
    if not slant:
        return stroke
    shear = rng.uniform(slant / 2, slant) * rng.choice((-1, 1))
    height, width = stroke.shape
    extra = int(np.ceil(abs(shear) * height))
    # Output pixel (x, y) samples input (x + shear * (y - height / 2) - extra / 2, y).
    matrix = (1, shear, -shear * height / 2 - extra / 2, 0, 1, 0)
    image = Image.fromarray(stroke).transform(
        (width + extra, height), Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR
    )
    return np.asarray(image)


def _fit(stroke: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """Shrink a stroke that came out larger than the canvas (thick pens, filling the frame)."""
    width, height = canvas
    if stroke.shape[0] <= height and stroke.shape[1] <= width:
        return stroke
    scale = min(height / stroke.shape[0], width / stroke.shape[1])
    size = (max(1, int(stroke.shape[1] * scale)), max(1, int(stroke.shape[0] * scale)))
    return np.asarray(Image.fromarray(stroke).resize(size, Image.Resampling.BILINEAR))


def _place(stroke: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Put the stroke on an empty canvas: near the centre, anywhere it fits, or in a corner."""
    stroke = _fit(stroke, style.canvas)
    width, height = style.canvas
    coverage = np.zeros((height, width), dtype=np.uint8)
    free_y, free_x = height - stroke.shape[0], width - stroke.shape[1]
    if style.placement == "anywhere":
        top, left = int(rng.integers(0, free_y + 1)), int(rng.integers(0, free_x + 1))
    elif style.placement == "corner":
        margin_y, margin_x = free_y // 8, free_x // 8
        top = int(rng.integers(0, margin_y + 1)) + int(rng.integers(0, 2)) * (free_y - margin_y)
        left = int(rng.integers(0, margin_x + 1)) + int(rng.integers(0, 2)) * (free_x - margin_x)
    else:
        jitter = min(free_x, free_y) // 6
        top = free_y // 2 + int(rng.integers(-jitter, jitter + 1))
        left = free_x // 2 + int(rng.integers(-jitter, jitter + 1))
    coverage[top : top + stroke.shape[0], left : left + stroke.shape[1]] = stroke
    return coverage


def _paint(
    coverage: np.ndarray, ink: tuple[int, int, int], background: tuple[int, int, int] | None
) -> Image.Image:
    if background is None:
        rgba = np.zeros((*coverage.shape, 4), dtype=np.uint8)
        rgba[..., :3] = ink
        rgba[..., 3] = coverage
        rgba[coverage == 0, :3] = 0
        return Image.fromarray(rgba)
    size = coverage.shape[::-1]
    return Image.composite(
        Image.new("RGB", size, ink), Image.new("RGB", size, background), Image.fromarray(coverage)
    )


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    # The fastest PNG compression: the same pixels, a larger file, a fraction of the time.
    options = {"quality": 75} if image_format == "JPEG" else {"compress_level": 1}
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()
