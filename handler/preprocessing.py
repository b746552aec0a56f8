"""The one MNIST preprocessing: any drawing or photo of a digit -> what the model saw in training.

MNIST digits are white ink on black, fitted into a 20x20 box (aspect kept, anti-aliased) and
placed in a 28x28 field so that their centre of mass sits at the centre. Everything a client
sends is brought to that form here, by the handler, the in-process predictor and the app alike:

1. decode with limits (bytes, then pixel count read from the header BEFORE decoding), upright
   as the EXIF orientation says;
2. flatten alpha: a browser canvas is ink on TRANSPARENT pixels, so transparency is composited
   onto a background that contrasts with the ink colour, which turns alpha into ink signal;
3. grayscale, then polarity from the border: a light border means dark ink (unless there is
   none, and ink runs the other way), which is inverted;
4. crop to the ink's bounding box (a relative threshold ignores JPEG noise), scale the longer
   side to 20 px with anti-aliasing, stretch the contrast, centre by mass in 28x28;
5. normalise exactly like training: ``(uint8 / 255 - 0.1307) / 0.3081`` in float32.

A 28x28 input whose ink is already MNIST-shaped (see `is_mnist_shaped`) keeps its geometry and
grey levels and only gets steps 2-3, so a white-on-black MNIST digit passes through unchanged,
byte for byte, and a black-on-white one is inverted. Every other input, 28x28 included (a canvas
a client shrank to 28x28 itself, a digit filling the frame or sitting in a corner), gets the
whole recipe.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFilter, ImageOps, UnidentifiedImageError

try:
    import pyspng
except ImportError:  # no wheel for this platform: Pillow decodes every PNG instead
    pyspng = None

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_SIZE = 28
DIGIT_BOX = 20
# MNIST's mean centre of mass, in pixel-index coordinates (the test set's average).
CENTRE_OF_MASS = 14.0

MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
# Encoders write a progressive JPEG in about 10 scans (libjpeg: 6 for grey, 10 for colour), and
# each scan decodes every block again: thousands of them in a small file would take minutes.
MAX_JPEG_SCANS = 32
# PNG modes that libspng decodes to exactly Pillow's pixels (8-bit gray, RGB, RGBA).
FAST_PNG_MODES = ("L", "RGB", "RGBA")

# What every MNIST digit satisfies (all 70,000 checked, docs/drawings.md): the longer side of
# the ink's bounding box is 19 or 20 px, the centre of mass lies within half a pixel of the
# centre on each axis (the recipe shifts by whole pixels; 0.75 leaves a margin), and the
# strongest ink is 254 or 255.
MNIST_LONGER_SIDES = (19, 20)
MAX_CENTRE_OFFSET = 0.75
MIN_PEAK_INK = 254

# MNIST's pen, in pixels of the 28x28 digit (`stroke_width`): the test set's median. A drawing
# whose pen is outside PEN_WIDTH_RANGE (set around the test set's 5th to 95th percentiles,
# docs/drawings.md) is brought to it, when the crop has MIN_PEN_SCALE pixels per MNIST pixel.
MNIST_PEN_WIDTH = 2.2
PEN_WIDTH_RANGE = (1.6, 3.0)
MIN_PEN_SCALE = 3.0
# The pen is changed at this resolution at most, and by at most MAX_PEN_CHANGE MNIST pixels.
MAX_PEN_SCALE = 4.0
MAX_PEN_CHANGE = 3.0

# Ink weaker than this (0-255, after removing the background) counts as no drawing at all.
MIN_INK_CONTRAST = 24
# EXIF orientations 2-8 (TIFF 6.0's tag 274): the turn that shows the stored pixels upright.
EXIF_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pixels below this fraction of the strongest ink are noise (JPEG ringing, paper texture).
NOISE_FRACTION = 0.2

ImageInput = Image.Image | np.ndarray | torch.Tensor


class InvalidInputError(ValueError):
    """A client error: `reason` is a short label for metrics, `message` says what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_image(data: bytes) -> Image.Image:
    """Decode PNG, JPEG, BMP, GIF or WebP bytes; refuse empty, foreign, oversized or broken data.

    The pixel count comes from the header and is checked before any pixel is decoded, so a
    small file that would expand into gigabytes (a decompression bomb) is refused cheaply.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInputError("not_an_image", "expected the image file's bytes")
    if len(data) == 0:
        raise InvalidInputError("empty", "the request carried no image data")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInputError(
            "too_large", f"the image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}"
        )
    data = bytes(data)
    image = _open_header(data)
    _check_dimensions(*image.size)
    _check_scans(data, image)
    turn = _stored_turned(image)
    decoded = _decode_png_fast(data, image) if turn is None else None
    if decoded is not None:
        return decoded
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise InvalidInputError("too_large", "the image has too many pixels") from error
    except (OSError, EOFError, SyntaxError, ValueError, IndexError) as error:
        raise InvalidInputError(
            "truncated", f"the {image.format} image is truncated or corrupt"
        ) from error
    return image if turn is None else image.transpose(turn)


def _stored_turned(image: Image.Image) -> Image.Transpose | None:
    """How to turn the pixels upright when the header's EXIF says they are stored turned or
    mirrored, as a phone camera stores a photo taken sideways; None when upright. A PNG's EXIF
    is read only from before its pixels, so the header alone is read; an unreadable EXIF
    counts as upright, and the EXIF is never written back (a slightly odd one could not be)."""
    if image.format == "PNG" and "exif" not in image.info:
        return None
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return None
    return EXIF_TURNS.get(orientation) if isinstance(orientation, int) else None


def declared_pixels(data: bytes) -> int:
    """Width x height as the image's header declares them, without decoding a pixel."""
    width, height = _open_header(bytes(data)).size
    return width * height


