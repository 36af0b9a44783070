"""Where a run starts: what its directory says (config, results, metrics, checkpoints),
checked and restored without writing anything.

A finished run has nothing to do; a diverged one is refused (a sweep keeps it as recorded); a
run with more steps than asked is refused; an allowed config change must keep the optimizer
state's structure and then takes effect in the injected hyperparameters; the newest checkpoint
is restored and verified (with `fallback`, corrupt newer ones are skipped and reported).

In a multi-process run process 0 reads the directory and every process follows its reading
(`distributed.from_process_0`), and each restore's success is agreed: a process that starts
late, or sees the shared directory later, still takes the same path as the others.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
from absl import logging

from mnist_jax import checkpoint as ckpt_lib, distributed, optim, step as step_lib
from mnist_jax.errors import UserError
from mnist_jax.rundir import RunDir


@dataclasses.dataclass
class Start:
    """The state to train from, or (state None) the results of a run with nothing to do."""

    state: step_lib.TrainState | None
    results: dict[str, Any] | None = None
    skipped: list[int] = dataclasses.field(default_factory=list)  # Corrupt steps passed over.


def read(rundir: RunDir, config: ml_collections.ConfigDict, allow_change: bool) -> dict[str, Any]:
    """What `rundir` says, checked (UserError otherwise) and as JSON: the changed config fields,
    results.json of a finished run, whether it diverged, its checkpoint steps."""
    changed = rundir.check_config(config, allow_change)
    if changed:
        old = optim.structure(rundir.saved_config().optimizer)
        new = optim.structure(config.optimizer)
        fixed = [k for k in old if old[k] != new[k]]
        if fixed:
            raise UserError(
                f"{fixed[0]} changed: the optimizer state of {rundir.path} has another "
                "structure, so it cannot resume even with --allow_config_change; use a new "
                "--workdir"
            )
    if config.plots:
        from mnist_jax import plot

        plot.check_run_outputs(rundir.path)  # Before training, not after.
    rundir.metrics()  # A malformed metrics.jsonl is refused here, before any write.
    steps = ckpt_lib.finalized_steps(rundir.checkpoints)
    results = rundir.results() or {}
    return {"changed": changed, "finished": rundir.finished(), "steps": steps,
            "diverged": bool(results.get("diverged")), "results": results}  # fmt: skip


def start(
    rundir: RunDir,
    config: ml_collections.ConfigDict,
    model: Any,
    tx: Any,
    num_steps: int,
    *,
    allow_change: bool = False,
    fallback: bool = False,
    keep_diverged: bool = False,
    tag: str = "",
) -> Start:
    """Reads `rundir` (locked by the caller) and returns where `config` starts from."""
    seen = distributed.from_process_0(lambda: read(rundir, config, allow_change))
    changed, finished = seen["changed"], seen["finished"]
    saved, at, skipped = None, None, []
    if seen["steps"]:
        abstract = jax.eval_shape(lambda: step_lib.init_state(model, tx, 0))
        with ckpt_lib.Checkpointer(rundir.checkpoints, create=False) as c:
            saved, at, skipped = ckpt_lib.restore_latest(
                c, abstract, fallback, steps=seen["steps"], agree=distributed.first_error
            )
    at = at or 0
    if finished and at == num_steps and not changed:
        logging.info("%s already finished %d steps; nothing to do", rundir.path, at)
        return Start(None, finished)
    if at > num_steps:
        raise UserError(
            f"{rundir.path} already trained {at} steps, more than num_steps={num_steps}; "
            "raise num_steps or use a new --workdir"
        )
    if seen["diverged"] and not changed:
        if keep_diverged:  # A sweep's diverged member stays as it was recorded.
            return Start(None, seen["results"])
        raise UserError(
            f"{rundir.path} diverged earlier (see its results.json); lower the learning rate "
            "with --allow_config_change, or use a new --workdir"
        )
    if saved is None:
        if skipped:
            logging.warning("no intact checkpoint in %s: starting from step 0", rundir.path)
        state = jax.jit(functools.partial(step_lib.init_state, model, tx))(config.seed)
        return Start(state, skipped=skipped)
    state = step_lib.TrainState(**saved)
    if changed:  # An allowed change takes effect in the injected hyperparameters.
        state = state.replace(opt_state=optim.set_hyperparams(state.opt_state, config.optimizer))
        logging.info("config change allowed (%s): resuming with the new values", ", ".join(changed))
    logging.info("%sresumed from %s at step %d", tag, rundir.checkpoints, at)
    return Start(state, skipped=skipped)
