"""The one preprocessing: canvas styles, polarity, centring, exact MNIST round trip, limits."""

from __future__ import annotations

import io
import platform
import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile, TiffImagePlugin

from handler import preprocessing
from handler.preprocessing import (
    MAX_IMAGE_BYTES,
    PEN_WIDTH_RANGE,
    InvalidInputError,
    decode_image,
    is_mnist_shaped,
    normalise,
    pixels_to_array,
    preprocess,
    stroke_width,
    to_mnist_pixels,
)
from tests.fixtures.images import progressive_jpeg
from training.drawings import STYLES, drawings
from training.train import to_model_input


def encode(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    weights = pixels.astype(np.float64)
    rows, cols = np.indices(pixels.shape)
    return (rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum()


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def png_with_header_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header announces width x height grey pixels (all zero)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\x00" + bytes(width)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# --- Canvas-like drawings -------------------------------------------------------------------


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_becomes_a_centred_white_on_black_mnist_digit(style: str, mnist_dir) -> None:
    for data, _label in drawings(style, 12, data_dir=mnist_dir):
        pixels = to_mnist_pixels(decode_image(data))
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
        assert pixels.max() == 255, "ink is stretched to full contrast"
        assert pixels[0].max() == 0 and pixels[:, 0].max() == 0, "background is black"
        assert max(ink_box(pixels)) in (19, 20, 21), "longer side fills the 20 px box"
        row, col = centre_of_mass(pixels)
        assert abs(row - 14) <= 1.0 and abs(col - 14) <= 1.0


def test_polarity_and_transparency_do_not_change_what_the_model_sees(mnist_dir) -> None:
    """Black on transparent, black on white and white on black give (nearly) the same digit."""
    seen = {
        style: [
            to_mnist_pixels(decode_image(data))
            for data, _ in drawings(style, 10, data_dir=mnist_dir)
        ]
        for style in ("canvas_transparent", "black_on_white", "white_on_black")
    }
    for reference, *others in zip(*seen.values(), strict=True):
        for other in others:
            difference = np.abs(reference.astype(int) - other.astype(int))
            assert difference.mean() < 2.0


@pytest.mark.parametrize(("paper", "ink"), [(127, 20), (100, 0), (140, 255), (60, 200)])
def test_ink_on_grey_paper_is_found_whichever_way_it_runs(paper: int, ink: int) -> None:
    """Ink runs the way it reaches furthest from the paper, whichever side of mid-grey that is."""
    rng = np.random.default_rng(0)
    sheet = np.clip(paper + rng.integers(-3, 4, (280, 280)), 0, 255).astype(np.uint8)
    sheet[40:240, 130:150] = ink
    pixels = to_mnist_pixels(decode_image(encode(Image.fromarray(sheet))))
    assert ink_box(pixels) == (20, 2) and pixels.max() == 255


def test_one_glare_pixel_does_not_turn_the_ink_around() -> None:
    sheet = np.full((280, 280), 170, dtype=np.uint8)  # grey paper, a pencil stroke, one glare
    sheet[40:240, 130:150] = 100
    sheet[10, 10] = 255
    pixels = to_mnist_pixels(decode_image(encode(Image.fromarray(sheet))))
    assert ink_box(pixels) == (20, 2)


def seven_stored_sideways(exif: bytes, image_format: str) -> tuple[bytes, bytes]:
    """A 7 upright, and the same turned as a camera stores it, with `exif` saying so."""
    upright = Image.new("L", (200, 300), 255)
    ImageDraw.Draw(upright).line([(40, 60), (160, 60), (80, 260)], fill=0, width=14)
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    return encode(upright, image_format), encode(sideways, image_format, exif=exif)


def orientation_6(*extra: tuple[int, object]) -> bytes:
    """EXIF saying "turn 90 degrees clockwise to view", with `extra` tags."""
    tags = Image.Exif()
    tags[0x0112] = 6
    for tag, value in extra:
        tags[tag] = value
    return tags.tobytes()


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_a_photo_stored_sideways_is_read_upright(image_format: str) -> None:
    """Phones store a photo as the sensor read it, with an EXIF tag saying how to turn it."""
    upright, stored = seven_stored_sideways(orientation_6(), image_format)
    expected = to_mnist_pixels(decode_image(upright))
    difference = np.abs(to_mnist_pixels(decode_image(stored)).astype(int) - expected)
    assert difference.mean() < 2.0


def test_a_photo_whose_exif_could_not_be_written_back_is_still_turned() -> None:
    """A resolution tag renumbered as a tag of another type: Pillow reads it, but cannot write
    the EXIF back, as its `exif_transpose` does."""
    exif = orientation_6((0x011A, TiffImagePlugin.IFDRational(72)))
    odd = exif.replace(b"\x01\x1a\x00\x05", b"\x01\x41\x00\x05")  # XResolution -> 0x0141
    assert odd != exif
    upright, stored = seven_stored_sideways(odd, "JPEG")
    expected = to_mnist_pixels(decode_image(upright))
    difference = np.abs(to_mnist_pixels(decode_image(stored)).astype(int) - expected)
    assert difference.mean() < 2.0


def test_off_centre_ink_is_moved_to_the_centre() -> None:
    canvas = Image.new("L", (400, 300), 255)
    canvas.paste(0, (20, 30, 60, 130))  # a dark bar near the top-left corner
    pixels = to_mnist_pixels(decode_image(encode(canvas)))
    assert ink_box(pixels) == (20, 6)  # 8 px wide once fitted, thinned towards MNIST's pen
    row, col = centre_of_mass(pixels)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_coloured_ink_on_transparent_pixels_is_read_through_alpha() -> None:
    canvas = np.zeros((200, 200, 4), dtype=np.uint8)
    canvas[40:160, 88:112] = (30, 60, 200, 255)  # blue bar; the rest is transparent black
    pixels = to_mnist_pixels(decode_image(encode(Image.fromarray(canvas))))
    assert ink_box(pixels) == (20, 3)  # 4 px wide once fitted, a little over MNIST's pen
    assert pixels[4:24, 13:16].min() > 200


def test_light_ink_on_transparent_pixels_is_not_lost() -> None:
    canvas = np.zeros((100, 100, 4), dtype=np.uint8)
    canvas[20:80, 45:55] = (255, 255, 255, 255)
    assert to_mnist_pixels(Image.fromarray(canvas)).max() == 255


def test_jpeg_noise_does_not_widen_the_crop() -> None:
    canvas = Image.new("L", (280, 280), 255)
    canvas.paste(0, (130, 40, 150, 240))
    noisy = decode_image(encode(canvas, "JPEG", quality=40))
    assert ink_box(to_mnist_pixels(noisy)) == (20, 2)


# --- 28x28 input: the exact MNIST round trip ------------------------------------------------


def test_every_mnist_test_digit_passes_through_unchanged(mnist_test) -> None:
    images, _ = mnist_test
    unchanged = [np.array_equal(to_mnist_pixels(digit), digit) for digit in images]
    assert all(unchanged), f"{unchanged.count(False)} MNIST digits were altered"


@pytest.mark.parametrize(
    ("name", "place"),
    [
        ("fills the frame", lambda digit: resized(digit, (28, 28))),
        ("small in a corner", lambda digit: pasted(resized(digit, (9, 9)), 1, 2)),
        ("off-centre", lambda digit: pasted(resized(digit, (18, 18)), 0, 9)),
        ("dark on light", lambda digit: 255 - pasted(resized(digit, (22, 22)), 3, 1)),
    ],
)
def test_a_28x28_digit_not_in_mnist_form_gets_the_whole_recipe(
    mnist_test, name: str, place
) -> None:
    """A canvas a client shrank to 28x28 is cropped, fitted into 20x20 and centred by mass,
    whether it comes as an image or as JSON pixels."""
    images, _ = mnist_test
    for digit in images[:20]:
        sent = place(crop_to_ink(digit))
        for pixels in (to_mnist_pixels(sent), to_mnist_pixels(pixels_to_array(sent.tolist()))):
            assert is_mnist_shaped(pixels), name
            assert max(ink_box(pixels)) in (19, 20)


def test_a_28x28_digit_already_in_mnist_form_is_recognised(mnist_test) -> None:
    images, _ = mnist_test
    assert all(is_mnist_shaped(digit) for digit in images[:500])
    shifted = np.roll(images[0], 2, axis=1)
    assert not is_mnist_shaped(shifted)  # centre of mass two pixels off
    assert not is_mnist_shaped(images[0] // 2)  # faint ink
    assert not is_mnist_shaped(np.zeros((28, 28), np.uint8))


def test_stroke_width_counts_the_outline_at_the_crops_edge() -> None:
    """A bar that fills its crop has the width of its shorter side, not an endless one."""
    bar = Image.new("L", (20, 200), 255)
    assert 18 <= stroke_width(bar) <= 20


@pytest.mark.parametrize("pen", [3, 60, 900])
def test_any_pen_on_a_large_canvas_becomes_mnists_pen(pen: int) -> None:
    """Very thin and very thick pens are brought to MNIST's typical width, however large the
    canvas (the pen change works on a reduced crop, so its cost is bounded too)."""
    canvas = Image.new("L", (4000, 4000), 0)
    ImageDraw.Draw(canvas).line([(2000, 200), (2000, 3800)], fill=255, width=pen)
    canvas = canvas.rotate(20, resample=Image.Resampling.BILINEAR)
    pixels = to_mnist_pixels(canvas)
    assert is_mnist_shaped(pixels)
    assert PEN_WIDTH_RANGE[0] - 0.5 <= stroke_width(Image.fromarray(pixels)) <= 5.5


def crop_to_ink(digit: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def resized(digit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.BILINEAR))


def pasted(digit: np.ndarray, top: int, left: int) -> np.ndarray:
    field = np.zeros((28, 28), dtype=np.uint8)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return field


def test_mnist_digits_round_trip_exactly_as_training_sees_them(mnist_test) -> None:
    images, _ = mnist_test
    digits = images[:200]
    expected = to_model_input(torch.from_numpy(digits))
    for digit, model_input in zip(digits, expected, strict=True):
        assert np.array_equal(to_mnist_pixels(digit), digit)
        assert torch.equal(preprocess(digit), model_input)


def test_mnist_digit_survives_png_json_tensor_and_inversion(mnist_test) -> None:
    images, _ = mnist_test
    for digit in images[:50]:
        as_png = decode_image(encode(Image.fromarray(digit)))
        assert np.array_equal(to_mnist_pixels(as_png), digit)
        assert np.array_equal(to_mnist_pixels(pixels_to_array(digit.tolist())), digit)
        assert np.array_equal(to_mnist_pixels(pixels_to_array(digit.ravel().tolist())), digit)
        as_float_tensor = torch.from_numpy(digit).float().div(255).unsqueeze(0)
        assert np.array_equal(to_mnist_pixels(as_float_tensor), digit)
        assert np.array_equal(to_mnist_pixels(255 - digit), digit)


def test_normalise_uses_the_mnist_constants() -> None:
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[0, 0] = 255
    tensor = normalise(pixels)
    assert tensor.shape == (1, 28, 28) and tensor.dtype == torch.float32
    assert tensor[0, 0, 0].item() == pytest.approx((1 - 0.1307) / 0.3081)
    assert tensor[0, 1, 1].item() == pytest.approx(-0.1307 / 0.3081)


def test_normalise_gives_every_grey_level_exactly_as_training_does() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    trained_on = to_model_input(torch.from_numpy(levels))[0]
    assert torch.equal(normalise(levels[0]), trained_on)


# --- Bad input: each refusal and its reason -------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am not an image", "not_an_image"),
        (b"\x00" * (MAX_IMAGE_BYTES + 1), "too_large"),
        (encode(Image.new("L", (10, 10)), "TIFF"), "not_an_image"),
        ("a string", "not_an_image"),
    ],
)
def test_decode_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        decode_image(data)
    assert refused.value.reason == reason
    assert refused.value.message


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_truncated_images_are_refused(image_format: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise).convert("RGB"), image_format)
    with pytest.raises(InvalidInputError) as refused:
        decode_image(data[: len(data) // 2])
    assert refused.value.reason == "truncated"


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_every_supported_format_decodes(image_format: str) -> None:
    canvas = Image.new("RGB", (64, 64), "white")
    canvas.paste((0, 0, 0), (28, 10, 36, 54))
    assert to_mnist_pixels(decode_image(encode(canvas, image_format))).max() == 255


def png_modes() -> dict[str, Image.Image]:
    """One small noisy image in every PNG flavour a client might send."""
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 4), dtype=np.uint8))
    sixteen_bit = np.asarray(rgba.convert("L"), dtype=np.uint16) * 257
    return {
        "RGBA": rgba,
        "RGB": rgba.convert("RGB"),
        "L": rgba.convert("L"),
        "LA": rgba.convert("LA"),
        "P": rgba.convert("RGB").convert("P"),
        "P-transparent": rgba.convert("P"),
        "1-bit": rgba.convert("1"),
        "16-bit": Image.fromarray(sixteen_bit),
    }


