"""Out-of-distribution image sets, built offline from files that installed packages ship.

Each set is a list of encoded image files (PNG or JPEG bytes), made to be sent through
the same real-image path as a user's upload (:func:`fmnist.images.load_for_model`): a
score is judged on what an upload turns into, not on raw arrays. The sets:

- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits;
- ``photo crops``: square crops of scikit-learn's two sample photos (a temple, a flower);
- ``portrait crops``: crops of Matplotlib's sample portrait (a person, as users upload);
- ``text``: lines of printed text, drawn with Pillow's bundled font;
- ``uniform noise``, ``gaussian noise``, ``solid``, ``gradient``: synthetic images.

Fashion-MNIST images are never an out-of-distribution set. Needs scikit-learn and
Matplotlib (the train extra).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SETS = ("digits", "photo crops", "portrait crops", "text", "uniform noise", "gaussian noise",
        "solid", "gradient")
WORDS = ("the quick brown fox jumps over the lazy dog invoice total due page chapter one "
         "meeting notes tuesday 42 model accuracy figure table results abstract").split()


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 (H, W) or (H, W, 3) array -> the bytes of an image file."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[bytes]:
    height, width = photo.shape[:2]
    files = []
    for _ in range(count):
        side = int(rng.integers(48, min(height, width) // 2))
        top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        files.append(encode(photo[top:top + side, left:left + side], "JPEG"))
    return files


def _text(count: int, rng: np.random.Generator) -> list[bytes]:
    font = ImageFont.load_default()
    files = []
    for _ in range(count):
        lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
                 for _ in range(int(rng.integers(1, 6)))]
        canvas = Image.new("L", (220, 16 * len(lines) + 8), 255)
        draw = ImageDraw.Draw(canvas)
        for row, line in enumerate(lines):
            draw.text((4, 4 + 16 * row), line, fill=0, font=font)
        files.append(encode(np.asarray(canvas)))
    return files


def build(name: str, count: int = 500, seed: int = 0) -> list[bytes]:
    """The image files of set ``name`` (at most ``count``), the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits().images[:count]  # float (N, 8, 8), 0..16, ink high
        return [encode(np.clip(image * 16, 0, 255)) for image in digits]
    if name == "photo crops":
        from sklearn.datasets import load_sample_images

        photos = load_sample_images().images
        return [crop for index, photo in enumerate(photos)
                for crop in _crops(photo, count // len(photos) + (index < count % len(photos)), rng)]
    if name == "portrait crops":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return _crops(np.asarray(Image.open(path).convert("RGB")), count, rng)
    if name == "text":
        return _text(count, rng)
    if name == "uniform noise":
        return [encode(rng.integers(0, 256, (int(s), int(s)), dtype=np.uint8))
                for s in rng.integers(28, 128, count)]
    if name == "gaussian noise":
        return [encode(np.clip(rng.normal(128, 64, (int(s), int(s))), 0, 255))
                for s in rng.integers(28, 128, count)]
    if name == "solid":
        return [encode(np.full((64, 64), level, np.uint8))
                for level in np.linspace(0, 255, min(count, 64))]
    if name == "gradient":
        files = []
        for _ in range(min(count, 200)):
            angle = rng.uniform(0, 2 * np.pi)
            y, x = np.mgrid[0:64, 0:64] / 63.0
            ramp = np.cos(angle) * x + np.sin(angle) * y
            ramp = (ramp - ramp.min()) / (np.ptp(ramp) or 1.0)
            files.append(encode(255 * ramp))
        return files
    raise ValueError(f"unknown out-of-distribution set {name!r}; choose one of {', '.join(SETS)}")


def uploads(images: np.ndarray) -> list[bytes]:
    """Fashion-MNIST images (uint8 (N, 28, 28)) as the PNG files a user would upload."""
    return [encode(image) for image in images]


def received(files: list[bytes]) -> np.ndarray:
    """Image files as the model sees them after the upload path: uint8 (N, 28, 28)."""
    from fmnist.images import load_for_model

    return np.stack([load_for_model(data, "upload").pixels for data in files])
