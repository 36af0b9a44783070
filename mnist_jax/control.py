"""When a run stops: its plan of evaluations and checkpoints, the stop signal, and where the
time went. Plain host-side bookkeeping that the driver consults between jitted calls."""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any

import ml_collections
from absl import logging

from mnist_jax import config as config_lib
from mnist_jax.errors import STOP_SIGNALS, UserError


@dataclasses.dataclass
class Plan:
    """When a run evaluates and checkpoints."""

    num_steps: int
    eval_steps: list[int]
    checkpoint_steps: list[int]

    def next_stop(self, step: int) -> int:
        """The first evaluation or checkpoint step after `step`."""
        return min(s for s in [*self.eval_steps, *self.checkpoint_steps] if s > step)


def make_plan(config: ml_collections.ConfigDict, num_train: int, max_epochs: float = 0) -> Plan:
    """Resolves num_steps (or num_epochs) and the evaluation/checkpoint schedule; `max_epochs`
    (the sample fallback's cap) shortens a longer run, and says so."""
    num_steps = config_lib.num_train_steps(config, num_train)
    capped = max(1, round(max_epochs * (num_train // config.batch_size)))
    if max_epochs and num_steps > capped:
        logging.warning(
            "training %d steps (%g epochs of the sample) instead of %d: data.sample_max_epochs "
            "caps a run that fell back to the sample; full MNIST trains the config as written",
            capped, max_epochs, num_steps,
        )  # fmt: skip
        num_steps = capped
        config = config.copy_and_resolve_references()
        config.num_periods = min(config.num_periods, num_steps)
    if config.num_periods > num_steps:
        raise UserError(
            f"config.num_periods={config.num_periods} exceeds the {num_steps} training steps"
        )
    evals = [num_steps * (p + 1) // config.num_periods for p in range(config.num_periods)]
    every = config.checkpoint_every_steps
    ckpts = [*range(every, num_steps, every), num_steps] if every else list(evals)
    return Plan(num_steps, evals, ckpts)


class StopSignal:
    """Turns the `STOP_SIGNALS` into a flag checked between jitted calls (main thread only);
    a signal the process ignores (nohup, `cmd &`) stays ignored. The handlers it replaced are
    put back on exit, whatever the way out."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclasses.dataclass
class Timing:
    """Seconds spent in each phase of a command (`wall_s` from `t0`)."""

    t0: float
    startup_s: float = 0.0
    data_s: float = 0.0
    compile_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    plots_s: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in dataclasses.asdict(self).items() if k != "t0"}
