"""Real image files -> 28x28 inputs in Fashion-MNIST's conventions (fmnist.images)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fmnist.images import ImageInputError, Processed, load_for_model, open_image, to_fashion_mnist


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def as_photo(garment: np.ndarray, scale: int = 12, margin=(50, 30)) -> Image.Image:
    """A Fashion-MNIST image as a product photo: dark on white, large, with margins, RGB."""
    big = Image.fromarray(255 - garment).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (28 * scale + 2 * margin[0], 28 * scale + 2 * margin[1]), 255)
    canvas.paste(big, margin)
    return Image.merge("RGB", [canvas] * 3)


def garment() -> np.ndarray:
    """A synthetic light 'garment' on black, off-centre, spanning 12x18 pixels of 28x28."""
    image = np.zeros((28, 28), np.uint8)
    image[4:22, 6:18] = 200
    image[4:8, 2:22] = 160  # sleeves: a T shape, so rotations are visible
    return image


def test_output_is_28x28_uint8_light_on_black():
    processed = load_for_model(encode(as_photo(garment())))
    assert isinstance(processed, Processed)
    assert processed.pixels.shape == (28, 28) and processed.pixels.dtype == np.uint8
    assert processed.inverted
    border = np.concatenate([processed.pixels[0], processed.pixels[-1]])
    assert border.max() < 30 and processed.pixels.max() > 200


def test_object_is_cropped_fitted_and_centred():
    image = np.zeros((200, 300), np.uint8)
    image[20:60, 200:280] = 255  # an 80x40 object in a corner of a large dark image
    pixels = to_fashion_mnist(Image.fromarray(image)).pixels
    rows, cols = np.nonzero(pixels > 127)
    assert cols.min() == 0 and cols.max() == 27  # longest edge fills the canvas
    assert 6 <= rows.min() <= 8 and 20 <= rows.max() <= 21  # 14 rows, centred vertically


@pytest.mark.realdata
def test_a_large_dark_on_white_jpeg_is_classified_like_the_original(trained_run, test_images):
    from fmnist.predict import Predictor

    predictor = Predictor.load(trained_run)
    x, _ = test_images
    originals = predictor.probabilities(x[:200]).argmax(1)
    photos = [encode(as_photo(image), "JPEG", quality=90) for image in x[:200]]
    processed = np.stack([load_for_model(photo).pixels for photo in photos])
    assert np.abs(processed.astype(int) - x[:200]).mean() < 20  # of 255: close to the original
    assert (predictor.probabilities(processed).argmax(1) == originals).mean() >= 0.9


def test_transparent_background_counts_as_background():
    on_white = Image.fromarray(255 - garment()).convert("RGB")
    alpha = Image.fromarray(np.where(garment() > 0, 255, 0).astype(np.uint8))
    dark_on_clear = Image.fromarray(255 - garment()).convert("RGBA")
    dark_on_clear.putalpha(alpha)
    light_on_clear = Image.fromarray(garment()).convert("RGBA")
    light_on_clear.putalpha(alpha)
    expected = to_fashion_mnist(on_white).pixels
    for image in (dark_on_clear, light_on_clear):
        got = load_for_model(encode(image)).pixels
        assert np.abs(got.astype(int) - expected).max() <= 2


def test_palette_images_with_and_without_transparency():
    gray = Image.fromarray(255 - garment())
    expected = to_fashion_mnist(gray).pixels
    palette = gray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert np.abs(load_for_model(encode(palette)).pixels.astype(int) - expected).max() <= 2
    transparent = palette.copy()
    transparent.info["transparency"] = int(np.asarray(palette)[0, 0])  # the white background
    gif = load_for_model(encode(transparent, "GIF", transparency=transparent.info["transparency"]))
    assert np.abs(gif.pixels.astype(int) - expected).max() <= 2


def test_16_bit_grayscale_is_scaled_not_clipped():
    eight = Image.fromarray(255 - garment())
    sixteen = Image.fromarray((255 - garment()).astype(np.uint16) * 257)  # mode I;16
    assert sixteen.mode == "I;16"
    expected = to_fashion_mnist(eight).pixels
    assert np.array_equal(load_for_model(encode(sixteen)).pixels, expected)


def test_exif_orientation_is_applied():
    upright = as_photo(garment(), scale=4)
    # A camera stores the sensor's pixels and an Orientation tag; 6 means "rotate 90 CW to view".
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    from_camera = load_for_model(encode(stored, "JPEG", quality=95, exif=exif.tobytes())).pixels
    expected = load_for_model(encode(upright, "JPEG", quality=95)).pixels
    assert np.abs(from_camera.astype(int) - expected).mean() < 3
    ignored = load_for_model(encode(stored, "JPEG", quality=95)).pixels
    assert np.abs(ignored.astype(int) - expected).mean() > 20  # the tag made the difference


def test_a_blank_image_gives_a_black_input():
    processed = load_for_model(encode(Image.new("RGB", (64, 64), "white")))
    assert not processed.pixels.any()


@pytest.mark.parametrize("payload, status", [
    (b"just some text, not an image", 415),
    (b"%PDF-1.7\n%...", 415),
    # A PNG signature with garbage after it: a broken PNG, not an unsupported format.
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422),
])
def test_non_images_get_415_and_broken_ones_422(payload, status):
    with pytest.raises(ImageInputError) as raised:
        open_image(payload, "upload.bin")
    assert raised.value.status == status and "upload.bin" in str(raised.value)
    assert "0x" not in str(raised.value), "no object addresses in messages"


def test_a_truncated_image_is_refused_with_422():
    data = encode(as_photo(garment()), "PNG")
    with pytest.raises(ImageInputError) as raised:
        load_for_model(data[: len(data) // 2], "half.png")
    assert raised.value.status == 422 and "corrupt or truncated" in str(raised.value)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with one tiny (invalid) data chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) \
        + chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_from_the_header_before_decoding():
    with pytest.raises(ImageInputError) as raised:
        open_image(png_header_only(30_000, 30_000), "bomb.png")  # 900 MP: Pillow's bomb guard
    assert raised.value.status == 413
    with pytest.raises(ImageInputError) as raised:
        open_image(png_header_only(8_000, 6_000), "big.png")  # 48 MP: over our 40 MP cap
    assert raised.value.status == 413 and "8000x6000" in str(raised.value)
    with pytest.raises(ImageInputError) as raised:
        open_image(encode(Image.new("L", (100, 100))), "small.png", max_pixels=9_999)
    assert raised.value.status == 413


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_either_convert_or_raise_a_clear_error(payload):
    try:
        processed = load_for_model(payload)
    except ImageInputError as error:
        assert error.status in (413, 415, 422)
    else:
        assert processed.pixels.shape == (28, 28) and processed.pixels.dtype == np.uint8


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F", "I;16"]),
       st.integers(1, 60), st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_every_mode_and_size_converts(mode, width, height, seed):
    noise = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    image = Image.fromarray(noise).convert(mode)
    processed = to_fashion_mnist(image)
    assert processed.pixels.shape == (28, 28) and processed.pixels.dtype == np.uint8
