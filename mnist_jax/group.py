"""The members that train together in one program, and what the driver does to them between
two chunks: evaluate and log a period, save checkpoints, drop a diverged member, and at the
end score every member (validation and test in full) and write its results.json.

Their train states are stacked on a leading member axis (`Placement.stack_members`); their
data is put on the device(s) once. A single run is a group of one member.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mnist_jax import (
    augment as augment_lib,
    checkpoint as ckpt_lib,
    data as data_lib,
    evaluate,
    metrics,
    models,
    optim,
    profile as profile_lib,
    resume,
    scores,
    step as step_lib,
)
from mnist_jax.control import Plan, Timing
from mnist_jax.errors import Diverged
from mnist_jax.rundir import RunDir
from mnist_jax.sharding import EvalSplit, Placement


@dataclasses.dataclass
class Member:
    """One run: its config and directory; `name` tags its log lines in a sweep."""

    config: ml_collections.ConfigDict
    rundir: RunDir
    name: str = ""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Any = None  # A module from mj.train(model=...) that config.model cannot rebuild.

    @property
    def tag(self) -> str:
        return f"[{self.name}] " if self.name else ""


@dataclasses.dataclass
class Outcome:
    """What the driver returns per member: results (as in results.json), the final params and
    model state."""

    member: Member
    results: dict[str, Any]
    params: Any = None
    dataset: data_lib.Dataset | None = None
    model: Any = None
    model_state: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Setup:
    """What every member of one command shares: the data (one train/validation split per
    seed), the plan of steps, the model and the device placement."""

    datasets: dict[int, data_lib.Dataset]
    train_full: data_lib.Split
    test: data_lib.Split
    plan: Plan
    model: Any
    placement: Placement


class Group:
    """The members that train together in one program, all from the same step; `at` is the
    step they have reached, `steps` the steps this command trained."""

    def __init__(self, members: list[Member], states: list[Any], setup: Setup, timing: Timing):
        self.members, self.plan, self.model, self.timing = members, setup.plan, setup.model, timing
        self.config = c = members[0].config
        self.datasets = {m.config.seed: setup.datasets[m.config.seed] for m in members}
        self.K = len(members)
        self.p = p = setup.placement.for_members(self.K)  # Members split over devices.
        self.state = p.stack_members(states)
        self.images, self.labels = p.put(setup.train_full.images), p.put(setup.train_full.labels)
        self.rows = p.put_members(np.stack([self.datasets[m.config.seed].train_rows
                                            for m in members]))  # fmt: skip
        # Per seed, what a period scores: a fixed subset of the training split, and validation.
        self.splits: dict[int, dict[str, EvalSplit]] = {}
        for seed, ds in self.datasets.items():
            n = c.eval_train_examples
            subset = ds.train.take(np.arange(min(n, len(ds.train)))) if n else ds.train
            self.splits[seed] = {
                "train": p.put_eval(subset, c.eval_batch_size),
                "validation": p.put_eval(ds.validation, c.eval_batch_size),
            }
        self.test = p.put_eval(setup.test, c.eval_batch_size)
        self.evaluate = jax.jit(functools.partial(step_lib.eval_sums, model=setup.model))
        self.lr = [optim.current_learning_rate(m.config.optimizer, self.plan.num_steps)
                   for m in members]  # fmt: skip
        self.diverged: dict[int, int] = {}  # Member index -> the step whose loss was not finite.
        self.start = self.at = int(np.asarray(self.state.step).reshape(-1)[0])
        self.steps = 0
        # Per member, the step after which state.loss_sum began: its last logged train row.
        self.summed_from = [resume.loss_sum_start(m.rundir, self.start) for m in members]
        self.writers: list[metrics.MetricWriter] = []  # Opened by `open`.
        self.ckpts: list[ckpt_lib.Checkpointer] = []
        self.bar = None

    def member_state(self, k: int) -> step_lib.TrainState:
        return self.p.member(self.state, k)

    def live(self) -> list[int]:
        """The members still training (not diverged)."""
        return [k for k in range(self.K) if k not in self.diverged]

    def compile(self, vectorize: str) -> Any:
        """The one chunk program of this group (its compile time counted in `timing`)."""
        tx = optim.make_optimizer(self.config.optimizer, self.plan.num_steps)
        fn = step_lib.chunk_program(
            self.model, tx, self.config.batch_size, self.p, vectorize, self.K,
            augment_lib.from_config(self.config.augment),
        )  # fmt: skip
        t = time.time()
        compiled = fn.lower(self.state, self.images, self.labels, self.rows, 0, 0).compile()
        self.timing.compile_s += time.time() - t
        return compiled

    def open(self, progress: bool | None) -> None:
        """The metric writers, the progress bar and the checkpoint managers; `close` closes
        them."""
        self.writers = [metrics.MetricWriter(m.rundir, m.config.tensorboard, self.start,
                                             self.timing.t0) for m in self.members]  # fmt: skip
        self.bar = metrics.progress_bar(self.plan.num_steps, self.start, self.K, progress)
        self.ckpts = [ckpt_lib.Checkpointer(m.rundir.checkpoints, m.config.checkpoints_to_keep)
                      for m in self.members]  # fmt: skip

    def close(self) -> None:
        """Closes what `open` opened (any part of it; again is a no-op)."""
        if self.bar is not None:
            self.bar.close()
        while self.writers:
            self.writers.pop().close()
        while self.ckpts:
            self.ckpts.pop().__exit__(None, None, None)

    def run_chunk(self, compiled: Any, n: int, trace: profile_lib.Window) -> tuple[Any, float]:
        """Trains steps `at .. at + n - 1` of every member: (their stats, seconds taken)."""
        t = time.time()
        with trace.around(self.at, n):
            self.state, stats = compiled(self.state, self.images, self.labels, self.rows,
                                         self.at, n)  # fmt: skip
            stats = jax.device_get(stats)  # Also waits for the chunk to finish.
        elapsed = time.time() - t
        self.timing.train_s += elapsed
        self.at += n
        self.steps += n
        return stats, elapsed

    def check_divergence(self, stats: dict[str, Any]) -> None:
        """Drops each member whose loss turned non-finite; its results.json records the step
        and its last good checkpoint is kept."""
        for k in self.live():
            bad = int(np.asarray(stats["nonfinite_step"]).reshape(-1)[k])
            if bad < 0:
                continue
            self.diverged[k] = bad
            m = self.members[k]
            m.rundir.update_results({"diverged": metrics.diverged_record(bad)})
            if self.K > 1:
                logging.warning("%sdiverged at step %d; the other members go on", m.tag, bad)

    def save(self, step: int) -> None:
        """Checkpoints every live member at `step` (asynchronously: `wait` waits)."""
        for k in self.live():
            self.ckpts[k].save(step, self.member_state(k))

    def wait(self) -> None:
        for ck in self.ckpts:
            ck.wait()

    def unlock(self) -> None:
        for m in self.members:
            m.rundir.unlock()

    def eval_split(self, variables: Any, split: EvalSplit) -> dict[str, Any]:
        """The evaluation sums (numpy) of one split, {} for an empty one; `scores` makes them
        metrics."""
        if split.size == 0:
            return {}
        t = time.time()
        sums = jax.device_get(self.evaluate(variables, split.images, split.labels, split.size))
        self.timing.eval_s += time.time() - t
        return sums

    def log_start(self) -> None:
        c, p, names = self.config, self.p, ", ".join(m.name for m in self.members if m.name)
        logging.info(
            "model %s: %d parameters; %d steps of batch %d on %d device(s)%s%s; compiled in %.2fs",
            c.model.name, models.count_params(self.member_state(0).params), self.plan.num_steps,
            c.batch_size, p.num_devices,
            f" ({p.member_groups} member groups)" if p.member_groups > 1 else "",
            f"; members {names}" if names else "", self.timing.compile_s,
        )  # fmt: skip


def log_period(g: Group, step: int, examples_per_sec: float) -> None:
    """After a period: scores the train subset and validation of every live member into its
    metrics.jsonl and the log, then restarts the train loss sum."""
    for k in g.live():
        m, state = g.members[k], g.member_state(k)
        line = [f"{m.tag}step {step}/{g.plan.num_steps}"]
        for name, split in g.splits[m.config.seed].items():
            sums = g.eval_split(step_lib.variables_of(state), split)
            if not sums:
                continue
            s = scores.scalars(sums)
            extra = {}
            if name == "train":  # The mean loss of the steps since the last train row.
                extra = {"batch_loss": float(state.loss_sum) / (step - g.summed_from[k]),
                         "learning_rate": g.lr[k](state.opt_state, step),
                         "examples_per_sec": examples_per_sec}  # fmt: skip
            g.writers[k].write(step, name, **s, **extra)
            line.append(f"{name} loss {s['log_loss']:.4f} acc {100 * s['accuracy']:.2f}%")
        line.append(f"{examples_per_sec:,.0f} ex/s")
        g.bar.set_postfix_str(" | ".join(line[1:-1]))
        g.bar.log(" | ".join(line))
    g.state = g.state.replace(loss_sum=jnp.zeros_like(g.state.loss_sum))
    g.summed_from = [step] * g.K


def final_outcomes(g: Group) -> list[Outcome]:
    """Scores every live member (validation and test in full, train on the periods' subset of
    `eval_train_examples`) and writes its results.json; a diverged member's outcome is its
    divergence."""
    out = []
    for k, m in enumerate(g.members):
        if k in g.diverged:
            out.append(Outcome(m, {"diverged": metrics.diverged_record(g.diverged[k])}))
            continue
        state, ds = g.member_state(k), g.datasets[m.config.seed]
        v = step_lib.variables_of(state)
        final = {
            "train": g.eval_split(v, g.splits[m.config.seed]["train"]),
            "validation": g.eval_split(v, g.splits[m.config.seed]["validation"]),
            "test": g.eval_split(v, g.test),
        }
        g.timing.wall_s = time.time() - g.timing.t0
        results = metrics.summarize(m.config, ds, g.plan, state, final, g.timing, g.steps)
        results["sweep_group_size"] = g.K
        results["resumed_from_step"] = g.start or None
        if m.config.augment.tta_shift:
            results["tta"] = _tta(g, v, m, results["final"])
        m.rundir.write_json("results.json", results)
        g.writers[k].final(m.config, results)
        out.append(Outcome(m, results, state.params, ds, g.model, state.model_state))
    return out


def _tta(g: Group, variables: Any, m: Member, final: dict[str, Any]) -> dict[str, Any]:
    """The final validation and test scores with test-time shifts (`config.augment.tta_shift`)."""
    splits = {"validation": g.splits[m.config.seed]["validation"], "test": g.test}
    t = time.time()
    out = evaluate.tta_scores(g.model, variables, splits, m.config.augment.tta_shift)
    g.timing.eval_s += time.time() - t
    if "test" in out:
        logging.info("%stest-time shifts of %d px: test accuracy %.2f%% (without: %.2f%%)",
                     m.tag, out["shift"], 100 * out["test"]["accuracy"],
                     100 * final["test"]["accuracy"])  # fmt: skip
    return out


def raise_diverged(g: Group) -> None:
    """A single run has no other members to go on with: it stops with an error."""
    bad, last = g.diverged[0], g.ckpts[0].latest_step()
    kept = f"the last good checkpoint (step {last}) is kept" if last else "no checkpoint yet"
    lr = g.members[0].config.optimizer.learning_rate
    raise Diverged(
        f"training diverged: non-finite loss at step {bad} (learning rate {lr} too high?); {kept}"
    )
