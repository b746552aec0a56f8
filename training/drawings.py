"""Real MNIST test digits redrawn the way people draw them in a browser canvas or a paint program.

Each digit is enlarged, turned into a pen stroke (thin, normal or thick, anti-aliased edges) and
put on a canvas in one of several styles: black ink on a transparent canvas (what a browser's
``toDataURL`` gives), black on white, white on black, coloured ink, JPEG, larger and off-centre
canvases. Handler tests, the serving tests (through the real server) and the benchmark share it,
so "about as accurate as on MNIST" is measured on the same pictures everywhere.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from config import get_settings
from training.data import load_split

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
INK_COLOURS = ((200, 30, 30), (30, 60, 200), (20, 130, 40), (120, 40, 160), (230, 110, 0))


@dataclass(frozen=True)
class Style:
    """How a digit is put on the canvas. `background=None` means transparent pixels."""

    canvas: tuple[int, int] = (280, 280)
    ink: tuple[int, int, int] | None = BLACK
    background: tuple[int, int, int] | None = None
    stroke: str = "normal"
    off_centre: bool = False
    image_format: str = "PNG"


STYLES: dict[str, Style] = {
    "canvas_transparent": Style(),
    "black_on_white": Style(background=WHITE),
    "white_on_black": Style(ink=WHITE, background=BLACK),
    "coloured_ink": Style(ink=None, background=WHITE),
    "jpeg": Style(canvas=(400, 300), background=WHITE, image_format="JPEG"),
    "off_centre": Style(canvas=(400, 300), off_centre=True),
    "thick_stroke": Style(stroke="thick"),
    "thin_stroke": Style(stroke="thin"),
}

# Threshold on the enlarged soft digit that becomes the stroke's edge, and a dilation size.
_STROKES = {"thin": (200, 0), "normal": (110, 0), "thick": (60, 9)}


def load_mnist_test(data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 10,000 test images (uint8, Nx28x28) and labels, as training reads them."""
    test = load_split(data_dir or get_settings().data_dir, train=False)
    return test.images.numpy(), test.labels.numpy()


def drawings(
    style: str, count: int, *, data_dir: Path | None = None, seed: int = 0
) -> list[tuple[bytes, int]]:
    """(encoded image, true label) for the first `count` MNIST test digits drawn in `style`."""
    images, labels = load_mnist_test(data_dir)
    rng = np.random.default_rng(seed)
    return [(render_drawing(images[i], STYLES[style], rng), int(labels[i])) for i in range(count)]


def render_drawing(digit: np.ndarray, style: Style, rng: np.random.Generator) -> bytes:
    """One 28x28 MNIST digit as an encoded canvas drawing in `style`."""
    coverage = _place(_stroke(digit, style, rng), style, rng)
    ink = style.ink or INK_COLOURS[rng.integers(len(INK_COLOURS))]
    return _encode(_paint(coverage, ink, style.background), style.image_format)


def _stroke(digit: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """The digit enlarged to canvas scale as pen coverage 0-255 with anti-aliased edges."""
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    canvas_height = min(style.canvas)
    share = rng.uniform(0.25, 0.4) if style.off_centre else rng.uniform(0.55, 0.8)
    scale = share * canvas_height / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    soft = Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC)
    edge, dilation = _STROKES[style.stroke]
    if dilation:
        soft = soft.filter(ImageFilter.MaxFilter(dilation))
    coverage = np.clip((np.asarray(soft, dtype=np.float32) - edge) * 6 + 128, 0, 255)
    return coverage.astype(np.uint8)


def _place(stroke: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Put the stroke on an empty canvas: near the centre, or anywhere it fits."""
    width, height = style.canvas
    coverage = np.zeros((height, width), dtype=np.uint8)
    free_y, free_x = height - stroke.shape[0], width - stroke.shape[1]
    if style.off_centre:
        top, left = int(rng.integers(0, free_y + 1)), int(rng.integers(0, free_x + 1))
    else:
        jitter = max(1, min(free_x, free_y) // 6)
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
    alpha = coverage[..., None].astype(np.float32) / 255
    rgb = np.asarray(ink, np.float32) * alpha + np.asarray(background, np.float32) * (1 - alpha)
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 75} if image_format == "JPEG" else {}))
    return buffer.getvalue()
