"""The one run driver: a single run is a group of one member, a sweep group is K members.

`run(members)` reads top to bottom, for every kind of run (single, sweep group, sharded,
multi-process):
  set up     validate; load the data; the plan of steps; the model
  restore    check each run directory and restore its checkpoint (read only); then, the command
             going on, lock and write config.json and run.json
  train      per start step, one group: compile one chunk program, then chunks of steps with
             the period's evaluation, checkpoints, divergence and stop signals between them
  finish     the last checkpoint, the final evaluation, results.json (figures: `api.finish`)

Members share one program: their state is stacked on a leading member axis and the pure
`step.train_chunk` is mapped (`lax.map`, bit-identical to a single run; the CPU default) or
vmapped (members in parallel; the accelerator default) over it. A member whose loss turns
non-finite is dropped: its results.json records the step, its last good checkpoint is kept, and
the others go on; a single run, having no others, stops with an error. Members that stopped
at different steps train as one group per start step, one after another, each with what the
caller allowed. On several devices the member axis is split over them
(`sharding.Placement.for_members`).

The first chunk is one step; later ones are sized from the measured step time to take about
`CHUNK_SECONDS`, so once training has started a SIGTERM or SIGINT is honoured within about
that long, or one step where a step is longer (plus any periodic evaluation it lands in),
whatever the config: every live member is checkpointed at the current step and the process
exits 128+signal. A signal after the last step lets the run write its results first.
"""

from __future__ import annotations

import dataclasses
import signal
import time

from mnist_jax import (
    config as config_lib,
    data as data_lib,
    distributed,
    models,
    optim,
    profile as profile_lib,
    resume,
    step as step_lib,
)
from mnist_jax.control import StopSignal, Timing, make_plan
from mnist_jax.errors import Interrupted
from mnist_jax.group import (
    Group,
    Member,
    Outcome,
    Setup,
    final_outcomes,
    log_period,
    raise_diverged,
)
from mnist_jax.sharding import Placement

__all__ = ["CHUNK_SECONDS", "Member", "Outcome", "run"]

CHUNK_SECONDS = 1.0  # Target length of one jitted call: bounds the latency of a stop signal.


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
    """Trains `members` (configs that differ only in per_member fields of the table) as one program;
    each resumes from its own latest checkpoint. Returns one Outcome per member: first those
    with nothing to do (finished, or a sweep's diverged member), then the trained ones."""
    timing = Timing(time.time() if t0 is None else t0)
    timing.startup_s = time.time() - timing.t0
    for m in members:
        _check_member(m)
    setup, record = _set_up(members, data_cache, placement or Placement(), timing)
    done, todo, states = _restore_and_claim(
        members, setup, record, allow_config_change, fallback_checkpoint
    )
    try:  # Members that stopped at different steps train as one group per start step.
        for at in sorted({int(s.step) for s in states}):
            same = [k for k, s in enumerate(states) if int(s.step) == at]
            group = Group([todo[k] for k in same], [states[k] for k in same], setup,
                          dataclasses.replace(timing))  # fmt: skip
            done += _train_group(group, vectorize, progress)
    finally:
        for m in todo:
            m.rundir.unlock()
    return done


# ----------------------------------------------------------------------------- set up


def _check_member(m: Member) -> None:
    """The config validated and made as recorded (data and model file paths absolute, the
    model file's SHA-256, a module given from Python named: config.json names them whatever the
    reader's cwd), and the directory one this command may train in (read only)."""
    config_lib.validate(m.config)
    m.config, m.model = config_lib.as_recorded(m.config, m.model)
    m.rundir.check_writable()
    m.rundir.check_kind("member" if m.name else "run")  # A run: not in a sweep's dir.


def _set_up(members: list[Member], data_cache: dict | None, placement: Placement,
            timing: Timing) -> tuple[Setup, dict]:  # fmt: skip
    """The data (one train/validation split per seed, as a single run makes it), the plan,
    the model; and the run record (run.json) that a resume must match."""
    first = members[0].config
    t = time.time()
    train_full, test, source, location = data_lib.load_cached(first.data, data_cache)
    datasets = {}
    for seed in dict.fromkeys(m.config.seed for m in members):
        datasets[seed] = data_lib.make_dataset(
            train_full, test, source, location, first.data.validation_size,
            step_lib.rng_stream(seed, step_lib.SPLIT),
            validation_split=first.data.validation_split,
            class_names=data_lib.class_names(first.data),
        )  # fmt: skip
    timing.data_s = time.time() - t
    num_train = len(datasets[first.seed].train)
    cap = first.data.sample_max_epochs if (first.data.source, source) == ("auto", "sample") else 0
    plan = make_plan(first, num_train, max_epochs=cap)
    # What the steps are computed over; a resume must match it (resume.check_same_steps).
    record = {"num_steps": plan.num_steps, "data": data_lib.fingerprint(train_full, test, source)}
    # A module given to mj.train (Member.model) is the model; else config.model names it.
    model = models.create_model(first.model, datasets[first.seed].num_classes, members[0].model)
    placement.check_batch(first.batch_size, num_train)
    return Setup(datasets, train_full, test, plan, model, placement), record


