"""Hostile and random inputs for the handler's decoding and the preprocessing (hypothesis).

Whatever arrives, only the project's own `InvalidInputError` may escape, and whatever is accepted
becomes a finite 1x28x28 float32 tensor. A few known holes are pinned by example first.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image, ImageDraw

from handler.mnist_handler import _tensor_from_request
from handler.preprocessing import InvalidInputError, decode_image, pixels_to_array, preprocess

# Fast tier: a modest number of examples each; in CI the same examples every run.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
PNG_MODES = ("1", "L", "LA", "I;16", "P", "RGB", "RGBA")


def outcome(request: dict[str, Any]) -> torch.Tensor | InvalidInputError:
    """The handler's reading of one request: a valid model input or the project's own error."""
    try:
        tensor = _tensor_from_request(request)
    except InvalidInputError as error:
        assert error.reason and error.message
        return error
    assert tensor.shape == (1, 28, 28)
    assert tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
    return tensor


def a_digit(size: tuple[int, int] = (120, 120), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A dark stroke on a light background, in `mode`."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, "white")
    width, height = size
    points = [(rng.randrange(width), rng.randrange(height)) for _ in range(3)]
    ImageDraw.Draw(image).line(points, fill="black", width=max(1, min(size) // 8))
    return image.convert(mode)


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG" and image.mode not in ("L", "RGB", "CMYK"):
        image = image.convert("RGB")
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def valid_pixels() -> list[list[int]]:
    rows = [[0] * 28 for _ in range(28)]
    for row in range(6, 22):
        rows[row][13] = rows[row][14] = 255
    return rows


# --- Known holes, pinned by example ---------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_json_with_a_byte_order_mark_or_in_utf16_or_utf32_is_read(encoding: str) -> None:
    body = json.dumps({"pixels": valid_pixels()}).encode(encoding)
    for field in ("body", "data"):
        assert isinstance(outcome({field: body}), torch.Tensor), (encoding, field)


def test_json_text_with_a_byte_order_mark_is_read() -> None:
    """A text/* body arrives decoded, with the BOM as its first character."""
    assert isinstance(
        outcome({"body": "\ufeff" + json.dumps({"pixels": valid_pixels()})}), torch.Tensor
    )


@pytest.mark.parametrize("value", ["255", True, False, None, [255], {"v": 1}], ids=repr)
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_pixels_must_be_numbers_not_strings_or_booleans(value: object, layout: str) -> None:
    rows = valid_pixels()
    rows[14][14] = value  # type: ignore[call-overload]
    pixels = rows if layout == "nested" else [v for row in rows for v in row]
    with pytest.raises(InvalidInputError) as refused:
        pixels_to_array(pixels)
    assert refused.value.reason == "bad_pixels"


def test_pixels_accept_ints_and_floats() -> None:
    rows = valid_pixels()
    rows[0][0] = 0.4
    assert pixels_to_array(rows)[14, 14] == 255


def test_a_body_with_both_image_and_pixels_is_refused_naming_both() -> None:
    image = base64.b64encode(encoded(a_digit(), "PNG")).decode()
    refused = outcome({"body": {"image": image, "pixels": valid_pixels()}})
    assert isinstance(refused, InvalidInputError)
    assert refused.reason == "bad_json"
    assert "image" in refused.message and "pixels" in refused.message


# --- Property-based fuzzing -----------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096), field=st.sampled_from(["body", "data"]))
def test_random_bytes_never_escape_as_anything_else(data: bytes, field: str) -> None:
    outcome({field: data})


@FUZZ
@given(text=st.text(max_size=512))
def test_random_text_never_escapes_as_anything_else(text: str) -> None:
    outcome({"body": text})


@FUZZ
@given(
    image_format=st.sampled_from(FORMATS),
    mode=st.sampled_from(("L", "RGB", "RGBA", "P")),
    seed=st.integers(0, 2**16),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), max_size=8),
)
def test_truncated_and_bit_flipped_images_are_refused_or_read(
    image_format: str, mode: str, seed: int, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(encoded(a_digit(mode=mode, seed=seed), image_format))
    for where, bit in flips:
        data[min(len(data) - 1, int(where * len(data)))] ^= 1 << bit
    data = data[: max(1, int(cut * len(data)))] if cut < 1 else data
    outcome({"body": bytes(data)})


@FUZZ
@given(
    width=st.sampled_from([1, 2, 3, 27, 28, 29, 500, 4096, 4097]),
    height=st.sampled_from([1, 2, 3, 27, 28, 29, 500, 4096, 4097]),
    seed=st.integers(0, 2**16),
)
def test_extreme_sizes_and_aspect_ratios(width: int, height: int, seed: int) -> None:
    if width * height > 4096 * 600:  # keeps the fast tier fast; the limit itself is per side
        width = min(width, 600)
    result = outcome({"body": encoded(a_digit((width, height), "L", seed), "PNG")})
    if max(width, height) > 4096:
        assert isinstance(result, InvalidInputError) and result.reason == "too_large"


@FUZZ
@given(mode=st.sampled_from(PNG_MODES), seed=st.integers(0, 2**16), transparent=st.booleans())
def test_every_png_mode_is_read(mode: str, seed: int, transparent: bool) -> None:
    image = a_digit((64, 48), mode, seed)
    if transparent and mode in ("L", "RGB", "P"):
        image.info["transparency"] = 255 if mode in ("L", "P") else (255, 255, 255)
    result = outcome({"body": encoded(image, "PNG")})
    assert isinstance(result, torch.Tensor), (mode, result)


@FUZZ
@given(
    array=arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.bool_]),
        shape=array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=40),
    )
)
def test_preprocess_takes_any_array_or_refuses_it(array: np.ndarray) -> None:
    try:
        tensor = preprocess(array)
    except InvalidInputError:
        return
    assert tensor.shape == (1, 28, 28) and torch.isfinite(tensor).all()


# Any JSON value, NaN, infinities and huge numbers included (Python's json writes them).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=30) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=60,
)
pixel_values = (
    st.integers(0, 255)
    | st.floats(0, 255)
    | st.sampled_from([-1, 256, 10**400, math.nan, math.inf, -math.inf, True, False, "7", None])
)


@FUZZ
@given(
    document=st.dictionaries(
        st.sampled_from(["image", "pixels", "data", "other"]), json_values, max_size=3
    ),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
    parsed=st.booleans(),
)
def test_any_json_document_is_refused_or_read(
    document: dict[str, Any], encoding: str, parsed: bool
) -> None:
    body: Any = document if parsed else json.dumps(document).encode(encoding)
    outcome({"body": body})


@settings(FUZZ, max_examples=60)  # each example is 784 values: fewer keep the tier fast
@given(
    values=st.lists(pixel_values, min_size=784, max_size=784)
    | st.lists(pixel_values, max_size=800),
    nested=st.booleans(),
)
@example(values=[255] * 784, nested=True)
def test_pixels_are_accepted_exactly_when_they_are_784_real_numbers_in_range(
    values: list[Any], nested: bool
) -> None:
    pixels: list[Any] = values
    if nested and len(values) == 784:
        pixels = [values[row * 28 : row * 28 + 28] for row in range(28)]
    acceptable = len(values) == 784 and all(
        type(value) in (int, float) and 0 <= value <= 255 for value in values
    )
    try:
        array = pixels_to_array(pixels)
    except InvalidInputError as error:
        assert not acceptable, (error.message, values)
        return
    assert acceptable, values
    assert array.shape == (28, 28) and array.dtype == np.uint8
    outcome({"body": {"pixels": pixels}})


def test_a_decoded_image_stays_within_the_limits() -> None:
    """The fuzzing's own premise: a valid image of every format decodes."""
    for image_format in ("PNG", "JPEG", "GIF", "WEBP", "BMP"):
        assert decode_image(encoded(a_digit(), image_format)).size == (120, 120)
