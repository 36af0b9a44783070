"""Tracing training steps with `jax.profiler`: `config.profile_steps` steps after warm-up.

The command's first chunk is the warm-up (the first execution of the compiled program). The
trace starts at the step after it and covers exactly `profile_steps` steps, in the chunks the
driver would run anyway, cut at the window's end: the trace shows training as it runs (the
per-epoch gather amortised over a chunk, not repeated per step as one-step calls would).
Each call is one `jax.profiler.StepTraceAnnotation("train", step_num=first, num_steps=n)`
(steps numbered as in step.py: the state's step before it); TensorBoard's step-time view
counts such a call as one step. The results are the same bits with or without a trace: a
step's result does not depend on how steps are grouped into calls (see step.py). The trace is
written to `<workdir>/profile/` (`plugins/profile/<time>/<host>.xplane.pb` for TensorBoard's
profile plugin, `perfetto_trace.json.gz` for ui.perfetto.dev); a sweep group's trace goes to
its first member's workdir.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import jax
import ml_collections
from absl import logging

from mnist_jax.control import Plan
from mnist_jax.errors import UserError
from mnist_jax.rundir import RunDir

PROFILE_DIR = "profile"
FIRST_CHUNK = 1  # The driver's first chunk when steps_per_call is 0 (then sized by time).


def first_chunk(config: ml_collections.ConfigDict, plan: Plan, start: int) -> int:
    """Steps of a command's first chunk from `start` (the warm-up before the trace)."""
    return min(plan.next_stop(start) - start, config.steps_per_call or FIRST_CHUNK)


def check(config: ml_collections.ConfigDict, plan: Plan, start: int, rundir: RunDir) -> None:
    """Refuses, before anything is written, a trace that does not fit in the steps left after
    the first chunk, or a `profile` entry that is not a directory in the workdir."""
    steps = config.profile_steps
    if not steps:
        return
    warm = start + first_chunk(config, plan, start)
    if warm + steps > plan.num_steps:
        raise UserError(
            f"config.profile_steps={steps}: the trace starts after the first chunk (step {warm})"
            f" and only {plan.num_steps - warm} of {plan.num_steps} steps are left; lower it"
        )
    path = rundir.file(PROFILE_DIR)  # A link out of the workdir is refused.
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is not a directory; move it away to keep traces there")


class Window:
    """The steps a command traces; consulted by the driver around each jitted call."""

    def __init__(self, steps: int, directory: Path):
        self.steps, self.directory = steps, directory
        self.start: int | None = None  # The first traced step, once the first chunk ran.
        self.tracing = False

    def clip(self, step: int, n: int) -> int:
        """The length of the chunk from `step` (`n` wanted): no chunk crosses the window's end
        (the first chunk ends where the window starts)."""
        if self.start is not None and self.start <= step < self.end:
            return min(n, self.end - step)
        return n

    @contextlib.contextmanager
    def around(self, step: int, n: int) -> Iterator[None]:
        """The call of steps `step .. step + n - 1`: traced and annotated inside the window."""
        if not self.steps or self.start is None or not self.start <= step < self.end:
            yield
            if self.steps and self.start is None:
                self.start = step + n
            return
        if not self.tracing:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.tracing = True
        with jax.profiler.StepTraceAnnotation("train", step_num=step, num_steps=n):
            yield
        if step + n >= self.end:
            self.close()

    @property
    def end(self) -> int:
        return (self.start or 0) + self.steps

    def close(self) -> None:
        """Stops the trace (writing its files) if one is running."""
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
            logging.info("traced steps %d to %d into %s", self.start, self.end - 1, self.directory)
