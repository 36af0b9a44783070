"""A trained run's model back for inference, and `--mode=eval` on the run's own data.

Restoring needs only the run's config.json and a checkpoint: not the optimizer (the arrays
are restored as saved and the parameters taken out), not results.json (the class count is
read off the parameters), and evaluation needs no training split.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mnist_jax import (
    augment,
    checkpoint,
    config as config_lib,
    data as data_lib,
    models,
    rundata,
    scores,
    step as step_lib,
)
from mnist_jax.errors import UserError
from mnist_jax.inputs import check_dir
from mnist_jax.rundir import EVAL_RESULTS, HOLDER, RunDir
from mnist_jax.sharding import EvalSplit, Placement


def restore_model(
    workdir: str | os.PathLike, step: int | None = None, model: Any = None
) -> tuple[Any, Any, ml_collections.ConfigDict]:
    """(model, variables, config) of a run's latest (or `step`'s) checkpoint; variables are
    what a Linen `apply` takes: {"params": ..., **model_state}. `model`: the Linen module the
    run trained instead of the one its config names (checked against the checkpoint). Reads
    only, and
    reads a consistent snapshot of a run that is training: a checkpoint that the trainer
    rotates away mid-read is retried on the newest one."""
    rundir = RunDir(check_dir(workdir, "run directory"))
    config = rundir.saved_config()
    if config is None:
        raise UserError(rundir.describe())
    if os.path.lexists(rundir.checkpoints):  # A FIFO there is named, not "no checkpoint".
        check_dir(rundir.checkpoints, "checkpoint directory")
    if not rundir.checkpoints.is_dir():
        raise UserError(_nothing_to_restore(rundir))
    saved, step = _restore_snapshot(rundir, step)
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), dict):
        raise UserError(f"checkpoint {rundir.checkpoints / str(step)} holds no parameters")
    variables = {"params": saved["params"], **saved.get("model_state", {})}
    model = _model_for(config, variables, rundir.checkpoints / str(step), model)
    logging.info("restored %s at step %d", rundir.path, step)
    return model, variables, config


RETRIES = 20  # Attempts while a live run's checkpoints change under the reader.


def _step_dirs(directory: Path) -> list[int]:
    """The finished checkpoint steps on disk now (orbax renames a step into place)."""
    try:
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    except OSError:
        return []


def _restore_snapshot(rundir: RunDir, step: int | None) -> tuple[Any, int]:
    """(saved dict, step); an error is believed only if the checkpoints did not change while
    it happened (else the trainer saved or deleted one under us: try again)."""
    for attempt in range(RETRIES):
        before = _step_dirs(rundir.checkpoints)
        try:
            with checkpoint.Checkpointer(rundir.checkpoints, create=False) as ckpt:
                at = ckpt.latest_step() if step is None else step
                if at is None:
                    raise UserError(_nothing_to_restore(rundir))
                return ckpt.restore(None, at), at
        except (UserError, ValueError, OSError) as e:  # Orbax/TensorStore: files gone mid-read.
            time.sleep(0.2)  # A deletion under way (the step directory still listed) ends.
            changed = _step_dirs(rundir.checkpoints) != before
            if not changed or attempt == RETRIES - 1:
                if isinstance(e, UserError):
                    raise
                raise UserError(f"cannot read the checkpoints of {rundir.path}: "
                                f"{str(e).splitlines()[0][:300]}") from None  # fmt: skip
            logging.info("checkpoints of %s changed while reading: retrying", rundir.path)
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _nothing_to_restore(rundir: RunDir) -> str:
    """Why there is no checkpoint: a diverged run says so; an unfinished one is to train."""
    what = rundir.describe()
    if what:
        return f"{what}; it has no checkpoint to restore"
    return f"no checkpoint in {rundir.checkpoints}: train first"


def _model_for(
    config: ml_collections.ConfigDict, variables: Any, where: Path, given: Any = None
) -> Any:
    """The configured (or `given`, which must agree with config.model, built with its kwargs
    when a class) model whose variable shapes match `variables` (this finds the class count,
    the one thing config.json does not say)."""
    shapes = jax.tree_util.tree_map(np.shape, variables)
    params = variables["params"]
    counts = {np.shape(x)[-1] for x in jax.tree_util.tree_leaves(params) if np.ndim(x) == 1}
    if given is not None:  # Built as mj.train builds it, for each class count it may have.
        models.own.check_given(given)
        models.own.check_agrees(config.model.name, config.model.get("kwargs", ""), given)
        kwargs = models.own.parse_kwargs(config.model.get("kwargs", "")) or {}
        kwargs = kwargs if isinstance(given, type) else {}
        candidates = []
        for k in sorted(counts):
            with contextlib.suppress(UserError):
                candidates.append(models.own.build("the given model", given, kwargs, int(k)))
    else:
        candidates = [models.create_model(config.model, int(k)) for k in sorted(counts)]
    for model in candidates:
        abstract = jax.eval_shape(functools.partial(step_lib.init_variables, model), 0)
        if jax.tree_util.tree_map(lambda x: x.shape, abstract) == shapes:
            return model
    which = "the given model" if given is not None else "the model in its run's config.json"
    raise UserError(f"checkpoint {where} does not match {which}")


def predict_probs(
    model: Any, variables: Any, images: np.ndarray, batch: int = 10_000
) -> np.ndarray:
    """Class probabilities (n, classes) for uint8 images (n, 784), from `model` with
    `variables` ({"params": ..., **model_state})."""
    apply = jax.jit(functools.partial(step_lib.predict_probs, model=model))
    if len(images) == 0:
        return np.zeros((0, models.num_classes(model)), np.float32)
    return np.concatenate(
        [np.asarray(apply(variables, images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def class_names(data_config: Any, num_classes: int) -> tuple[str, ...]:
    """The names of a model's `num_classes` classes on `config.data` (see `data.class_names`);
    data of another class count is a UserError (its labels would not index the model's)."""
    names = data_lib.class_names(data_config)
    if len(names) != num_classes:
        what = data_config.get("name", "mnist") if data_config.source != "tfds" else "tfds"
        raise UserError(
            f"the model has {num_classes} classes but the data ({what}) has {len(names)}: "
            "score it on data of its own classes"
        )
    return names


def tta_scores(
    model: Any, variables: Any, splits: dict[str, EvalSplit], shift: int
) -> dict[str, Any]:
    """results.json's (and eval_results.json's) `tta`: the scores of each non-empty split
    (on the devices) with each example's softmax averaged over `augment.tta_shifts(shift)`."""
    fn = jax.jit(functools.partial(step_lib.eval_sums, model=model, tta_shift=shift))
    return augment.tta_record(shift, {
        name: scores.scalars(jax.device_get(fn(variables, s.images, s.labels, s.size)))
        for name, s in splits.items() if s.size
    })  # fmt: skip


def split_sums(model: Any, variables: Any, split: data_lib.Split, batch: int) -> dict[str, Any]:
    """`step.eval_sums` of a whole split (numpy), on the devices, `batch` examples at a time."""
    placed = Placement().put_eval(split, batch)
    return jax.device_get(
        jax.jit(functools.partial(step_lib.eval_sums, model=model))(
            variables, placed.images, placed.labels, placed.size
        )
    )


def run_data_config(rundir: RunDir, overrides: dict[str, Any] | None = None):
    """The data a run trained on (`auto` pinned to what it used, from results.json), with
    the data fields the user gave explicitly on top; checked by `rundata.check_own_data`."""
    config = rundir.saved_config()
    if config is None:
        raise UserError(rundir.describe())
    data_config = config.data
    results = rundir.results()
    if results and results.get("data_source"):
        data_config = data_lib.data_config_used(
            data_config, results["data_source"], results.get("data_location", "")
        )
        _check_pinned(config, data_config, rundir.file("results.json"))
    if overrides:
        data_config = data_config.copy_and_resolve_references()
        with data_config.unlocked():
            for k, v in overrides.items():
                data_config[k] = v
    rundata.check_own_data(rundir, data_config, config.data, overrides or {})
    return data_config


def _check_pinned(config: ml_collections.ConfigDict, data_config: Any, where: Path) -> None:
    """The run's config with the data its results.json says it used must still validate."""
    pinned = config.copy_and_resolve_references()
    with pinned.unlocked():
        pinned.data = data_config
    try:
        config_lib.validate(pinned)
    except UserError as e:
        raise UserError(f"{where}: its data_source and data_location do not fit ({e})") from None


def evaluate_workdir(
    workdir: str | os.PathLike, data_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Scores the latest checkpoint on the test split of the run's own data (or of the data
    fields in `data_overrides`) and writes eval_results.json."""
    rundir = RunDir(workdir)
    data_config = run_data_config(rundir, data_overrides)
    rundir.check_outputs(files=(EVAL_RESULTS, HOLDER))
    with rundir:  # A writer (eval_results.json): refused while a run trains here.
        return _evaluate(rundir, data_config)


def _evaluate(rundir: RunDir, data_config) -> dict[str, Any]:
    model, variables, config = restore_model(rundir.path)
    test, source, location = data_lib.load_test(data_config)
    rundir.claim()  # The command goes on: say who holds the workdir.
    sums = split_sums(model, variables, test, config.eval_batch_size)
    result = {
        "test": scores.scalars(sums),
        **scores.details(sums, class_names(data_config, models.num_classes(model))),
        "data_source": source,
        "data_location": location,
    }
    if config.augment.tta_shift:  # As the run's final evaluation, for the test split.
        placed = {"test": Placement().put_eval(test, config.eval_batch_size)}
        result["tta"] = tta_scores(model, variables, placed, config.augment.tta_shift)
    t = result["test"]
    print(
        f"test accuracy {100 * t['accuracy']:.2f}% log_loss {t['log_loss']:.4f} "
        f"on {len(test)} examples of {source} ({location})"
    )
    rundir.write_json(EVAL_RESULTS, result)
    return result
