"""Where the model looked: occlusion saliency, for any engine (NumPy only).

A ``patch`` x ``patch`` square of the 28x28 input is set to background (0), one position
at a time with ``stride``; a pixel's saliency is the mean drop of the explained class's
probability over the occlusions that covered it, clipped at 0 and scaled so the largest
is 1 (a model that no occlusion moves gets all zeros). It needs only the model's
probabilities, so the ONNX engine of the core install explains as well as Keras.
With the defaults, one explanation is 169 occluded copies: one batch.
"""

from __future__ import annotations

import io

import numpy as np

PATCH, STRIDE = 6, 2


def occlusions(pixels: np.ndarray, patch: int = PATCH, stride: int = STRIDE):
    """The occluded copies float32 (M, 28, 28) of one uint8 (28, 28) image, and the
    boolean masks (M, 28, 28) of where each was blanked."""
    side = pixels.shape[0]
    starts = range(0, side - patch + 1, stride)
    masks = np.zeros((len(starts) ** 2, side, side), dtype=bool)
    for index, (top, left) in enumerate((t, l) for t in starts for l in starts):
        masks[index, top:top + patch, left:left + patch] = True
    copies = np.where(masks, 0.0, pixels[None].astype(np.float32)).astype(np.float32)
    return copies, masks


def occlusion_map(probabilities, pixels: np.ndarray, class_index: int, patch: int = PATCH,
                  stride: int = STRIDE) -> np.ndarray:
    """float32 (28, 28) in [0, 1]: how much each pixel's region supports ``class_index``.

    ``probabilities``: a function from float32 (M, 28, 28) pixels to (M, 10) probabilities
    (for example :meth:`fmnist.predict.Predictor.probabilities`).
    """
    pixels = np.asarray(pixels)
    copies, masks = occlusions(pixels, patch, stride)
    base = float(probabilities(pixels[None].astype(np.float32))[0, class_index])
    drops = base - np.asarray(probabilities(copies))[:, class_index]
    covered = masks.sum(axis=0)
    heat = (drops[:, None, None] * masks).sum(axis=0) / np.maximum(covered, 1)
    heat = np.clip(heat, 0.0, None)
    peak = float(heat.max())
    return (heat / peak if peak > 0 else heat).astype(np.float32)


def overlay_png(pixels: np.ndarray, heat: np.ndarray, scale: int = 8) -> bytes:
    """A PNG of the 28x28 input (gray) with ``heat`` (28, 28, [0, 1]) over it in red,
    ``scale`` times enlarged with square pixels."""
    from PIL import Image

    gray = np.asarray(pixels, np.float32)[..., None].repeat(3, axis=2) * 0.6
    red = np.zeros_like(gray)
    red[..., 0] = 255.0
    alpha = 0.75 * np.asarray(heat, np.float32)[..., None]
    blended = np.clip(gray * (1 - alpha) + red * alpha, 0, 255).astype(np.uint8)
    image = Image.fromarray(blended, mode="RGB").resize((28 * scale, 28 * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
