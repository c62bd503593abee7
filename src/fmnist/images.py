"""Real image files -> 28x28 uint8 inputs in Fashion-MNIST's conventions.

Fashion-MNIST was made from product photos (garments dark or coloured on a white
background) by trimming the background, resizing the longest edge to 28 pixels, centring
on a 28x28 canvas and negating: light garments on a black background. A phone photo or a
scanned drawing has to go through the same steps, or the model sees something it never
trained on. :func:`to_fashion_mnist` does that with Pillow and NumPy only.

Decoding is guarded: only the formats in :data:`FORMATS` are opened, dimensions are
checked from the header before any pixel is decoded (:data:`MAX_PIXELS`), big images are
reduced while decoding (:data:`WORK_SIDE`), Pillow's decompression-bomb check stays on,
and whatever Pillow raises for a malformed file becomes an :class:`ImageInputError`.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.errors import FmnistError

SIDE = 28
# Formats a browser, a phone or a scanner produces; everything else is refused (415).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# 40 megapixels: a large phone photo decodes to ~160 MB as RGBA; anything bigger is refused
# from its header, before decoding.
MAX_PIXELS = 40_000_000
# Images are reduced while decoding to at most this many pixels a side: the object ends up
# 28 pixels wide, and a 6000x6000 upload would otherwise become 144 MB of float32.
WORK_SIDE = 1024
# After stretching (background 0, brightest 255), pixels above this belong to the object.
# Low enough to keep faint edges (Fashion-MNIST objects span the full 28 pixels even at
# level 0), high enough to ignore JPEG ringing and paper texture.
OBJECT_LEVEL = 20.0
# The first bytes of each accepted format: a file that starts like one but that Pillow
# cannot identify is a corrupt file of that format (422), not an unsupported one (415).
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
              (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
              (b"P1", "PPM"), (b"P2", "PPM"), (b"P3", "PPM"), (b"P4", "PPM"), (b"P5", "PPM"),
              (b"P6", "PPM"), (b"Pf", "PPM"), (b"PF", "PPM"))


class ImageInputError(FmnistError):
    """An input that cannot be turned into a 28x28 image; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Processed:
    """One image in the dataset's conventions.

    ``pixels``: uint8 array of shape (28, 28), light object on black, what the model sees.
    ``inverted``: whether the source had a light background and was negated.
    ``box``: (left, top, right, bottom) of the object in the source image, after EXIF rotation.
    """

    pixels: np.ndarray
    inverted: bool
    box: tuple[int, int, int, int]


def open_image(source, name: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``source`` (a path, bytes, a binary file or a PIL image), reading its header only.

    Nothing is decoded yet, so the size (``image.size``) can be checked, and summed over a
    request, before any pixel costs memory; :func:`decode_gray` decodes.

    Raises :class:`ImageInputError`: 404 for a missing path, 415 for something that is not
    an image in :data:`FORMATS`, 413 for more than ``max_pixels`` pixels, 422 for a header
    Pillow cannot parse.
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{path}: no such file; check the path", status=404)
        try:  # read here, so a file-system error is told apart from a corrupt image
            source = io.BytesIO(path.read_bytes())
        except OSError as error:
            raise ImageInputError(f"{name}: cannot be read ({error.strerror or error}); "
                                  "check its permissions") from None
    try:
        # Pillow warns (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that,
        # and raises beyond; max_pixels, checked below, is far under both.
        image = Image.open(source, formats=FORMATS)
        width, height = image.size
    except UnidentifiedImageError:
        claimed = _claimed_format(source)
        if claimed:
            raise _corrupt(name, claimed, "no decoder of Pillow accepts it") from None
        raise ImageInputError(f"{name}: not an image in a supported format "
                              f"({', '.join(FORMATS)}); send a PNG or JPEG", status=415) from None
    except Image.DecompressionBombError as error:
        raise ImageInputError(f"{name}: {_first_line(error)}; send a smaller image", status=413) from None
    except Exception as error:  # noqa: BLE001 -- the decoding boundary, see _corrupt
        raise _corrupt(name, None, error) from None
    if width * height > max_pixels or width <= 0 or height <= 0:
        raise ImageInputError(f"{name}: {width}x{height} pixels is outside the accepted "
                              f"1..{max_pixels:,} pixels; send a smaller image", status=413)
    return image


def quiet_pillow_warnings() -> None:
    """Silence Pillow's warnings about odd metadata ("Corrupt EXIF data", ...): noise in a
    user's terminal or a server log, where the 4xx already says what is wrong. Called by
    `fmnist predict` and `fmnist serve` at start-up, not on import; a filter per call
    (``warnings.catch_warnings``) cost more than decoding a 28x28 PNG."""
    warnings.filterwarnings("ignore", module=r"PIL\.")


def _claimed_format(stream) -> str | None:
    """The format whose signature ``stream`` (a seekable binary file) starts with, if any."""
    try:
        stream.seek(0)
        head = stream.read(12)
    except (AttributeError, OSError, ValueError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for signature, fmt in SIGNATURES if head.startswith(signature)), None)


