"""The config's fields outside the models, in one table: default, rule, one-line description
and policies of each (the model families declare theirs; `config.FIELDS` joins the two).

A rule checks one value: type, finiteness, range and representability.

Numbers reach the device as float32 and int32 (step counters, batch shapes), so a value that is
fine in Python but overflows there, or that float32 flushes to zero, is rejected up front.
A rule returns None when a value is good, else why it is not (the end of a one-line error).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # Smallest normal float32; XLA flushes below.

Rule = Callable[[Any], "str | None"]


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One config field: dotted name, default, rule, one-line description, and its policies.

    `resumable`: may change when a run resumes (it changes how long or how observably a run
    trains, not what a given step computes; resume.check_same_steps refuses the cases where it
    would). `per_member`: may differ between the members of one sweep program (a value in the
    train state, not a shape or a loop); `structure` then maps the value to what fixes the
    optimizer state's structure, on which those members must agree. `owner`: the model family
    that owns the field (None: not a model's)."""

    name: str
    default: Any
    check: Rule
    doc: str
    resumable: bool = False
    per_member: bool = False
    structure: Callable[[Any], Any] | None = None
    owner: str | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def Int(lo: int = 0, hi: int = INT32_MAX) -> Rule:
    """An integer in [lo, hi]; hi defaults to int32's maximum."""

    def check(v: Any) -> str | None:
        if not _is_int(v):
            return f"must be an integer, not {type(v).__name__}"
        if not lo <= v <= hi:
            if lo == 1 and hi == INT32_MAX:
                return f"must be positive (1 to {hi}, int32)"
            if lo == 0 and hi == INT32_MAX:
                return f"must be 0 or positive (at most {hi}, int32)"
            return f"must be in [{lo}, {hi}]"
        return None

    return check


def Float(
    lo: float = 0.0,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    float32: bool = True,
) -> Rule:
    """A finite real number in the interval; with `float32`, also one that float32 holds
    without overflowing or flushing a nonzero value to zero."""

    def check(v: Any) -> str | None:
        if not _is_real(v):
            return f"must be a number, not {type(v).__name__}"
        v = float(v)
        if not math.isfinite(v):
            return "must be finite"
        below = v <= lo if lo_open else v < lo
        above = v >= hi if hi_open else v > hi
        if below or above:
            if lo_open and hi == math.inf:
                return "must be positive"
            if hi == math.inf:
                return f"must be >= {_num(lo)}"
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            return f"must be in {left}{_num(lo)}, {_num(hi)}{right}"
        if float32 and abs(v) > FLOAT32_MAX:
            return f"overflows float32 (largest {FLOAT32_MAX:.3g})"
        if float32 and v != 0 and abs(v) < FLOAT32_TINY:
            return f"is below float32's smallest normal number ({FLOAT32_TINY:.3g}) and trains as 0"
        return None

    return check


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def Bool() -> Rule:
    """True or False (not 0/1)."""
    return lambda v: None if isinstance(v, (bool, np.bool_)) else "must be True or False"


def Str() -> Rule:
    """Any string (a path, a name checked elsewhere)."""
    return lambda v: None if isinstance(v, str) else f"must be a string, not {type(v).__name__}"


def Choice(options: Callable[[], Sequence[str]]) -> Rule:
    """One of `options()` (a function, so that the optimizer and data tables load lazily)."""

    def check(v: Any) -> str | None:
        choices = list(options())
        return (
            None if isinstance(v, str) and v in choices else f"choose one of {', '.join(choices)}"
        )

    return check


def IntTuple(hi: int) -> Rule:
    """A tuple (or list) of integers in [1, hi]; possibly empty (the model decides)."""

    def check(v: Any) -> str | None:
        ok = isinstance(v, (tuple, list)) and all(_is_int(u) and 1 <= u <= hi for u in v)
        return None if ok else f"must be a tuple of integers from 1 to {hi}, e.g. '(512, 256)'"

    return check


F = FieldSpec


def _positive(v: Any) -> bool:
    """Whether clipping or weight decay is on: it adds a stage to the optimizer's state."""
    return v > 0


MAX_UNITS = 65_536  # Per layer: wider is a typo, not an experiment (and would not fit memory).


def _optimizers() -> tuple[str, ...]:
    from mnist_jax import optim

    return optim.OPTIMIZERS


def _schedules() -> tuple[str, ...]:
    from mnist_jax import optim

    return optim.SCHEDULES


def _sources() -> tuple[str, ...]:
    from mnist_jax import data

    return data.SOURCES


def _dataset_names() -> tuple[str, ...]:
    from mnist_jax import datasets

    return datasets.NAMES


