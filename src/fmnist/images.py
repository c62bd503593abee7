"""Real image files -> 28x28 uint8 inputs in Fashion-MNIST's conventions.

Fashion-MNIST was made from product photos (garments dark or coloured on a white
background) by trimming the background, resizing the longest edge to 28 pixels, centring
on a 28x28 canvas and negating: light garments on a black background. A phone photo or a
scanned drawing has to go through the same steps, or the model sees something it never
trained on. :func:`to_fashion_mnist` does that with Pillow and NumPy only.

Decoding is guarded: only the formats in :data:`FORMATS` are opened, dimensions are
checked from the header before any pixel is decoded (:data:`MAX_PIXELS`), and Pillow's
decompression-bomb check stays on.
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
# After stretching (background 0, brightest 255), pixels above this belong to the object.
# Low enough to keep faint edges (Fashion-MNIST objects span the full 28 pixels even at
# level 0), high enough to ignore JPEG ringing and paper texture.
OBJECT_LEVEL = 20.0


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
    """Decode ``source`` (a path, bytes, a binary file or a PIL image) into a loaded PIL image.

    Raises :class:`ImageInputError`: 415 for something that is not an image in
    :data:`FORMATS`, 413 for more than ``max_pixels`` pixels, 422 for a corrupt file.
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{path}: no such file; check the path", status=404)
    try:
        image = Image.open(source, formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageInputError(f"{name}: not an image in a supported format "
                              f"({', '.join(FORMATS)}); send a PNG or JPEG", status=415) from None
    except Image.DecompressionBombError as error:
        raise ImageInputError(f"{name}: {error}", status=413) from None
    width, height = image.size
    if width * height > max_pixels or width == 0 or height == 0:
        raise ImageInputError(f"{name}: {width}x{height} pixels is outside the accepted "
                              f"1..{max_pixels:,} pixels; send a smaller image", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()  # decodes the first frame of an animation only
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as error:
        raise ImageInputError(f"{name}: the {image.format} data is corrupt or truncated "
                              f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
                              "; re-save the image and try again") from None
    return image


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


def to_fashion_mnist(image: Image.Image) -> Processed:
    """A decoded PIL image -> :class:`Processed` (28x28 uint8, light object on black).

    Steps: EXIF orientation; grayscale (see :func:`to_grayscale`); negate if the border is
    light; stretch so the background is 0 and the brightest pixel 255; crop to the pixels
    clearly above the background; resize the longest edge to 28 (Lanczos, aspect kept);
    centre on a black 28x28 canvas.
    """
    image = ImageOps.exif_transpose(image)
    gray = to_grayscale(image)
    border = float(np.median(_border(gray)))
    inverted = border > 127.5
    if inverted:
        gray = 255.0 - gray
    background = 255.0 - border if inverted else border  # the median negates with the image
    peak = float(gray.max())
    if peak - background < 1.0:  # a blank image: nothing to find, nothing to stretch
        return Processed(np.zeros((SIDE, SIDE), np.uint8), inverted, (0, 0, *image.size))
    gray = np.clip((gray - background) * (255.0 / (peak - background)), 0.0, 255.0)
    rows, cols = np.nonzero(gray > OBJECT_LEVEL)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = Image.fromarray(gray[top:bottom, left:right].astype(np.uint8), mode="L")
    scale = SIDE / max(crop.size)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    crop = crop.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(crop, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    return Processed(np.asarray(canvas, dtype=np.uint8).copy(), inverted,
                     (int(left), int(top), int(right), int(bottom)))


def load_for_model(source, name: str = "image", max_pixels: int = MAX_PIXELS) -> Processed:
    """Open and convert in one step: :func:`open_image` then :func:`to_fashion_mnist`."""
    return to_fashion_mnist(open_image(source, name, max_pixels))
