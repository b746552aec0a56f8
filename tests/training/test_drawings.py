"""The drawing generator's round pen: one width along the whole stroke, as a canvas draws."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

from training.drawings import Style, render_drawing


def ink(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).getchannel("A")) >= 128


@pytest.mark.parametrize("width", [12.0, 24.0, 36.0])
def test_the_round_pen_draws_every_stroke_with_its_width(width: float, mnist_test) -> None:
    images, _ = mnist_test
    style = Style(pen=(width, width))
    rng = np.random.default_rng(0)
    for digit in images[:10]:
        drawn = ink(render_drawing(digit, style, rng))
        # Twice the distance from the centre line to the nearest background pixel.
        widths = 2 * distance_transform_edt(drawn)[skeletonize(drawn)]
        assert np.median(widths) == pytest.approx(width, rel=0.15)
        assert np.percentile(widths, 10) >= 0.75 * width
