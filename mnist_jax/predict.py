"""Predict digits with a trained run: image files of any common mode and size, or CSV rows.

    python -m mnist_jax.predict --workdir=runs/dnn digit.png photo.jpg ...
    python -m mnist_jax.predict --workdir=runs/dnn --csv=digits.csv

The run's own saved config and checkpoint give the model (`--config` is optional and only
checked against it). Images are converted the MNIST way (see `images.py`, which also names the
size cap). A CSV holds 784 pixel columns per row, optionally after a label column (785); the
accuracy is printed only when there are labels. A file that cannot be read is one `error:`
line and the other files are still predicted; the exit status is then 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mnist_jax import files, models
from mnist_jax.errors import UserError
from mnist_jax.images import MAX_SIDE, as_mnist, image_to_mnist  # noqa: F401  (re-exported)

NUM_PIXELS = 784


def format_probs(probs: np.ndarray, names: tuple[str, ...] | None = None) -> str:
    """'name:probability' of every class (names default to the class numbers)."""
    names = names or tuple(map(str, range(len(probs))))
    return " ".join(f"{names[k]}:{p:.3f}" for k, p in enumerate(probs))


def read_rows(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 (n, 784), labels int32 (n,) or None) from a comma-separated file of
    784 pixels per row, or a label (a class number, 0 to num_classes - 1) and 784 pixels. Rows
    are numbered from 1."""
    path = Path(path)
    raw = files.read_file(path, files.MAX_CSV_BYTES)  # Checked, bounded, gunzipped.
    try:
        text = raw.decode("utf-8-sig")  # A UTF-8 byte-order mark is accepted.
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected a CSV") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"{path}: empty CSV file")
    first = lines[0]
    if "," not in first:
        sep = "tab" if "\t" in first else "semicolon" if ";" in first else "no"
        raise UserError(f"{path}: row 1 has {sep} separators; expected comma-separated values")
    try:
        float(first.split(",")[0])
    except ValueError:
        head = first.split(",")[0].strip()[:20]
        raise UserError(f"{path}: row 1 starts with {head!r}: remove the header row") from None
    width = first.count(",") + 1
    if width not in (NUM_PIXELS, NUM_PIXELS + 1):
        raise UserError(
            f"{path}: row 1 has {width} columns; expected 784 pixels or a label and 784 pixels"
        )
    for n, line in enumerate(lines, 1):
        if line.count(",") + 1 != width:
            raise UserError(f"{path}: row {n} has {line.count(',') + 1} columns, row 1 {width}")
    try:
        table = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise UserError(f"{path}: {str(e).splitlines()[0][:200]}") from None
    labels = table[:, 0] if width == NUM_PIXELS + 1 else None
    pixels = table[:, 1:] if labels is not None else table
    if labels is not None:
        top = num_classes - 1
        bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0) | (labels > top))
        if bad.size:
            raise UserError(
                f"{path}: row {bad[0] + 1} has label {labels[bad[0]]:g}, expected 0-{top}"
            )
    bad_px = np.argwhere(~np.isfinite(pixels) | (pixels != np.round(pixels)))
    bad_px = bad_px if bad_px.size else np.argwhere((pixels < 0) | (pixels > 255))
    if bad_px.size:
        r, c = bad_px[0]
        raise UserError(f"{path}: row {r + 1} has pixel {pixels[r, c]:g}, expected integers 0-255")
    return pixels.astype(np.uint8), None if labels is None else labels.astype(np.int32)


def _check_config(workdir: Path, saved, overrides: dict) -> None:
    """An explicit --config must describe the run's model (predict always uses the run's)."""
    from absl import flags

    flag = flags.FLAGS["config"]
    if not flag.present and not overrides:
        return
    from mnist_jax import config as config_lib

    given = config_lib.flatten(config_lib.to_dict(flag.value.model))
    ours = config_lib.flatten(config_lib.to_dict(saved.model))
    differ = [k for k in sorted(given) if str(given[k]) != str(ours.get(k))]
    if differ:
        k = differ[0]
        raise UserError(
            f"--config gives model.{k}={_show(given[k])} but the run in {workdir} has "
            f"{_show(ours.get(k))}; "
            "predict uses the run's own config: drop --config"
        )


def _show(v):
    return tuple(v) if isinstance(v, list) else v


def main(argv: list[str], overrides: dict) -> int:
    from absl import flags

    from mnist_jax import data as data_lib, evaluate
    from mnist_jax.rundir import RunDir

    f = flags.FLAGS
    paths = argv[1:]
    if not f.workdir or not (paths or f.csv):
        raise UserError("usage: python -m mnist_jax.predict --workdir=RUN IMAGE... | --csv=FILE")
    config = RunDir(f.workdir).saved_config()
    num_classes = len(data_lib.class_names(config.data)) if config else 10
    # Inputs first: nothing is restored for a typo.
    csv = read_rows(f.csv, num_classes) if f.csv else None
    model, params, saved = evaluate.restore_model(f.workdir)
    _check_config(Path(f.workdir), saved, overrides)
    classes = evaluate.class_names(saved.data, models.num_classes(model))
    failures = 0
    if csv is not None:
        images, labels = csv
        probs = evaluate.predict_probs(model, params, images)
        for i, p in enumerate(probs):
            label = "" if labels is None else f" (label {classes[labels[i]]})"
            print(f"row {i + 1}: {classes[p.argmax()]}{label}  {format_probs(p, classes)}")
        if labels is not None:
            accuracy = 100 * np.mean(probs.argmax(1) == labels)
            print(f"accuracy {accuracy:.2f}% on {len(labels):,} labelled rows")
    images, names = [], []
    for path in paths:
        try:
            images.append(image_to_mnist(path))
            names.append(path)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
    if images:
        probs = evaluate.predict_probs(model, params, np.stack(images))
        for name, p in zip(names, probs, strict=True):
            print(f"{name}: {classes[p.argmax()]}  {format_probs(p, classes)}")
    return 1 if failures else 0


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from mnist_jax import cli, config as _config

    flags.DEFINE_string("workdir", None, "A trained run's directory.")
    flags.DEFINE_string("csv", None, "A CSV file: 784 pixels per row, or a label and 784 pixels.")
    config_flags.DEFINE_config_file(
        "config", _config.__file__, "Optional: checked against the run's own saved config."
    )
    cli.run(main)