@pytest.mark.parametrize("mode", list(png_modes()))
def test_png_decodes_to_pillows_pixels_in_every_mode(mode: str) -> None:
    data = encode(png_modes()[mode])
    expected = Image.open(io.BytesIO(data))
    expected.load()
    decoded = decode_image(data)
    assert (decoded.mode, decoded.size) == (expected.mode, expected.size)
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


def test_canvas_pngs_take_the_fast_decoder(monkeypatch: pytest.MonkeyPatch, mnist_dir) -> None:
    has_wheel = platform.machine() in ("x86_64", "AMD64") or sys.platform == "darwin"
    if not has_wheel:  # as pyproject.toml's marker for pyspng says
        pytest.skip("pyspng has no wheel for this platform; Pillow decodes every PNG")
    assert preprocessing.pyspng is not None, "pyspng is missing where it has a wheel"
    calls = []

    def counting_load(data: bytes) -> np.ndarray:
        calls.append(len(data))
        return fast_load(data)

    fast_load = preprocessing.pyspng.load
    monkeypatch.setattr(preprocessing.pyspng, "load", counting_load)
    canvas, _ = drawings("canvas_transparent", 1, data_dir=mnist_dir)[0]
    decode_image(canvas)
    decode_image(encode(png_modes()["P"]))  # palette: Pillow's job
    assert calls == [len(canvas)]


