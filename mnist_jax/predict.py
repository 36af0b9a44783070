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
from absl import flags

from mnist_jax import config as config_lib, data as data_lib, evaluate, models
from mnist_jax.errors import UserError
from mnist_jax.files import read_rows
from mnist_jax.images import MAX_SIDE, as_mnist, image_to_mnist  # noqa: F401  (re-exported)
from mnist_jax.rundir import RunDir


def format_probs(probs: np.ndarray, names: tuple[str, ...] | None = None) -> str:
    """'name:probability' of every class (names default to the class numbers)."""
    names = names or tuple(map(str, range(len(probs))))
    return " ".join(f"{names[k]}:{p:.3f}" for k, p in enumerate(probs))


def _check_config(workdir: Path, saved, overrides: dict) -> None:
    """An explicit --config must describe the run's model (predict always uses the run's)."""
    flag = flags.FLAGS["config"]
    if not flag.present and not overrides:
        return
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
    f = flags.FLAGS
    paths = argv[1:]
    if not f.workdir or not (paths or f.csv):
        raise UserError("usage: python -m mnist_jax.predict --workdir=RUN IMAGE... | --csv=FILE")
    config = RunDir(f.workdir).saved_config()
    num_classes = len(data_lib.class_names(config.data)) if config else 10
    # Inputs first: nothing is restored for a typo.
    csv = read_rows(f.csv, num_classes) if f.csv else None
    model, variables, saved = evaluate.restore_model(f.workdir)
    _check_config(Path(f.workdir), saved, overrides)
    classes = evaluate.class_names(saved.data, models.num_classes(model))
    failures = 0
    if csv is not None:
        images, labels = csv
        probs = evaluate.predict_probs(model, variables, images)
        for i, p in enumerate(probs):
            label = "" if labels is None else f" (label {classes[labels[i]]})"
            print(
                cli.one_line(
                    f"row {i + 1}: {classes[p.argmax()]}{label}  {format_probs(p, classes)}"
                )
            )
        if labels is not None:
            accuracy = 100 * np.mean(probs.argmax(1) == labels)
            print(f"accuracy {accuracy:.2f}% on {len(labels):,} labelled rows")
    images, names = [], []
    for path in paths:
        try:
            images.append(image_to_mnist(path))
            names.append(path)
        except UserError as e:
            print(f"error: {cli.one_line(e)}", file=sys.stderr)
            failures += 1
    if images:
        probs = evaluate.predict_probs(model, variables, np.stack(images))
        for name, p in zip(names, probs, strict=True):
            print(cli.one_line(f"{name}: {classes[p.argmax()]}  {format_probs(p, classes)}"))
    return 1 if failures else 0


if __name__ == "__main__":
    from mnist_jax import cli

    cli.define_flags(
        "A trained run's directory.",
        "Optional: checked against the run's own saved config.",
        optional_config=True,
    )
    flags.DEFINE_string("csv", None, "A CSV file: 784 pixels per row, or a label and 784 pixels.")
    cli.run(main)