def _open_header(data: bytes) -> Image.Image:
    """Read only the header: format and size."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise InvalidInputError("too_large", "the image has too many pixels") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if _has_known_signature(data):
            raise InvalidInputError("truncated", "the image is truncated or corrupt") from error
        formats = ", ".join(ALLOWED_FORMATS)
        raise InvalidInputError(
            "not_an_image", f"the data is not an image in a supported format ({formats})"
        ) from error


def _decode_png_fast(data: bytes, header: Image.Image) -> Image.Image | None:
    """The pixels of a plain 8-bit PNG through libspng (pyspng), else None for Pillow to do.

    Inflating the pixels is most of a request's cost, and libspng does it faster than Pillow
    (docs/performance.md). Only modes where both give the same pixels take this path.
    """
    if pyspng is None or header.format != "PNG" or header.mode not in FAST_PNG_MODES:
        return None
    if "transparency" in header.info:
        return None
    try:
        pixels = pyspng.load(data)
    except RuntimeError as error:
        raise InvalidInputError("truncated", "the PNG image is truncated or corrupt") from error
    width, height = header.size
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (height, width):
        return None
    return Image.fromarray(pixels)


def _has_known_signature(data: bytes) -> bool:
    """Starts like PNG, JPEG, GIF, BMP or WebP: a failure to open it means broken, not foreign."""
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return webp or data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM"))


def _check_scans(data: bytes, header: Image.Image) -> None:
    """Refuse a JPEG with more scans than any encoder writes (a decoding-time bomb). Each scan
    starts with an SOS marker, FF DA, which the entropy-coded data cannot contain."""
    if header.format not in ("JPEG", "MPO"):  # MPO: JPEGs in one file, read as the first
        return
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise InvalidInputError(
            "too_large", f"the JPEG image has {scans} scans; at most {MAX_JPEG_SCANS}"
        )


def _check_dimensions(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise InvalidInputError("not_an_image", "the image has no pixels")
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise InvalidInputError(
            "too_large",
            f"the image is {width}x{height} pixels; at most {MAX_IMAGE_SIDE} per side",
        )


def pixels_to_array(values: object) -> np.ndarray:
    """JSON pixels (28x28 nested or 784 flat numbers, 0-255) -> a 28x28 uint8 image.

    Only JSON numbers count: strings and booleans are refused rather than converted, since a
    client sending them has a bug that a silently converted digit would hide.
    """
    flat = _flat_pixels(values)
    if any(isinstance(value, list | tuple) for value in flat):
        raise InvalidInputError("bad_pixels", "pixels must be 784 numbers or 28 rows of 28")
    if not all(type(value) in (int, float) and 0 <= value <= 255 for value in flat):
        raise InvalidInputError(
            "bad_pixels", "pixels must be numbers from 0 to 255 (not strings or booleans)"
        )
    array = np.array(flat, dtype=np.float64)
    return np.rint(array).astype(np.uint8).reshape(MNIST_SIZE, MNIST_SIZE)


def _flat_pixels(values: object) -> list[object]:
    """The 784 values of a flat list or of 28 lists of 28; any other shape is refused."""
    side = MNIST_SIZE
    if isinstance(values, list | tuple) and len(values) == side * side:
        return list(values)
    if (
        isinstance(values, list | tuple)
        and len(values) == side
        and all(isinstance(row, list | tuple) and len(row) == side for row in values)
    ):
        return [value for row in values for value in row]
    raise InvalidInputError("bad_pixels", "pixels must be 784 numbers or 28 rows of 28")


def to_mnist_pixels(image: ImageInput) -> np.ndarray:
    """The 28x28 uint8 picture (white ink on black, MNIST geometry) that the model sees."""
    picture = _as_pil(image)
    if picture.size == (MNIST_SIZE, MNIST_SIZE):
        pixels = np.array(_ink(*_flattened_gray(picture, crop=False), noise_floor=False))
        if is_mnist_shaped(pixels):
            return pixels
    return _fit_like_mnist(_ink(*_flattened_gray(picture, crop=True), noise_floor=True))


def is_mnist_shaped(pixels: np.ndarray) -> bool:
    """True for 28x28 white-on-black ink laid out as MNIST lays out its digits: fitted into the
    20x20 box, centred by mass, at full contrast (the bounds hold for every MNIST digit)."""
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    if rows.size == 0 or pixels.max() < MIN_PEAK_INK:
        return False
    longer = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    if longer not in MNIST_LONGER_SIDES:
        return False
    mass = pixels.astype(np.float64)
    total = mass.sum()
    index = np.arange(MNIST_SIZE)
    row, col = mass.sum(axis=1) @ index / total, mass.sum(axis=0) @ index / total
    return max(abs(row - CENTRE_OF_MASS), abs(col - CENTRE_OF_MASS)) <= MAX_CENTRE_OFFSET


def _normalised_levels() -> np.ndarray:
    """Each of the 256 grey levels normalised with the same operations and order as training."""
    levels = torch.arange(256, dtype=torch.uint8).float().div(255)
    return levels.sub(MNIST_MEAN).div(MNIST_STD).numpy()


NORMALISED_LEVELS = _normalised_levels()


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """28x28 uint8 -> 1x28x28 float32, bit for bit as training normalises (one table lookup
    instead of four small tensor operations)."""
    return torch.from_numpy(NORMALISED_LEVELS[np.asarray(pixels, dtype=np.uint8)]).unsqueeze(0)


def preprocess(image: ImageInput) -> torch.Tensor:
    """A PIL image, numpy array or tensor -> the normalised 1x28x28 model input."""
    return normalise(to_mnist_pixels(image))


def _as_pil(image: ImageInput) -> Image.Image:
    """Arrays and tensors become 8-bit PIL images, so one (C-speed) pipeline serves all inputs."""
    if isinstance(image, torch.Tensor):
        image = _tensor_to_array(image)
    if isinstance(image, Image.Image) and image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_uint8(image))
    if not isinstance(image, Image.Image):
        raise InvalidInputError("not_an_image", f"cannot read an image from {type(image).__name__}")
    return image


def _tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    """CxHxW or HxW (or 1xCxHxW) tensor -> channels-last numpy array."""
    array = tensor.detach().cpu()
    while array.dim() > 3 and array.shape[0] == 1:
        array = array[0]
    if array.dim() == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (3, 4):
        array = array.permute(1, 2, 0)
    return array.numpy()


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4; uint8, 16-bit, bool, or float in 0-1 or 0-255."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidInputError("not_an_image", f"cannot read an image of shape {array.shape}")
    _check_dimensions(array.shape[1], array.shape[0])
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    values = np.nan_to_num(array.astype(np.float32))
    if array.dtype == np.bool_ or (values.max(initial=0) <= 1.0 and array.dtype.kind == "f"):
        values = values * 255
    elif values.max(initial=0) > 255:
        values = values * (255 / 65535)
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def _flattened_gray(image: Image.Image, crop: bool) -> tuple[Image.Image, int | None]:
    """8-bit grayscale with transparency composited onto a background contrasting the ink;
    also that background's level when it is known (from the compositing), else None.

    A canvas is typically black ink (RGB 0) on transparent black (RGB 0, alpha 0): in gray
    alone there is nothing to see; composited onto white it is an ordinary black-on-white
    drawing. Light ink on transparent pixels is composited onto black instead. With `crop`,
    the fully transparent margin is cut off first: it can only become background, and every
    later step then works on a fraction of the canvas's pixels.
    """
    if not _has_alpha(image):
        return (image if image.mode == "L" else image.convert("L")), None
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    alpha = image.getchannel("A")
    if alpha.getextrema()[0] == 255:
        return image.convert("L"), None
    if crop and (box := alpha.getbbox()) is not None:
        image, alpha = image.crop(box), alpha.crop(box)
    gray = image.convert("L")
    counts = np.asarray(gray.histogram(mask=alpha), dtype=np.float64)
    if counts.sum() == 0:
        raise InvalidInputError("blank", "the drawing is blank: every pixel is transparent")
    ink_luminance = counts @ np.arange(256) / counts.sum()
    background = 255 if ink_luminance < 128 else 0
    return Image.composite(gray, Image.new("L", gray.size, background), alpha), background


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _ink(gray: Image.Image, background: int | None, noise_floor: bool) -> Image.Image:
    """Ink strength 0-255 on a 0 background. The background level is the compositing's when
    known, else the border's; a light background means dark ink, unless none is there and
    ink runs the other way (dark ink on grey paper): one glare pixel never turns the reading.

    One lookup table does the inversion, the background removal and, with `noise_floor`, the
    cut of everything below a fraction of the strongest ink (JPEG ringing, paper texture).
    """
    if background is None:
        pixels = np.asarray(gray)
        border = np.concatenate((pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]))
        background = int(np.median(border))
    darkest, lightest = gray.getextrema()
    levels = np.arange(256)
    dark_peak, light_peak = background - darkest, lightest - background
    dark_ink = background > 127
    if (dark_peak if dark_ink else light_peak) < MIN_INK_CONTRAST:
        dark_ink = not dark_ink  # dark ink on paper darker than mid-grey, or chalk on light
    if dark_ink:
        strength, peak = background - levels, dark_peak
    else:
        strength, peak = levels - background, light_peak
    if peak < MIN_INK_CONTRAST:
        raise InvalidInputError("blank", "the drawing is blank: no ink was found")
    if noise_floor:
        strength[strength < peak * NOISE_FRACTION] = 0
    return gray.point(np.clip(strength, 0, 255).tolist())


def _fit_like_mnist(ink: Image.Image) -> np.ndarray:
    """Crop to the ink, bring the pen width to MNIST's, scale into the 20x20 box, stretch
    contrast, centre by mass in 28x28."""
    crop = _mnist_pen_width(ink.crop(ink.getbbox()))
    digit = _scale_into_box(crop)
    digit *= 255.0 / digit.max()
    return _centre_by_mass(digit)


def stroke_width(ink: Image.Image) -> float:
    """Mean pen width in pixels: twice the ink's area over its outline's length (for a stroke
    of width w and length L, the area is w * L and the outline 2 * L)."""
    pixels = np.asarray(ink)
    # A zero margin, so ink touching the crop's edge has an outline there too.
    mask = np.pad(pixels >= max(1, int(pixels.max()) // 2), 1)
    inner = np.asarray(
        Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3))
    )
    outline = np.count_nonzero(mask & (inner == 0))
    return 2 * np.count_nonzero(mask) / max(outline, 1)


def _mnist_pen_width(crop: Image.Image) -> Image.Image:
    """Thin a much thicker pen, or widen a much thinner one, towards MNIST's typical width, as
    it will be after scaling into the box; only where the crop is large enough to do it finely.

    The crop is first reduced to MAX_PEN_SCALE pixels per MNIST pixel, which bounds the
    filter's size and cost whatever the input's size.
    """
    scale = max(crop.size) / DIGIT_BOX
    if scale < MIN_PEN_SCALE:
        return crop
    width = stroke_width(crop) / scale
    if PEN_WIDTH_RANGE[0] <= width <= PEN_WIDTH_RANGE[1]:
        return crop
    if scale > MAX_PEN_SCALE:
        ratio = MAX_PEN_SCALE / scale
        size = (max(1, round(crop.width * ratio)), max(1, round(crop.height * ratio)))
        crop, scale = crop.resize(size, Image.Resampling.BOX), MAX_PEN_SCALE
    change = min(abs(width - MNIST_PEN_WIDTH), MAX_PEN_CHANGE)
    size = 2 * round(change * scale / 2) + 1
    if size < 3:
        return crop
    pen = ImageFilter.MinFilter(size) if width > MNIST_PEN_WIDTH else ImageFilter.MaxFilter(size)
    margin = size // 2
    changed = ImageOps.expand(crop, border=margin, fill=0).filter(pen)
    box = changed.getbbox()
    return crop if box is None else changed.crop(box)


def _scale_into_box(crop: Image.Image) -> np.ndarray:
    """Longer side -> 20 px, aspect kept; Pillow's filters anti-alias when shrinking."""
    width, height = crop.size
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = crop.convert("F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, None)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste into 28x28 with the centre of mass at MNIST's centre, keeping the box inside."""
    height, width = digit.shape
    total = digit.sum()
    centre_row = float(digit.sum(axis=1) @ np.arange(height)) / total
    centre_col = float(digit.sum(axis=0) @ np.arange(width)) / total
    top = _clamp(round(CENTRE_OF_MASS - centre_row), MNIST_SIZE - height)
    left = _clamp(round(CENTRE_OF_MASS - centre_col), MNIST_SIZE - width)
    canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    canvas[top : top + height, left : left + width] = np.rint(np.clip(digit, 0, 255))
    return canvas


def _clamp(value: int, upper: int) -> int:
    return min(max(value, 0), upper)
