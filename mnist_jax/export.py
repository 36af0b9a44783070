"""Export a finished run's model as a serialized `jax.export` artifact (StableHLO).

    python -m mnist_jax.export --workdir=runs/dnn --out=dnn.jax

The artifact is one function, parameters included: uint8 pixels (n, 784), MNIST-style (white
digit on black, 0-255, rows of the 28x28 image), with a symbolic batch size n >= 1, to float32
class probabilities (n, classes). It is lowered for CPU, CUDA, ROCm and TPU, and loads with
plain JAX, without this package or Flax:

    exported = jax.export.deserialize(open("dnn.jax", "rb").read())
    probs = exported.call(images)

The artifact itself records its contract (`exported.in_avals`, `exported.out_avals`); the
sidecar `<out>.json` says it in words, with the class count, the run and step it came from,
and the JAX version and date of the export (jax.export promises 6 months of backward
compatibility: see README.md). The model is restored the one way every command restores it
(`evaluate.restore_model`), and only a run that finished is exported. Every target is checked
before anything is restored or written; both files are written atomically.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mnist_jax import data as data_lib, evaluate, outputs, rundir as rundir_lib, step as step_lib
from mnist_jax.errors import UserError
from mnist_jax.rundir import RunDir

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
FORMAT = "jax.export"


def sidecar(out: str | os.PathLike) -> Path:
    """The JSON file that describes the artifact at `out`: `<out>.json`."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def check_target(path: str | os.PathLike) -> Path:
    """`path` if a file can be written there: not a directory, not a link, in an existing
    writable directory; else a UserError."""
    outputs.refuse_directory_name(path)
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"cannot write {path}: it is a symbolic link; give the real path")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise UserError(f"cannot write {path}: it is not a regular file")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {path}: it is read-only")
    return path


# Names a run or sweep directory owns (files, and directories a file there would block).
RUN_NAMES = (
    rundir_lib.CONFIG, rundir_lib.RESULTS, rundir_lib.EVAL_RESULTS, rundir_lib.METRICS,
    rundir_lib.RUN, rundir_lib.SWEEP, rundir_lib.SWEEP_MARK, rundir_lib.HOLDER,
    rundir_lib.TABLES_LOCK,
    rundir_lib.CHECKPOINTS, rundir_lib.CORRUPT, rundir_lib.TENSORBOARD, "plots", "profile",
    "report.md", "sweep.csv", "sweep.png", "first_layer_by_steps.png",
)  # fmt: skip


def _is_run_dir(directory: Path) -> bool:
    return (directory / rundir_lib.CONFIG).is_file() or rundir_lib.is_sweep_dir(directory)


def check_not_a_runs_file(path: Path, earlier_export: bool) -> None:
    """An export never replaces or joins what a run owns, any run's or sweep's: inside a run
    or sweep directory only at its top level and under a name the run does not use, and an
    existing file only if it is part of an earlier export (`earlier_export`)."""
    real = path.parent.resolve() / path.name
    parent = real.parent
    owner = next((d for d in parent.parents if (d / rundir_lib.CONFIG).is_file()), None)
    in_run = _is_run_dir(parent) or RunDir(parent).sweep_members() is not None
    if owner is not None or (in_run and real.name in RUN_NAMES):
        raise UserError(
            f"cannot write {path}: it would replace or join the files of the run in "
            f"{owner or parent}; give a new name at its top level, or a path outside it"
        )
    if os.path.lexists(real) and not earlier_export:
        raise UserError(f"cannot write {path}: it exists and is not part of an earlier export; "
                        "give a new name or remove it")  # fmt: skip


def _is_sidecar(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_finished(rundir: RunDir) -> dict[str, Any]:
    """results.json of a finished run in `rundir`, else a UserError saying what it is."""
    if not rundir.path.is_dir():
        raise UserError(f"workdir {rundir.path} does not exist")
    if rundir.saved_config() is None:  # A sweep's (finished or not), runs', or nothing.
        raise UserError(rundir.describe())
    results = rundir.finished()
    if results is None:
        diverged = (rundir.results() or {}).get("diverged")
        if diverged:
            raise UserError(f"the run in {rundir.path} diverged at step {diverged.get('step')}")
        raise UserError(
            f"the run in {rundir.path} has not finished (no final results): rerun its command "
            "to finish training, then export"
        )
    return results


def exported(model: Any, variables: Any, platforms: tuple[str, ...] = PLATFORMS):
    """The `jax.export.Exported` of `model` with `variables` (params and model state, e.g.
    BatchNorm's running averages, baked in): uint8 (n, 784) -> probs (n, classes)."""
    fn = jax.jit(functools.partial(step_lib.predict_probs, variables, model=model))
    (n,) = jax.export.symbolic_shape("n")
    spec = jax.ShapeDtypeStruct((n, data_lib.NUM_PIXELS), jnp.uint8)
    return jax.export.export(fn, platforms=platforms)(spec)


def describe(exp, config, workdir: Path, step: int | None) -> dict[str, Any]:
    """The sidecar's content: the contract in words, where the model came from, and when."""
    (out,) = exp.out_avals
    return {
        "format": FORMAT,
        "load": "jax.export.deserialize(open(FILE, 'rb').read()).call(images)",
        "input": {
            "dtype": "uint8",
            "shape": ["n", data_lib.NUM_PIXELS],
            "n": "any batch size >= 1",
            "pixels": "MNIST-style: white digit on black, 0-255, the 28x28 image row by row",
        },
        "output": {
            "dtype": str(out.dtype),
            "shape": ["n", int(out.shape[1])],
            "meaning": "class probabilities (softmax); each row sums to 1",
        },
        "classes": int(out.shape[1]),
        "model": config.model.name,
        "workdir": str(workdir.resolve()),
        "step": step,
        "platforms": list(exp.platforms),
        "calling_convention_version": exp.calling_convention_version,
        "jax_version": jax.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_run(
    workdir: str | os.PathLike, out: str | os.PathLike, platforms: tuple[str, ...] = PLATFORMS
) -> Path:
    """Writes the finished run in `workdir` as a jax.export artifact at `out`, described by
    `<out>.json`. Returns `out`. Every bad input is a UserError, and then nothing is written."""
    out = Path(out)
    rundir = RunDir(workdir)
    results = check_finished(rundir)
    for path in (out, sidecar(out)):
        check_target(path)
    check_not_a_runs_file(out, _is_sidecar(sidecar(out)))
    check_not_a_runs_file(sidecar(out), _is_sidecar(sidecar(out)))
    with rundir:  # Not while a run trains here: its checkpoint could change under us.
        model, variables, config = evaluate.restore_model(rundir.path)
    exp = exported(model, variables, platforms)
    blob = exp.serialize()
    text = json.dumps(describe(exp, config, rundir.path, results.get("num_steps")), indent=2) + "\n"
    outputs.write_atomic(out, lambda f: f.write(blob))
    outputs.write_atomic(sidecar(out), lambda f: f.write(text.encode()))
    return out


def main(argv: list[str], overrides: dict[str, Any]) -> int:
    """The command line; it takes no --config fields."""
    from absl import flags

    del overrides
    f = flags.FLAGS
    if argv[1:]:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not f.workdir or not f.out:
        raise UserError("usage: python -m mnist_jax.export --workdir=RUN --out=FILE")
    out = export_run(f.workdir, f.out)
    print(f"wrote {out} (jax.export, StableHLO) and {sidecar(out)}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    from absl import flags

    from mnist_jax import cli

    cli.define_flags("A finished run's directory.")
    flags.DEFINE_string("out", None, "The artifact to write (its description: OUT.json).")
    cli.run(main)