def test_style_drawings_give_the_same_pixels_with_either_png_decoder(
    monkeypatch: pytest.MonkeyPatch, mnist_dir
) -> None:
    samples = [data for style in STYLES for data, _ in drawings(style, 5, data_dir=mnist_dir)]
    fast = [to_mnist_pixels(decode_image(data)) for data in samples]
    monkeypatch.setattr(preprocessing, "pyspng", None)
    pillow = [to_mnist_pixels(decode_image(data)) for data in samples]
    assert all(np.array_equal(a, b) for a, b in zip(fast, pillow, strict=True))


@pytest.mark.parametrize("side", [6_000, 20_000], ids=["36-megapixels", "400-megapixels"])
def test_decompression_bomb_is_refused_before_decoding(
    side: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = png_with_header_size(side, side)  # a few hundred kilobytes that inflate to gigabytes
    assert len(bomb) < MAX_IMAGE_BYTES

    def must_not_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    with pytest.raises(InvalidInputError) as refused:
        decode_image(bomb)
    assert refused.value.reason == "too_large"


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_progressive_jpegs_as_encoders_write_them_decode(mode: str) -> None:
    assert decode_image(progressive_jpeg(mode, side=64)).size == (64, 64)


@pytest.mark.parametrize("image_format", ["JPEG", "MPO"])
def test_a_jpeg_with_more_scans_than_any_encoder_writes_is_refused(
    monkeypatch: pytest.MonkeyPatch, image_format: str
) -> None:
    bomb = progressive_jpeg(repeated_scans=preprocessing.MAX_JPEG_SCANS, image_format=image_format)
    assert Image.open(io.BytesIO(bomb)).format == image_format

    def must_not_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    with pytest.raises(InvalidInputError, match="scans") as refused:
        decode_image(bomb)
    assert refused.value.reason == "too_large"


def test_an_image_just_over_the_side_limit_is_refused() -> None:
    too_wide = png_with_header_size(preprocessing.MAX_IMAGE_SIDE + 1, 1)
    with pytest.raises(InvalidInputError, match="pixels") as refused:
        decode_image(too_wide)
    assert refused.value.reason == "too_large"


@pytest.mark.parametrize(
    "canvas",
    [
        Image.new("RGBA", (280, 280), (0, 0, 0, 0)),
        Image.new("RGB", (280, 280), "white"),
        Image.new("L", (280, 280), 0),
        Image.new("L", (28, 28), 0),
    ],
    ids=["transparent", "white", "black", "black-28x28"],
)
def test_blank_drawings_are_refused(canvas: Image.Image) -> None:
    with pytest.raises(InvalidInputError) as refused:
        to_mnist_pixels(decode_image(encode(canvas)))
    assert refused.value.reason == "blank"


def test_faint_jpeg_noise_alone_is_blank() -> None:
    noise = np.random.default_rng(1).integers(245, 256, (200, 200), dtype=np.uint8)
    with pytest.raises(InvalidInputError) as refused:
        to_mnist_pixels(decode_image(encode(Image.fromarray(noise), "JPEG")))
    assert refused.value.reason == "blank"


@pytest.mark.parametrize(
    "values",
    [
        [0] * 783,
        [[0] * 28] * 27,
        [0] * 783 + [256],
        [0] * 783 + [-1],
        [0] * 783 + [float("nan")],
        [0] * 783 + ["seven"],
        [[0] * 28] * 27 + [[0] * 27],
        "0" * 784,
        None,
    ],
    ids=["783", "27-rows", "256", "negative", "nan", "text", "ragged", "string", "null"],
)
def test_bad_pixels_are_refused(values: object) -> None:
    with pytest.raises(InvalidInputError) as refused:
        pixels_to_array(values)
    assert refused.value.reason == "bad_pixels"


def test_unknown_input_types_are_refused() -> None:
    with pytest.raises(InvalidInputError) as refused:
        preprocess(object())  # type: ignore[arg-type]
    assert refused.value.reason == "not_an_image"
