"""Image files for the hostile-input tests and the fuzzers' seed corpus, made with Pillow.

:func:`valid_files` is one small file of every format fmnist accepts in every mode Pillow
writes for it: the seed corpus atheris mutates (``python tests/fuzz/corpus.py DIR`` writes
it). :func:`crafted_files` are files built by someone who knows the formats: a real
signature with a broken body, hostile metadata, non-finite float pixels. Every one of them
must be answered with a 4xx (``expected_status`` says which), never a 5xx or a traceback.
Files a fuzzer found live in ``tests/fuzz/regressions/`` and are tested the same way.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

REGRESSIONS = Path(__file__).parent / "regressions"


def garment(side: int = 48, mode: str = "L") -> Image.Image:
    """A dark shirt-like shape on a white background (what a phone photo looks like)."""
    canvas = np.full((side, side), 255, np.uint8)
    quarter = side // 4
    canvas[quarter:side - quarter // 2, quarter:side - quarter] = 40
    canvas[quarter:quarter + side // 8, quarter // 2:side - quarter // 2] = 60
    return Image.fromarray(canvas, "L").convert(mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def valid_files() -> dict[str, bytes]:
    """name -> bytes: every accepted format in the modes Pillow writes for it."""
    base = garment()
    files: dict[str, bytes] = {}
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        files[f"png-{mode.replace(';', '')}.png"] = encode(base.convert(mode) if mode != "I;16"
                                                           else Image.fromarray(
                                                               np.asarray(base, np.uint16) * 257), "PNG")
    palette = base.convert("P")
    files["png-p-transparency.png"] = encode(palette, "PNG", transparency=0)
    files["png-interlaced.png"] = encode(base.convert("RGB"), "PNG", optimize=True)
    rgb = base.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: EXIF orientation 6
    files["png-exif.png"] = encode(rgb, "PNG", exif=exif.tobytes())
    for mode in ("L", "RGB", "CMYK"):
        files[f"jpeg-{mode}.jpg"] = encode(base.convert(mode), "JPEG", quality=90)
    files["jpeg-progressive.jpg"] = encode(rgb, "JPEG", progressive=True)
    files["jpeg-exif.jpg"] = encode(rgb, "JPEG", exif=exif.tobytes())
    files["gif.gif"] = encode(palette, "GIF")
    files["gif-animated.gif"] = encode(palette, "GIF", save_all=True,
                                       append_images=[base.rotate(90).convert("P")], duration=100)
    for mode in ("1", "L", "P", "RGB", "RGBA"):
        files[f"bmp-{mode}.bmp"] = encode(base.convert(mode), "BMP")
    for mode in ("1", "L", "RGB", "RGBA", "CMYK", "I;16", "I", "F"):
        image = base.convert(mode) if mode not in ("I;16", "F") else (
            Image.fromarray(np.asarray(base, np.uint16) * 257) if mode == "I;16"
            else Image.fromarray(np.asarray(base, np.float32) / 255))
        files[f"tiff-{mode.replace(';', '')}.tif"] = encode(image, "TIFF")
    files["tiff-lzw.tif"] = encode(rgb, "TIFF", compression="tiff_lzw")
    files["tiff-multipage.tif"] = encode(rgb, "TIFF", save_all=True, append_images=[rgb.rotate(90)])
    files["webp-lossy.webp"] = encode(rgb, "WEBP", quality=80)
    files["webp-lossless-rgba.webp"] = encode(base.convert("RGBA"), "WEBP", lossless=True)
    files["pbm.pbm"] = encode(base.convert("1"), "PPM")
    files["pgm.pgm"] = encode(base, "PPM")
    files["ppm.ppm"] = encode(rgb, "PPM")
    files["pgm-16bit.pgm"] = encode(Image.fromarray(np.asarray(base, np.uint16) * 257), "PPM")
    files["pfm.pfm"] = encode(Image.fromarray(np.asarray(base, np.float32)), "PPM")
    return files


def _png_chunk(kind: bytes, payload: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png(width: int, height: int, chunks: list[bytes], depth: int = 8, color: int = 0,
         rows: bytes | None = None) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    if rows is None:
        rows = b"".join(b"\x00" + b"\xff" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + b"".join(chunks) +
            _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def _float_file(values: np.ndarray, fmt: str) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), "F"), fmt)


def crafted_files() -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, the status fmnist must answer: 413, 415 or 422)."""
    valid = valid_files()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    noise_png = encode(Image.fromarray(noise), "PNG")
    png, jpeg = valid["png-L.png"], valid["jpeg-RGB.jpg"]
    gif, bmp, tiff, webp = (valid["gif.gif"], valid["bmp-RGB.bmp"], valid["tiff-RGB.tif"],
                            valid["webp-lossy.webp"])
    nan = np.full((8, 8), 100.0, np.float32)
    nan[3, 3] = np.nan
    inf = np.full((8, 8), 100.0, np.float32)
    inf[2, 5] = np.inf
    big_icc = np.random.default_rng(0).integers(0, 256, 2_000_000, dtype=np.uint8).tobytes()
    files = {
        # A real signature, then a body cut short or broken.
        "png-cut-in-ihdr.png": (png[:20], 422),
        "png-cut-after-ihdr.png": (png[:33], 422),
        "png-cut-in-idat.png": (noise_png[:len(noise_png) // 2], 422),
        "png-bad-crc.png": (_png(8, 8, [_png_chunk(b"tEXt", b"k\x00v", crc=1)]), 422),
        "png-zero-width.png": (_png(0, 8, []), 422),
        "png-bad-depth.png": (_png(8, 8, [], depth=3), 422),
        "png-idat-too-short.png": (_png(64, 64, [], rows=b"\x00\xff" * 10), 422),
        "png-idat-not-zlib.png": (png[:33] + _png_chunk(b"IDAT", b"not zlib at all") +
                                  _png_chunk(b"IEND", b""), 422),
        "png-2mb-icc-profile.png": (_png(8, 8, [_png_chunk(b"iCCP", b"icc\x00\x00" +
                                                           zlib.compress(big_icc))]), 422),
        "png-exif-not-tiff.png": (_png(8, 8, [_png_chunk(b"eXIf", b"this is not TIFF" * 4)]), 422),
        "png-exif-bad-orientation.png": (_png(8, 8, [_png_chunk(
            b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x63"
                     b"\x00\x00\x00\x00\x00\x00")]), 200),
        "png-ztxt-bomb.png": (_png(8, 8, [_png_chunk(b"zTXt", b"k\x00\x00" +
                                                     zlib.compress(b"\x00" * 50_000_000))]), 422),
        "png-huge-header.png": (_png(50_000, 50_000, [], rows=b""), 413),
        "png-8000x6000-header.png": (_png(8_000, 6_000, [], rows=b""), 413),
        "jpeg-cut-short.jpg": (jpeg[:len(jpeg) // 3], 422),
        "jpeg-header-only.jpg": (jpeg[:160], 422),
        "jpeg-soi-only.jpg": (b"\xff\xd8\xff", 422),
        "jpeg-exif-garbage.jpg": (b"\xff\xd8\xff\xe1\x00\x20Exif\x00\x00" + b"\x07" * 26 + jpeg[2:], 200),
        "jpeg-zero-size.jpg": (jpeg.replace(b"\xff\xc0\x00\x11\x08\x00\x30\x00\x30",
                                            b"\xff\xc0\x00\x11\x08\x00\x00\x00\x30"), 422),
        "ppm-non-numeric-size.ppm": (b"P5\nab cd\n255\n" + b"\x00" * 64, 422),
        "ppm-maxval-zero.pgm": (b"P5\n4 4\n0\n" + b"\x00" * 16, 422),
        "ppm-maxval-huge.pgm": (b"P5\n4 4\n99999999\n" + b"\x00" * 64, 422),
        "ppm-negative-size.pgm": (b"P5\n-4 4\n255\n" + b"\x00" * 16, 422),
        "ppm-cut-short.ppm": (b"P6\n100 100\n255\n" + b"\x00" * 10, 422),
        "ppm-plain-garbage.pgm": (b"P2\n2 2\n255\n1 x 3 4\n", 422),
        "pfm-nan.pfm": (_float_file(nan, "PPM"), 422),
        "pfm-infinity.pfm": (_float_file(inf, "PPM"), 422),
        "pfm-bad-scale.pfm": (b"Pf\n2 2\nabc\n" + b"\x00" * 16, 422),
        "tiff-float-nan.tif": (_float_file(nan, "TIFF"), 422),
        "tiff-float-infinity.tif": (_float_file(inf, "TIFF"), 422),
        "tiff-signature-junk.tif": (b"II*\x00" + b"\xee" * 60, 422),
        "tiff-bad-ifd-offset.tif": (b"II*\x00\xff\xff\xff\x7f" + b"\x00" * 32, 422),
        "tiff-cut-short.tif": (tiff[:len(tiff) // 2], 422),
        "bmp-signature-junk.bmp": (b"BM" + b"\xee" * 60, 422),
        "bmp-cut-short.bmp": (bmp[:len(bmp) // 2], 422),
        "bmp-header-only.bmp": (bmp[:54], 422),
        "bmp-bad-bit-depth.bmp": (bmp[:28] + b"\x07\x00" + bmp[30:], 422),
        "webp-signature-junk.webp": (b"RIFF\x40\x00\x00\x00WEBPVP8 " + b"\xee" * 60, 422),
        "webp-cut-short.webp": (webp[:len(webp) // 2], 422),
        "webp-riff-only.webp": (b"RIFF\x04\x00\x00\x00WEBP", 422),
        "gif-signature-junk.gif": (b"GIF89a" + b"\xee" * 60, 422),
        "gif-cut-short.gif": (gif[:len(gif) // 2], 422),
        "gif-zero-screen.gif": (b"GIF89a\x00\x00\x00\x00\x00\x00\x00;", 422),
        # Not an image format fmnist accepts.
        "empty.png": (b"", 415),
        "one-byte.jpg": (b"\xff", 415),
        "text.png": (b"hello, world\n" * 10, 415),
        "svg.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415),
    }
    return files


def regression_files() -> dict[str, bytes]:
    """Inputs the fuzzers once crashed on (tests/fuzz/regressions/)."""
    return {path.name: path.read_bytes() for path in sorted(REGRESSIONS.glob("*"))
            if path.is_file() and path.name != "README.md"}


def write_seed_corpus(directory: Path) -> int:
    """Write :func:`valid_files` into ``directory``; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    files = valid_files()
    for name, payload in files.items():
        (directory / name).write_bytes(payload)
    return len(files)


if __name__ == "__main__":
    count = write_seed_corpus(Path(sys.argv[1]))
    print(f"wrote {count} seed files to {sys.argv[1]}")