def pixel_count(image: Image.Image) -> int:
    """Pixels of the (first) frame from the header: what decoding ``image`` will allocate for."""
    width, height = image.size
    return width * height


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _corrupt(name: str, image_format: str | None, error: BaseException | str) -> ImageInputError:
    """The 422 for a file Pillow fails on, whatever it raised.

    Pillow's plugins raise OSError, ValueError, SyntaxError, struct.error, EOFError,
    IndexError, KeyError, TypeError, ZeroDivisionError or MemoryError for malformed
    files, varying by format and version. Only Pillow calls on one file's bytes are
    wrapped like this (:func:`open_image` and :func:`decode_gray`), so a bug in fmnist's
    own code still surfaces as an error of its own.
    """
    what = f"the {image_format} data" if image_format else "the file"
    why = error if isinstance(error, str) else _first_line(error)
    return ImageInputError(f"{name}: {what} is corrupt or truncated ({why}); "
                           "re-save the image and try again")


def decode_gray(image: Image.Image, name: str = "image", work_side: int = WORK_SIDE) -> np.ndarray:
    """Decode an opened image to float32 (H, W) grayscale in [0, 255], EXIF orientation applied.

    Images with a side over ``work_side`` are reduced while decoding: a JPEG decodes at
    1/2, 1/4 or 1/8 scale (Pillow's ``draft``), other formats are box-reduced by an integer
    factor in their own mode before any float copy exists, so a 40 MP photo never costs
    40 MP of float32. Every Pillow failure becomes a 422 naming the file; non-finite float
    pixels (TIFF or PFM holding NaN or infinity) are a 422 too.
    """
    try:
        if image.format == "JPEG" and max(image.size) > work_side:
            image.draft(None, (work_side, work_side))
        image.load()  # decodes the first frame of an animation only
        image = ImageOps.exif_transpose(image)
        image = _reduce(image, work_side)
        gray = to_grayscale(image)
    except Exception as error:  # noqa: BLE001 -- the decoding boundary, see _corrupt
        raise _corrupt(name, image.format, error) from None
    if image.mode == "F" and not np.isfinite(gray).all():  # only float images hold NaN
        raise ImageInputError(f"{name}: the image holds NaN or infinite pixel values; "
                              "send finite values")
    return gray


