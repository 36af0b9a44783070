"""Predict digits with a trained run: images of any size, or rows of a CSV file.

    python -m mnist_jax.predict --workdir=runs/dnn digit.png photo.jpg ...
    python -m mnist_jax.predict --workdir=runs/dnn --csv=mnist_test.csv

Images are converted the MNIST way: greyscale; ink as high values (a light background is
inverted); the digit's bounding box scaled to fit 20x20 keeping its aspect ratio; placed in a
28x28 frame with its centre of mass at the centre. A file that cannot be read is one error line
and the others are still predicted; the exit status is then 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import flags

from mnist_jax import cli, data as data_lib
from mnist_jax.errors import UserError


def image_to_mnist(path: str | Path) -> np.ndarray:
    """Reads an image file and returns 784 uint8 pixels as MNIST would store the digit."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            grey = np.asarray(ImageOps.exif_transpose(img).convert("L"), dtype=np.float64)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # Dark ink on a light background: make ink bright.
        grey, border = 255 - grey, 255 - border
    ink = np.clip(grey - np.median(border), 0, None)
    if ink.max() < 32:
        raise UserError(f"{path}: no digit found (the image is blank or has no contrast)")
    rows, cols = np.nonzero(ink > 0.2 * ink.max())
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    ink = ink * (255.0 / ink.max())
    h, w = ink.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    box = Image.fromarray(ink.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    box = np.asarray(box, dtype=np.float64)
    frame = np.zeros((28, 28))
    top, left = (28 - box.shape[0]) // 2, (28 - box.shape[1]) // 2
    frame[top : top + box.shape[0], left : left + box.shape[1]] = box
    total = frame.sum()
    cy = (frame.sum(axis=1) * np.arange(28)).sum() / total
    cx = (frame.sum(axis=0) * np.arange(28)).sum() / total
    frame = np.roll(frame, (round(13.5 - cy), round(13.5 - cx)), axis=(0, 1))
    return np.clip(frame, 0, 255).astype(np.uint8).reshape(784)


def format_probs(probs: np.ndarray) -> str:
    return " ".join(f"{k}:{p:.3f}" for k, p in enumerate(probs))


_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's directory.")
_CSV = flags.DEFINE_string("csv", None, "A CSV file of rows 'label,784 pixels' to predict.")


def main(argv: list[str]) -> int:
    from mnist_jax import evaluate

    paths = argv[1:]
    if not _WORKDIR.value or not (paths or _CSV.value):
        raise UserError("usage: python -m mnist_jax.predict --workdir=RUN IMAGE... | --csv=FILE")
    model, params, _ = evaluate.restore_model(_WORKDIR.value)
    failures = 0
    if _CSV.value:
        rows = data_lib.read_csv(_CSV.value)
        probs = evaluate.predict_probs(model, params, rows.images)
        for i, (label, p) in enumerate(zip(rows.labels, probs, strict=True)):
            print(f"row {i + 1}: {p.argmax()} (label {label})  {format_probs(p)}")
        print(f"accuracy {np.mean(probs.argmax(1) == rows.labels):.4f} on {len(rows)} rows")
    images, names = [], []
    for path in paths:
        try:
            images.append(image_to_mnist(path))
            names.append(path)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
    if images:
        for name, p in zip(
            names, evaluate.predict_probs(model, params, np.stack(images)), strict=True
        ):
            print(f"{name}: {p.argmax()}  {format_probs(p)}")
    return 1 if failures else 0


if __name__ == "__main__":
    cli.run(main)
