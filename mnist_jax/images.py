"""Image files to MNIST digits: any common mode and size in, 784 uint8 pixels out.

MNIST's convention: a white digit (high values) on black, its bounding box scaled to fit 20x20
keeping the aspect ratio, centred by its centre of mass in a 28x28 frame. Modes read:

- 1-bit, 8-bit and 16-bit greyscale (16-bit scaled by 1/65535, never clipped to 8 bits),
  32-bit integer and float greyscale, RGB, CMYK, YCbCr, palette (P), with or without alpha.
- Alpha: transparent pixels show a background. When the opaque pixels are a minority they are
  the drawing (a digit drawn in the alpha channel on a transparent canvas): the background
  is then the colour that contrasts with them. Otherwise the opaque picture is the content and
  transparent margins take its own background colour.
- A light background (median of the border > 1/2) is inverted, so dark ink on paper works.

Images larger than MAX_SIDE x MAX_SIDE pixels are refused before their pixels are decoded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_jax.errors import UserError
from mnist_jax.inputs import open_file

MAX_SIDE = 4096  # Largest width and height read (a 4096x4096 image decodes in ~0.5 s).
_MIN_CONTRAST = 32 / 255  # Ink weaker than this over the background is "no digit".


def load_image(path: str | Path) -> Image.Image:
    """Opens an image file fully decoded; a missing, unreadable or oversize one, or a path that
    is not a regular file (a FIFO, a directory), is a UserError naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings(), open_file(path) as f:  # Never a FIFO: it would block.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                w, h = img.size
                if w > MAX_SIDE or h > MAX_SIDE:
                    raise UserError(_too_big(path, w, h))
                img.load()
                return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError:
        raise UserError(
            f"{path}: image too large to decode safely; the limit is {_limit()}"
        ) from None
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not a readable image (unknown format)") from None
    except Exception as e:  # Decoders of damaged files raise many types (OSError, zlib...).
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})"[:300]) from None


def _limit() -> str:
    return f"{MAX_SIDE}x{MAX_SIDE} pixels"


def _too_big(path: Path, w: int, h: int) -> str:
    return f"{path}: image is {w}x{h} pixels; the limit is {_limit()}"


def grey_levels(img: Image.Image) -> np.ndarray:
    """The image as float32 grey levels in [0, 1] (alpha composited as the module says)."""
    mode = img.mode
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), np.float32) / 255
    if mode.startswith("I;16"):
        return np.asarray(img, np.float32) / 65535
    if mode in ("I", "F"):
        a = np.asarray(img, np.float32)
        top = float(a.max(initial=0))
        scale = 1.0 if mode == "F" and top <= 1 else 255.0 if top <= 255 else 65535.0
        return np.clip(a / scale, 0, 1)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if not has_alpha:
        return np.asarray(img.convert("L"), np.float32) / 255
    rgba = np.asarray(img.convert("RGBA"), np.float32) / 255
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    alpha = rgba[..., 3]
    opaque = alpha > 0.5
    if opaque.all() or not opaque.any():
        return lum if opaque.all() else np.zeros_like(lum)
    background = float(np.median(lum[opaque]))  # The opaque picture's dominant level.
    if opaque.mean() < 0.5:  # The opaque pixels are the drawing: show them on a contrast.
        background = 0.0 if background > 0.5 else 1.0
    return alpha * lum + (1 - alpha) * background


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def to_mnist(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """Grey levels in [0, 1] (any size) to 784 uint8 pixels as MNIST stores a digit."""
    grey = np.asarray(grey, np.float32)
    border = _border(grey)
    if np.median(border) > 0.5:  # Dark ink on a light background: make ink bright.
        grey, border = 1 - grey, 1 - border
    ink = np.clip(grey - np.median(border), 0, None)
    if ink.max(initial=0) < _MIN_CONTRAST:
        raise UserError(f"{name}: no digit found (the image is blank or has no contrast)")
    rows, cols = np.nonzero(ink > 0.2 * ink.max())
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] / ink.max()
    h, w = ink.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    box = np.asarray(Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
    frame = np.zeros((28, 28), np.float32)
    top, left = (28 - box.shape[0]) // 2, (28 - box.shape[1]) // 2
    frame[top : top + box.shape[0], left : left + box.shape[1]] = np.clip(box, 0, 1) * 255
    total = frame.sum()
    cy = (frame.sum(axis=1) * np.arange(28)).sum() / total
    cx = (frame.sum(axis=0) * np.arange(28)).sum() / total
    frame = np.roll(frame, (round(13.5 - cy), round(13.5 - cx)), axis=(0, 1))
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8).reshape(784)


def image_to_mnist(path: str | Path) -> np.ndarray:
    """Reads an image file and returns 784 uint8 pixels as MNIST would store the digit."""
    return to_mnist(grey_levels(load_image(path)), str(path))


def as_mnist(item: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """784 uint8 pixels from a file path, a PIL image, or an array: a (28, 28) or (784,) uint8
    array is taken as already in MNIST's form; any other 2-D array as grey levels (floats in
    [0, 1], or integers 0-255)."""
    if isinstance(item, (str, Path)):
        return image_to_mnist(item)
    if isinstance(item, Image.Image):
        return to_mnist(grey_levels(item))
    a = np.asarray(item)
    if a.dtype == np.uint8 and a.shape in ((28, 28), (784,)):
        return a.reshape(784)
    if a.ndim != 2:
        raise UserError(f"expected a 2-D grey image, got an array of shape {a.shape}")
    return to_mnist(a / 255 if a.dtype.kind in "iu" else a, "array")