def _reduce(image: Image.Image, work_side: int) -> Image.Image:
    """``image`` box-reduced by the smallest integer factor that fits ``work_side``."""
    factor = -(-max(image.size) // work_side)
    if factor <= 1:
        return image
    # reduce() works per channel: palette indices and 1-bit or 16-bit data need a mode
    # whose values can be averaged first.
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.reduce(factor)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 array (H, W) in [0, 255], with transparency flattened.

    Transparent areas become background: they are filled with the opposite of the opaque
    content's mean brightness, so the object stands out whichever way round it is drawn.
    16- and 32-bit images are scaled by their range, not clipped.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            return (values / 65535.0 * 255.0).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite values: see decode_gray
            low, high = float(values.min()), float(values.max())
            scale = 255.0 / (high - low) if high > low else 0.0
            return ((values - low) * scale).astype(np.float32)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info) or (
        image.mode in ("L", "RGB") and "transparency" in image.info)
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32)
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    gray = np.asarray(rgba.convert("L"), dtype=np.float32)
    opaque = alpha > 0.5
    content = float(gray[opaque].mean()) if opaque.any() else 0.0
    background = 255.0 if content < 128 else 0.0
    return gray * alpha + background * (1.0 - alpha)


def _border(gray: np.ndarray) -> np.ndarray:
    """The pixels of the outermost frame, two pixels wide (or all, for tiny images)."""
    if min(gray.shape) <= 4:
        return gray.ravel()
    return np.concatenate([gray[:2].ravel(), gray[-2:].ravel(), gray[2:-2, :2].ravel(),
                           gray[2:-2, -2:].ravel()])


def to_fashion_mnist(image: Image.Image, name: str = "image") -> Processed:
    """An opened PIL image -> :class:`Processed` (28x28 uint8, light object on black).

    Steps: decode (see :func:`decode_gray`: EXIF orientation, reduction of big images,
    grayscale with transparency flattened); negate if the border is light; stretch so the
    background is 0 and the brightest pixel 255; crop to the pixels clearly above the
    background; resize the longest edge to 28 (Lanczos, aspect kept); centre on a black
    28x28 canvas.
    """
    width, height = image.size
    gray = decode_gray(image, name)
    if gray.shape[0] > gray.shape[1] and width > height or gray.shape[0] < gray.shape[1] and width < height:
        width, height = height, width  # EXIF rotated it by 90 degrees
    return fit(gray, scale=(width / gray.shape[1], height / gray.shape[0]))


def fit(gray: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> Processed:
    """float32 (H, W) grayscale in [0, 255] -> :class:`Processed` (the steps after decoding).

    ``scale``: source pixels per ``gray`` pixel (x, y), to report the box in source pixels.
    """
    border = float(np.median(_border(gray)))
    inverted = border > 127.5
    if inverted:
        gray = 255.0 - gray
    background = 255.0 - border if inverted else border  # the median negates with the image
    peak = float(gray.max())
    if peak - background < 1.0:  # a blank image: nothing to find, nothing to stretch
        return Processed(np.zeros((SIDE, SIDE), np.uint8), inverted,
                         (0, 0, round(gray.shape[1] * scale[0]), round(gray.shape[0] * scale[1])))
    gray = np.clip((gray - background) * (255.0 / (peak - background)), 0.0, 255.0)
    rows, cols = np.nonzero(gray > OBJECT_LEVEL)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = Image.fromarray(gray[top:bottom, left:right].astype(np.uint8), mode="L")
    fitted = SIDE / max(crop.size)
    size = (max(1, round(crop.width * fitted)), max(1, round(crop.height * fitted)))
    crop = crop.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(crop, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    box = (int(left), int(top), int(right), int(bottom))
    if scale != (1.0, 1.0):  # reduced while decoding: back to the source's pixels
        box = (round(box[0] * scale[0]), round(box[1] * scale[1]), round(box[2] * scale[0]),
               round(box[3] * scale[1]))
    return Processed(np.asarray(canvas, dtype=np.uint8).copy(), inverted, box)


def load_for_model(source, name: str = "image", max_pixels: int = MAX_PIXELS) -> Processed:
    """Open and convert in one step: :func:`open_image` then :func:`to_fashion_mnist`."""
    return to_fashion_mnist(open_image(source, name, max_pixels), name)
