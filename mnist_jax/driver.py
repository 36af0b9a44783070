"""The one run driver: a single run is a group of one member, a sweep group is K members.

`run(members)` does, for every kind of run (single, sweep group, sharded, multi-process):
validate -> load data -> check each run directory (read only) -> restore -> lock and write
config.json -> compile one chunk program -> chunks of steps with evaluation, checkpoints,
divergence and stop signals between them -> final evaluation -> results.json -> figures.

Members share one program: their state is stacked on a leading member axis and the pure
`step.train_chunk` is mapped (`lax.map`, bit-identical to a single run; the CPU default) or
vmapped (members in parallel; the accelerator default) over it. A member whose loss turns
non-finite is dropped: its results.json records the step, its last good checkpoint is kept, and
the others go on; a single run, having no others, stops with an error. Members that stopped
at different steps train as one program per start step, one after another. On several
devices the member axis is split over them (`sharding.Placement.for_members`).

The first chunk is one step; later ones are sized from the measured step time to take about
`CHUNK_SECONDS`, so once training has started a SIGTERM or SIGINT is honoured within about
that long, or one step where a step is longer (plus any periodic evaluation it lands in),
whatever the config: every live member is checkpointed at the current step and the process
exits 128+signal. A signal after the last step lets the run write its results first.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mnist_jax import (
    checkpoint as ckpt_lib,
    config as config_lib,
    data as data_lib,
    distributed,
    metrics,
    models,
    optim,
    profile as profile_lib,
    resume,
    scores,
    step as step_lib,
)
from mnist_jax.control import StopSignal, Timing, make_plan
from mnist_jax.errors import Diverged, Interrupted, UserError
from mnist_jax.rundir import SWEEP, RunDir
from mnist_jax.sharding import EvalSplit, Placement

CHUNK_SECONDS = 1.0  # Target length of one jitted call: bounds the latency of a stop signal.


@dataclasses.dataclass
class Member:
    """One run: its config and directory; `name` tags its log lines in a sweep."""

    config: ml_collections.ConfigDict
    rundir: RunDir
    name: str = ""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Any = None  # A module from mj.train(model=...) that config.model cannot rebuild.


@dataclasses.dataclass
class Outcome:
    """What `run` returns per member: results (as in results.json) and the final params."""

    member: Member
    results: dict[str, Any]
    params: Any = None
    dataset: data_lib.Dataset | None = None
    model: Any = None


def run(
    members: list[Member],
    *,
    allow_config_change: bool = False,
    fallback_checkpoint: bool = False,
    vectorize: str = "auto",
    progress: bool | None = None,
    data_cache: dict | None = None,
    t0: float | None = None,
    placement: Placement | None = None,
) -> list[Outcome]:
    """Trains `members` (configs that differ only in per_member fields) as one program;
    each resumes from its own latest checkpoint. Returns one Outcome per member."""
    timing = Timing(time.time() if t0 is None else t0)
    timing.startup_s = time.time() - timing.t0
    for m in members:
        config_lib.validate(m.config)
        # Data paths as absolute ones: config.json names the data whatever the reader's cwd.
        m.config, m.model = config_lib.as_recorded(m.config, m.model)
        m.rundir.check_writable()
        m.rundir.check_kind("run")
        if not m.name and (m.rundir.path.parent / SWEEP).exists():
            raise UserError(
                f"{m.rundir.path} is a member of the sweep {m.rundir.path.parent}; rerun the "
                "sweep's command to train it, or train a single run in another --workdir"
            )
    first = members[0].config
    t = time.time()
    train_full, test, source, location = data_lib.load_cached(first.data, data_cache)
    datasets = {}  # One train/validation split per seed, as a single run makes it.
    for m in members:
        if m.config.seed not in datasets:
            key = step_lib.rng_stream(m.config.seed, step_lib.SPLIT)
            datasets[m.config.seed] = data_lib.make_dataset(
                train_full, test, source, location, first.data.validation_size, key,
                validation_split=first.data.validation_split,
                class_names=data_lib.class_names(first.data),
            )  # fmt: skip
    timing.data_s = time.time() - t
    num_train = len(datasets[first.seed].train)
    cap = first.data.sample_max_epochs if (first.data.source, source) == ("auto", "sample") else 0
    plan = make_plan(first, num_train, max_epochs=cap)
    # What the steps are computed over; a resume must match it (resume.check_same_steps).
    record = {"num_steps": plan.num_steps, "data": data_lib.fingerprint(train_full, test, source)}
    model = models.create_model(first.model, datasets[first.seed].num_classes, members[0].model)
    txs = [optim.make_optimizer(m.config.optimizer, plan.num_steps) for m in members]
    placement = placement or Placement()
    placement.check_batch(first.batch_size, num_train)

    try:
        # Read-only checks and restores, for every member, before anything is written.
        states, done, todo, skipped = _check_and_restore(
            members, txs, model, plan, allow_config_change, fallback_checkpoint, record
        )
        if states:  # Where the trace would start is known now, before anything is written.
            profile_lib.check(first, plan, int(states[0].step), todo[0].rundir)
        # From here on the command goes on: write.
        for m, state in zip(todo, states, strict=True):
            m.rundir.claim()
            m.rundir.set_aside_checkpoints(skipped[m.rundir.path])
            m.rundir.write_config(m.config)
            m.rundir.write_run_record(record)
            m.rundir.trim_metrics(int(state.step))
    except BaseException:
        for m in members:
            m.rundir.unlock()
        raise
    try:  # Members that stopped at different steps train as one group per start step.
        for at in sorted({int(s.step) for s in states}):
            same = [k for k, s in enumerate(states) if int(s.step) == at]
            group = _Group([todo[k] for k in same], [states[k] for k in same], datasets,
                           train_full, test, plan, model, placement,
                           dataclasses.replace(timing))  # fmt: skip
            done += group.train(vectorize, progress)
    finally:
        for m in todo:
            m.rundir.unlock()
    return done


def _check_and_restore(members, txs, model, plan, allow_config_change, fallback_checkpoint,
                       record):  # fmt: skip
    """Per member: lock and `resume.start` (writes nothing). Returns (states, finished or
    diverged outcomes, members to train, skipped corrupt checkpoints per member)."""
    states, done, todo, skipped = [], [], [], {}
    for m, tx in zip(members, txs, strict=True):
        m.rundir.lock()
        start = resume.start(
            m.rundir, m.config, model, tx, plan.num_steps, record=record,
            allow_change=allow_config_change, fallback=fallback_checkpoint,
            keep_diverged=len(members) > 1, tag=_tag(m),
        )  # fmt: skip
        if start.state is None:
            done.append(Outcome(m, start.results))
            m.rundir.unlock()
            continue
        skipped[m.rundir.path] = start.skipped
        states.append(start.state)
        todo.append(m)
    return states, done, todo, skipped


def _stopped(ckpts, signum: int | None, what: str) -> None:
    """Waits for the checkpoints, then raises Interrupted (a peer's signal: SIGTERM's)."""
    for ck in ckpts:
        ck.wait()
    sig = signum or signal.SIGTERM
    raise Interrupted(sig, f"stopped by {signal.Signals(sig).name} {what}")


def _tag(m: Member) -> str:
    return f"[{m.name}] " if m.name else ""


class _Group:
    """The members that train together in one program."""

    def __init__(self, members, states, datasets, train_full, test, plan, model, placement, timing):
        self.members, self.plan, self.model, self.timing = members, plan, model, timing
        self.config = members[0].config
        self.datasets = {m.config.seed: datasets[m.config.seed] for m in members}
        self.K = len(members)
        self.p = placement = placement.for_members(self.K)  # Members split over devices.
        self.state = placement.stack_members(states)
        self.images = placement.put(train_full.images)
        self.labels = placement.put(train_full.labels)
        self.rows = placement.put_members(
            np.stack([self.datasets[m.config.seed].train_rows for m in members])
        )
        eb = self.config.eval_batch_size
        sub = self.config.eval_train_examples
        self.splits: dict[int, dict[str, EvalSplit]] = {}
        for seed, ds in self.datasets.items():
            subset = ds.train if not sub else ds.train.take(np.arange(min(sub, len(ds.train))))
            self.splits[seed] = {
                "train_subset": placement.put_eval(subset, eb),
                "validation": placement.put_eval(ds.validation, eb),
            }
        self.test = placement.put_eval(test, eb)
        self.evaluate = jax.jit(functools.partial(step_lib.eval_sums, model=model))
        self.lr = [optim.current_learning_rate(m.config.optimizer, plan.num_steps) for m in members]
        self.diverged: dict[int, int] = {}
        self.steps = 0  # Steps trained by this command (each member).
        self.writers: list[metrics.MetricWriter] = []  # Opened by `train`.
        start = int(np.asarray(self.state.step).reshape(-1)[0])
        # Per member, the step after which state.loss_sum began: its last logged train row.
        self.summed_from = [resume.loss_sum_start(m.rundir, start) for m in members]

    def member_state(self, k: int) -> step_lib.TrainState:
        return self.p.member(self.state, k)

    def eval_split(self, params: Any, split: EvalSplit) -> dict[str, Any]:
        """The evaluation sums (numpy) of one split, {} for an empty one; `scores` makes them
        metrics."""
        if split.size == 0:
            return {}
        t = time.time()
        sums = jax.device_get(self.evaluate(params, split.images, split.labels, split.size))
        self.timing.eval_s += time.time() - t
        return sums

    def compile(self, vectorize: str):
        tx = optim.make_optimizer(self.config.optimizer, self.plan.num_steps)
        fn = step_lib.chunk_program(
            self.model, tx, self.config.batch_size, self.p, vectorize, self.K
        )
        t = time.time()
        compiled = fn.lower(self.state, self.images, self.labels, self.rows, 0, 0).compile()
        self.timing.compile_s += time.time() - t
        return compiled

    def train(self, vectorize: str, progress: bool | None) -> list[Outcome]:
        """Compiles and trains; whatever the way out, closes what it opened (bar, writers,
        checkpoint managers, a profiler trace) and unlocks the members."""
        bar, ckpts = None, []
        self.start = self.at = start = int(self.state.step[0])
        c, plan = self.config, self.plan
        trace = profile_lib.Window(c.profile_steps, self.members[0].rundir.file("profile"))
        try:
            compiled = self.compile(vectorize)
            self.writers = [metrics.MetricWriter(m.rundir, m.config.tensorboard, start,
                                                 self.timing.t0) for m in self.members]  # fmt: skip
            bar = metrics.progress_bar(plan.num_steps, start, self.K, progress)
            ckpts = [ckpt_lib.Checkpointer(m.rundir.checkpoints, m.config.checkpoints_to_keep)
                     for m in self.members]  # fmt: skip
            # Training starts: from here on signals stop it; over the closing too (a late
            # signal waits for the unlock).
            with StopSignal() as stop:
                self._log_start()
                try:
                    return self._loop(compiled, bar, ckpts, stop, trace)
                finally:
                    trace.close()
                    self._close(bar, ckpts)
        except Exception as e:  # A collective (or orbax's save) that lost a dead peer.
            distributed.raise_if_peer_lost(e, self.at)
            raise
        finally:
            trace.close()
            self._close(bar, ckpts)
            for m in self.members:
                m.rundir.unlock()

    def _close(self, bar, ckpts) -> None:
        if bar is not None:
            bar.close()
        while self.writers:
            self.writers.pop().close()
        while ckpts:
            ckpts.pop().__exit__(*((None,) * 3))

    def _loop(self, compiled, bar, ckpts, stop, trace) -> list[Outcome]:
        """Chunks of steps up to num_steps, with evaluations, checkpoints and stop signals
        between them; then the final save and evaluation."""
        c, plan = self.config, self.plan
        # One step first (a heavy config's step can take seconds), then sized from its time.
        step, chunk_len = self.start, c.steps_per_call or profile_lib.FIRST_CHUNK
        period_steps, period_time = 0, 0.0
        while step < plan.num_steps and len(self.diverged) < self.K:
            n = trace.clip(step, min(plan.next_stop(step) - step, chunk_len))
            t = time.time()
            with trace.around(step, n):
                self.state, stats = compiled(
                    self.state, self.images, self.labels, self.rows, step, n
                )
                stats = jax.device_get(stats)  # Also waits for the chunk to finish.
            elapsed = time.time() - t
            self.timing.train_s += elapsed
            step += n
            self.at = step
            self.steps += n
            period_steps += n
            period_time += elapsed
            if not c.steps_per_call:
                chunk_len = max(1, int(n * CHUNK_SECONDS / max(elapsed, 1e-6)))
                chunk_len = distributed.min_over_processes(chunk_len)
            self._check_divergence(stats, ckpts)
            if step in plan.eval_steps:  # Before the save: it resets state.loss_sum.
                ex_s = period_steps * c.batch_size * self.K / max(period_time, 1e-9)
                self._log_period(step, ex_s, bar)
                period_steps, period_time = 0, 0.0
            if step in plan.checkpoint_steps:
                self._save(ckpts, step)
            bar.update(n)
            last = step == plan.num_steps  # A signal now lets the results be written.
            if not last and distributed.any_process(stop.signum is not None):
                self._save(ckpts, step)
                _stopped(ckpts, stop.signum, f"at step {step}; checkpoint saved: rerun the "
                         "same command to resume")  # fmt: skip
        bar.close()
        if len(self.diverged) == self.K == 1:
            self._raise_diverged(ckpts[0])
        self._save(ckpts, plan.num_steps)
        outcomes = self._finish()
        if stop.signum is not None:  # After the last step: results are written.
            _stopped(ckpts, stop.signum, "after the last step; results are written, plots skipped")
        for ck in ckpts:
            ck.wait()
        return outcomes

    def _log_start(self) -> None:
        c, names = self.config, ", ".join(m.name for m in self.members if m.name)
        logging.info(
            "model %s: %d parameters; %d steps of batch %d on %d device(s)%s%s; compiled in %.2fs",
            c.model.name, models.count_params(self.member_state(0).params), self.plan.num_steps,
            c.batch_size, self.p.num_devices,
            f" ({self.p.member_groups} member groups)" if self.p.member_groups > 1 else "",
            f"; members {names}" if names else "", self.timing.compile_s,
        )  # fmt: skip

    def _live(self) -> list[int]:
        return [k for k in range(self.K) if k not in self.diverged]

    def _save(self, ckpts, step: int) -> None:
        for k in self._live():
            ckpts[k].save(step, self.member_state(k))

    def _check_divergence(self, stats, ckpts) -> None:
        for k in self._live():
            bad = int(np.asarray(stats["nonfinite_step"]).reshape(-1)[k])
            if bad < 0:
                continue
            self.diverged[k] = bad
            m = self.members[k]
            m.rundir.update_results({"diverged": metrics.diverged_record(bad)})
            if self.K > 1:
                logging.warning("%sdiverged at step %d; the other members go on", _tag(m), bad)

    def _raise_diverged(self, ckpt) -> None:
        bad, last = self.diverged[0], ckpt.latest_step()
        kept = f"the last good checkpoint (step {last}) is kept" if last else "no checkpoint yet"
        lr = self.members[0].config.optimizer.learning_rate
        raise Diverged(
            f"training diverged: non-finite loss at step {bad} (learning rate {lr} too high?); "
            f"{kept}"
        )

    def _log_period(self, step: int, ex_s: float, bar) -> None:
        """After a period: scores the train subset and validation of every live member."""
        for k in self._live():
            m, state = self.members[k], self.member_state(k)
            splits = self.splits[m.config.seed]
            lr = self.lr[k](state.opt_state, step)
            line = [f"{_tag(m)}step {step}/{self.plan.num_steps}"]
            for name, split in (
                ("train", splits["train_subset"]),
                ("validation", splits["validation"]),
            ):
                sums = self.eval_split(state.params, split)
                if not sums:
                    continue
                s = scores.scalars(sums)
                extra = {}
                if name == "train":  # The mean loss of the steps since the last train row.
                    steps = step - self.summed_from[k]
                    extra = {"batch_loss": float(state.loss_sum) / steps,
                             "learning_rate": lr, "examples_per_sec": ex_s}  # fmt: skip
                self.writers[k].write(step, name, **s, **extra)
                line.append(f"{name} loss {s['log_loss']:.4f} acc {100 * s['accuracy']:.2f}%")
            line.append(f"{ex_s:,.0f} ex/s")
            bar.set_postfix_str(" | ".join(line[1:-1]))
            bar.log(" | ".join(line))
        self.state = self.state.replace(loss_sum=jnp.zeros_like(self.state.loss_sum))
        self.summed_from = [step] * self.K

    def _finish(self) -> list[Outcome]:
        """Final evaluation of every member on its full splits; results.json."""
        out = []
        for k, m in enumerate(self.members):
            if k in self.diverged:
                out.append(Outcome(m, {"diverged": metrics.diverged_record(self.diverged[k])}))
                continue
            state, ds = self.member_state(k), self.datasets[m.config.seed]
            eb = m.config.eval_batch_size
            final = {
                "train": self.eval_split(state.params, self.p.put_eval(ds.train, eb)),
                "validation": self.eval_split(
                    state.params, self.splits[m.config.seed]["validation"]
                ),
                "test": self.eval_split(state.params, self.test),
            }
            self.timing.wall_s = time.time() - self.timing.t0
            results = metrics.summarize(
                m.config, ds, self.plan, state, final, self.timing, self.steps
            )
            results["sweep_group_size"] = self.K
            results["resumed_from_step"] = self.start or None
            m.rundir.write_json("results.json", results)
            self.writers[k].final(m.config, results)
            out.append(Outcome(m, results, state.params, ds, self.model))
        return out