# The base config: every field, its default, its rule and its one-line description.
FIELDS: tuple[FieldSpec, ...] = (
    F(
        "seed",
        0,
        Int(0),
        "Seed of every random stream: init, dropout, data order, validation split.",
        per_member=True,
    ),
    F("batch_size", 100, Int(1), "Training examples per step."),
    F(
        "num_steps",
        1000,
        Int(0),
        "Training steps; set this or num_epochs, the other stays 0.",
        resumable=True,
    ),
    F(
        "num_epochs",
        0.0,
        Float(0, INT32_MAX, float32=False),
        "Passes over the training split (if num_steps is 0).",
        resumable=True,
    ),
    F(
        "num_periods",
        10,
        Int(1),
        "Train/validation metrics are computed after each period.",
        resumable=True,
    ),
    F(
        "steps_per_call",
        0,
        Int(0),
        "Steps fused into one jitted call; 0: one, then sized from the step time to about 1 s.",
        resumable=True,
    ),
    F("eval_batch_size", 10_000, Int(1), "Examples per evaluation batch.", resumable=True),
    F(
        "eval_train_examples",
        10_000,
        Int(0),
        "Train examples scored each period and at the end (a fixed subset; 0: all).",
    ),
    F(
        "checkpoint_every_steps",
        0,
        Int(0),
        "Checkpoint cadence in steps; 0: at the end of every period.",
        resumable=True,
    ),
    F("checkpoints_to_keep", 3, Int(1), "Most recent checkpoints kept on disk.", resumable=True),
    F(
        "tensorboard",
        True,
        Bool(),
        "Write TensorBoard event files to workdir/tensorboard.",
        resumable=True,
    ),
    F(
        "profile_steps",
        0,
        Int(0),
        "Steps traced with jax.profiler into workdir/profile after the first chunk; 0: off.",
        resumable=True,
    ),
    F(
        "plots",
        True,
        Bool(),
        "Write plots/ and report.md at the end (python -m mnist_jax.plot later).",
        resumable=True,
    ),
    F("optimizer.name", "adagrad", Choice(_optimizers), "The update rule."),
    F(
        "optimizer.learning_rate",
        0.05,
        Float(0, lo_open=True),
        "Learning rate (the schedule's peak).",
        per_member=True,
    ),
    F(
        "optimizer.clip_norm",
        5.0,
        Float(0),
        "Global-norm clipping over all parameters; 0 disables it.",
        per_member=True,
        structure=_positive,
    ),
    F("optimizer.initial_accumulator_value", 0.1, Float(0), "adagrad: TF1's starting accumulator."),
    F(
        "optimizer.eps",
        0.0,
        Float(0),
        "adagrad/adam: epsilon added to the denominator (TF1's adagrad: 0).",
    ),
    F("optimizer.momentum", 0.0, Float(0, 1, hi_open=True), "sgd: momentum (0: plain SGD)."),
    F(
        "optimizer.weight_decay",
        0.0,
        Float(0),
        "L2 term added to the gradient, before clipping.",
        per_member=True,
        structure=_positive,
    ),
    F("optimizer.schedule", "constant", Choice(_schedules), "Learning-rate schedule."),
    F(
        "optimizer.warmup_fraction",
        0.0,
        Float(0, 1, hi_open=True),
        "Fraction of the steps spent warming up to the peak.",
    ),
    F(
        "optimizer.final_lr_fraction",
        0.0,
        Float(0, 1),
        "warmup_cosine, linear: end rate / peak rate.",
    ),
    F(
        "augment.max_shift",
        0,
        Int(0, 27),
        "Training: shift each image up to this many whole pixels in x and y (zero fill); 0: off.",
    ),
    F(
        "augment.max_rotation",
        0.0,
        Float(0, 180),
        "Training: rotate each image about its centre by a random angle up to this (degrees).",
    ),
    F(
        "augment.max_scale",
        0.0,
        Float(0, 1, hi_open=True),
        "Training: scale each image by a random factor in [1 - this, 1 + this].",
    ),
    F(
        "augment.elastic_alpha",
        0.0,
        Float(0),
        "Training: elastic distortion (Simard et al. 2003) strength in pixels (they use 34).",
    ),
    F(
        "augment.elastic_sigma",
        0.0,
        Float(0),
        "Training: smoothness of the elastic field, a Gaussian's std in pixels (Simard: 4).",
    ),
    F(
        "augment.tta_shift",
        0,
        Int(0, 27),
        'Final eval: also score the mean softmax of 5 copies shifted this far ("tta"); 0: off.',
        resumable=True,
    ),
    F(
        "data.source",
        "auto",
        Choice(_sources),
        "auto (data.name if found; MNIST: else downloaded or the sample) | mnist | idx | csv | "
        "tfds | sample",
    ),
    F(
        "data.name",
        "mnist",
        Choice(_dataset_names),
        "The MNIST-family set whose original IDX files are read (idx, mnist, auto).",
    ),
    F(
        "data.dir",
        "",
        Str(),
        "Directory of the IDX files (idx, mnist, auto) or tfds's manual_dir (tfds).",
        resumable=True,
    ),
    F(
        "data.train_file",
        "",
        Str(),
        "csv: training CSV (label,784 pixels per row, no header).",
        resumable=True,
    ),
    F("data.test_file", "", Str(), "csv: test CSV, same layout.", resumable=True),
    F("data.tfds_name", "mnist", Str(), "tfds: dataset name (mnist, fashion_mnist, kmnist, ...)."),
    F(
        "data.validation_size",
        5000.0,
        Float(0, float32=False),
        "Held-out training examples: a count, or a fraction if < 1.",
    ),
    F(
        "data.validation_split",
        "random",
        Choice(lambda: VALIDATION_SPLITS),
        "random: a random hold-out | last: the last rows of the training file.",
    ),
    F(
        "data.sample_max_epochs",
        20.0,
        Float(0),
        "auto falling back to the sample: train at most this many epochs (0: no cap).",
    ),
)
VALIDATION_SPLITS = ("random", "last")
