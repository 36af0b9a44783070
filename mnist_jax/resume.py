"""Where a run starts: what its directory says (config, results, metrics, checkpoints),
checked and restored without writing anything.

A finished run has nothing to do (a warning names the resumable fields changed with it, not
applied); a diverged one is refused (a sweep keeps it as recorded); a
run with more steps than asked is refused; an allowed config change must keep the optimizer
state's structure and then takes effect in the injected hyperparameters; the newest checkpoint
is restored and verified (with `fallback`, corrupt newer ones are skipped and reported).
A resume whose remaining steps would compute something else than the run it continues (other
data, or a learning-rate schedule stretched over another number of steps) is refused unless
the change is allowed, and then said in one warning line.

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

from mnist_jax import (
    checkpoint as ckpt_lib,
    config as config_lib,
    distributed,
    optim,
    report,
    step as step_lib,
)
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
    rundir.check_outputs(config)  # Every path the run writes, before any is written.
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
        report.check_run_outputs(rundir.path)  # Before training, not after.
    rundir.metrics()  # A malformed metrics.jsonl is refused here, before any write.
    steps = ckpt_lib.finalized_steps(rundir.checkpoints)
    results = rundir.results() or {}
    old = rundir.saved_config()
    ignored = [] if old is None else [
        f for f in config_lib.differing_fields(config_lib.to_dict(old), config_lib.to_dict(config))
        if f not in changed and f not in ("num_steps", "plots")  # plots: a finished run draws.
    ]  # fmt: skip
    return {"changed": changed, "finished": rundir.finished(), "steps": steps, "ignored": ignored,
            "diverged": bool(results.get("diverged")), "results": results}  # fmt: skip


def start(
    rundir: RunDir,
    config: ml_collections.ConfigDict,
    model: Any,
    tx: Any,
    num_steps: int,
    *,
    record: dict[str, Any] | None = None,
    allow_change: bool = False,
    fallback: bool = False,
    keep_diverged: bool = False,
    tag: str = "",
) -> Start:
    """Reads `rundir` (locked by the caller) and returns where `config` starts from; `record`
    is this command's run.json (its resolved step count and data fingerprint)."""
    seen = distributed.from_process_0(lambda: read(rundir, config, allow_change))
    changed, finished = seen["changed"], seen["finished"]
    saved, at, skipped = _restore(rundir, model, tx, seen["steps"], fallback)
    if finished and at == num_steps and not changed:
        logging.info("%s already finished %d steps; nothing to do", rundir.path, at)
        if seen["ignored"]:  # They take effect only while a run trains: say they did not.
            logging.warning(
                "%s already finished: %s not applied (they take effect while a run trains; "
                "raise num_steps to train on with them, or use a new --workdir)",
                rundir.path, ", ".join(seen["ignored"]),
            )  # fmt: skip
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
    if record is not None:  # Decided by process 0, followed by all.
        distributed.from_process_0(
            lambda: check_same_steps(rundir, config, record, at, allow_change)
        )
    state = step_lib.TrainState(**saved)
    if changed:  # An allowed change takes effect in the injected hyperparameters.
        state = state.replace(opt_state=optim.set_hyperparams(state.opt_state, config.optimizer))
        logging.info("config change allowed (%s): resuming with the new values", ", ".join(changed))
    logging.info("%sresumed from %s at step %d", tag, rundir.checkpoints, at)
    return Start(state, skipped=skipped)


def _restore(rundir: RunDir, model: Any, tx: Any, steps: list[int], fallback: bool):
    """(the newest intact checkpoint's arrays or None, its step or 0, the corrupt steps
    skipped), the restore's success agreed by every process."""
    if not steps:
        return None, 0, []
    abstract = jax.eval_shape(lambda: step_lib.init_state(model, tx, 0))
    with ckpt_lib.Checkpointer(rundir.checkpoints, create=False) as c:
        saved, at, skipped = ckpt_lib.restore_latest(
            c, abstract, fallback, steps=steps, agree=distributed.first_error
        )
    return saved, at or 0, skipped


def check_same_steps(
    rundir: RunDir,
    config: ml_collections.ConfigDict,
    record: dict[str, Any],
    at: int,
    allow_change: bool,
) -> None:
    """Refuses to resume at step `at` when the steps after it would not be the ones the run
    it continues would take: other data, or a non-constant learning-rate schedule stretched
    over another resolved step count (num_steps, num_epochs). Allowed, says so in a warning,
    as it says any allowed change of the next step's learning rate."""
    old, saved = rundir.run_record() or {}, rundir.saved_config() or config
    if old.get("data") and _data_key(old["data"]) != _data_key(record["data"]):
        why = (
            f"{rundir.path} was trained on other data ({_describe(old['data'])}) than this "
            f"command reads ({_describe(record['data'])}): its remaining steps would train on "
            "the new data"
        )
        _refuse_or_warn(why, "use the same data", allow_change)
    num_steps = record["num_steps"]
    old_steps = old.get("num_steps") or _legacy_steps(saved, config, num_steps)
    was = optim.learning_rate_at(saved.optimizer, old_steps, at)
    now = optim.learning_rate_at(config.optimizer, num_steps, at)
    jump = f"the learning rate of step {at + 1} would jump from {was:.3g} (the schedule it was "
    jump += f"trained on) to {now:.3g}"
    if config.optimizer.schedule != "constant" and old_steps != num_steps:
        field = next((f for f in ("num_steps", "num_epochs") if saved[f] != config[f]), None)
        what = f"{field}={config[field]} (was {saved[field]})" if field else "the data's size"
        why = (
            f"{what} stretches the {config.optimizer.schedule} learning-rate schedule of "
            f"{rundir.path} from {old_steps} to {num_steps} steps: {jump}"
        )
        _refuse_or_warn(why, f"keep {field or 'the data'} as it was", allow_change)
    elif allow_change and was != now:  # Schedule fields changed (check_config allowed it).
        logging.warning("--allow_config_change: %s", jump.replace("would jump", "jumps"))


def _refuse_or_warn(why: str, keep: str, allow_change: bool) -> None:
    if not allow_change:
        raise UserError(
            f"{why}; {keep}, or pass --allow_config_change to resume anyway, or use a new --workdir"
        )
    logging.warning("--allow_config_change: %s", why)


def _data_key(d: dict[str, Any]) -> tuple:
    return tuple(d.get(k) for k in ("source", "train", "test", "sha256"))


def _describe(d: dict[str, Any]) -> str:
    return (
        f"{d.get('source')}: {d.get('train')} train and {d.get('test')} test digits, "
        f"sha256 {str(d.get('sha256'))[:12]}"
    )


def _legacy_steps(saved: Any, config: Any, n: int) -> int:
    """A workdir from before run.json: its step count from its config.json (num_epochs scale
    the step count linearly)."""
    if saved.num_steps:
        return int(saved.num_steps)
    return round(n * saved.num_epochs / config.num_epochs) if config.num_epochs else n


def loss_sum_start(rundir: RunDir, step: int) -> int:
    """The step after which a checkpoint at `step` began adding up `state.loss_sum`: the last
    train row logged at or before it (logging one resets the sum); 0 if there is none."""
    rows = [r["step"] for r in rundir.metrics() if r["split"] == "train" and r["step"] <= step]
    return max(rows, default=0)
