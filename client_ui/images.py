"""PNG helpers for showing images in the browser."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from handler.preprocessing import decode_image, to_mnist_pixels


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def model_view_png(drawing_png: bytes) -> bytes:
    """The 28x28 image the model sees for this drawing, from the project's one preprocessing."""
    pixels = to_mnist_pixels(decode_image(drawing_png))
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