# ----------------------------------------------------------------------------- restore


def _restore_and_claim(members, setup, record, allow_config_change, fallback_checkpoint):
    """Every member checked and restored before anything is written; then each one to train
    claims its directory and writes its config.json and run.json. Returns (the outcomes of
    members with nothing to do, the members to train, still locked, and their states)."""
    try:
        done, todo, states, skipped = [], [], [], {}
        for m in members:
            m.rundir.lock()
            tx = optim.make_optimizer(m.config.optimizer, setup.plan.num_steps)
            start = resume.start(
                m.rundir, m.config, setup.model, tx, setup.plan.num_steps, record=record,
                allow_change=allow_config_change, fallback=fallback_checkpoint,
                keep_diverged=len(members) > 1, tag=m.tag,
            )  # fmt: skip
            if start.state is None:  # Finished, or a sweep's diverged member.
                done.append(Outcome(m, start.results, model=setup.model))
                m.rundir.unlock()
                continue
            skipped[m.rundir.path] = start.skipped
            states.append(start.state)
            todo.append(m)
        if states:  # Where the trace would start is known now, before anything is written.
            profile_lib.check(members[0].config, setup.plan, int(states[0].step), todo[0].rundir)
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
    return done, todo, states


# ----------------------------------------------------------------------------- train


def _train_group(g: Group, vectorize: str, progress: bool | None) -> list[Outcome]:
    """Compiles and trains one group to the end; whatever the way out, closes what it opened
    (bar, writers, checkpoint managers, a profiler trace) and unlocks its members."""
    trace = profile_lib.Window(g.config.profile_steps, g.members[0].rundir.file("profile"))
    try:
        compiled = g.compile(vectorize)
        g.open(progress)
        # Training starts: from here on signals stop it; over the closing too (a late
        # signal waits for the unlock).
        with StopSignal() as stop:
            g.log_start()
            try:
                _train_chunks(g, compiled, stop, trace)
                return _finish(g, stop)
            finally:
                trace.close()
                g.close()
    except Exception as e:  # A collective (or orbax's save) that lost a dead peer.
        distributed.raise_if_peer_lost(e, g.at)
        raise
    finally:
        trace.close()
        g.close()
        g.unlock()


def _train_chunks(g: Group, compiled, stop: StopSignal, trace: profile_lib.Window) -> None:
    """Chunks of steps up to num_steps; between two, in this order: the divergence check, the
    period's evaluation, the checkpoint, and the stop signal (any process's stops them all)."""
    c, plan = g.config, g.plan
    # One step first (a heavy config's step can take seconds), then sized from its time.
    chunk_len = c.steps_per_call or profile_lib.FIRST_CHUNK
    period_steps, period_time = 0, 0.0  # For the period's examples per second.
    while g.at < plan.num_steps and g.live():
        n = trace.clip(g.at, min(plan.next_stop(g.at) - g.at, chunk_len))
        stats, elapsed = g.run_chunk(compiled, n, trace)
        step = g.at
        period_steps, period_time = period_steps + n, period_time + elapsed
        if not c.steps_per_call:  # Every process runs the same chunks: the shortest wins.
            chunk_len = max(1, int(n * CHUNK_SECONDS / max(elapsed, 1e-6)))
            chunk_len = distributed.min_over_processes(chunk_len)
        g.check_divergence(stats)
        if step in plan.eval_steps:  # Before the save: it resets state.loss_sum.
            log_period(g, step, period_steps * c.batch_size * g.K / max(period_time, 1e-9))
            period_steps, period_time = 0, 0.0
        if step in plan.checkpoint_steps:
            g.save(step)
        g.bar.update(n)
        last = step == plan.num_steps  # A signal now lets the results be written.
        if not last and distributed.any_process(stop.signum is not None):
            g.save(step)
            _stopped(g, stop.signum, f"at step {step}; checkpoint saved: rerun the same "
                     "command to resume")  # fmt: skip


# ----------------------------------------------------------------------------- finish


def _finish(g: Group, stop: StopSignal) -> list[Outcome]:
    """The last checkpoint and final evaluation (results.json) of every live member; a single
    run that diverged stops with an error instead."""
    g.bar.close()
    if len(g.diverged) == g.K == 1:
        raise_diverged(g)
    g.save(g.plan.num_steps)
    outcomes = final_outcomes(g)
    if stop.signum is not None:  # After the last step: results are written.
        _stopped(g, stop.signum, "after the last step; results are written, plots skipped")
    g.wait()
    return outcomes


def _stopped(g: Group, signum: int | None, what: str) -> None:
    """Waits for the checkpoints, then raises Interrupted (a peer's signal: SIGTERM's)."""
    g.wait()
    sig = signum or signal.SIGTERM
    raise Interrupted(sig, f"stopped by {signal.Signals(sig).name} {what}")
