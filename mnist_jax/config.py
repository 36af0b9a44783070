"""The base config that every file in `configs/` overrides, and its validation.

The base lives in the package (not in `configs/`) so that config files import it from anywhere,
whatever the current directory. `validate` runs before any data is read or anything compiled.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from mnist_jax.data import SOURCES
from mnist_jax.errors import UserError
from mnist_jax.models import KERNEL_INITS, MODELS
from mnist_jax.optim import OPTIMIZERS, SCHEDULES

# Fields that may differ when a run is resumed: they change how long or how observably a run
# trains, never what a given step computes.
RESUMABLE_FIELDS = frozenset(
    {
        "num_steps",
        "num_epochs",
        "num_periods",
        "steps_per_call",
        "eval_batch_size",
        "checkpoint_every_steps",
        "checkpoints_to_keep",
        "tensorboard",
        "plots",
        "data.dir",
        "data.train_file",
        "data.test_file",
    }
)


def get_config() -> ml_collections.ConfigDict:
    """Defaults: a one-hidden-layer MLP trained with clipped Adagrad (TF1 settings)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 100
    c.num_steps = 1000  # Set one of num_steps and num_epochs; the other stays 0.
    c.num_epochs = 0.0
    c.num_periods = 10  # Train/validation metrics are computed after each period.
    c.steps_per_call = 0  # Steps fused into one jitted call; 0: up to the next period end.
    c.eval_batch_size = 10_000
    c.eval_train_examples = 10_000  # Train examples scored each period (fixed subset; 0: all).
    c.checkpoint_every_steps = 0  # 0: at the end of every period.
    c.checkpoints_to_keep = 3
    c.tensorboard = True
    c.plots = True  # Write plots/ and report.md at the end (python -m mnist_jax.plot later).

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.hidden_units = (128,)
    c.model.dropout_rate = 0.0
    c.model.kernel_init = "glorot_uniform"
    c.model.conv_features = (32, 64)  # cnn: filters of each 5x5 conv + 2x2 max-pool layer.
    c.model.conv_impl = "auto"  # cnn: native | slices | auto (slices on CPU, native elsewhere).

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adagrad"
    c.optimizer.learning_rate = 0.05
    c.optimizer.clip_norm = 5.0  # Global-norm clipping over all parameters; 0 disables it.
    c.optimizer.initial_accumulator_value = 0.1  # Adagrad: TF1's starting accumulator.
    c.optimizer.eps = 0.0  # Adagrad: TF1 adds no epsilon.
    c.optimizer.momentum = 0.0  # SGD only.
    c.optimizer.weight_decay = 0.0  # Added to the gradient (L2), before clipping.
    c.optimizer.schedule = "constant"  # constant | warmup_cosine | one_cycle | linear
    c.optimizer.warmup_fraction = 0.0  # Fraction of the steps spent warming up to the peak.
    c.optimizer.final_lr_fraction = 0.0  # warmup_cosine, linear: end rate / peak rate.

    c.data = ml_collections.ConfigDict()
    c.data.source = "auto"  # auto | mnist | idx | csv | tfds | sample
    c.data.dir = ""  # IDX files (idx, mnist) or tfds's manual_dir (tfds).
    c.data.train_file = ""  # csv source.
    c.data.test_file = ""  # csv source.
    c.data.tfds_name = "mnist"  # tfds source: mnist, fashion_mnist, kmnist, ...
    c.data.validation_size = 5000.0  # A count, or a fraction of the training set if < 1.
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a UserError naming the first bad field, before any data or compile work."""

    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise UserError(f"config.{field}={_get(config, field)!r}: {why}")

    need(config.batch_size > 0, "batch_size", "must be positive")
    need(config.num_steps >= 0, "num_steps", "must be positive")
    need(config.num_epochs >= 0, "num_epochs", "must be positive")
    if (config.num_steps > 0) == (config.num_epochs > 0):
        raise UserError(
            f"set exactly one of config.num_steps ({config.num_steps}) and config.num_epochs "
            f"({config.num_epochs}); set the other to 0"
        )
    need(config.num_periods > 0, "num_periods", "must be positive")
    need(config.steps_per_call >= 0, "steps_per_call", "must be 0 (one period) or positive")
    need(config.eval_batch_size > 0, "eval_batch_size", "must be positive")
    need(config.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must be 0 or positive")
    need(config.checkpoints_to_keep > 0, "checkpoints_to_keep", "must be positive")

    m = config.model
    need(m.name in MODELS, "model.name", f"choose one of {', '.join(MODELS)}")
    need(m.kernel_init in KERNEL_INITS, "model.kernel_init", f"choose one of {list(KERNEL_INITS)}")
    if m.name == "mlp":
        units = tuple(m.hidden_units) if isinstance(m.hidden_units, (tuple, list)) else ()
        need(
            len(units) > 0 and all(isinstance(u, int) and u > 0 for u in units),
            "model.hidden_units",
            "must be a non-empty tuple of positive ints, e.g. '(512, 256)'",
        )
    need(0 <= m.dropout_rate < 1, "model.dropout_rate", "must be in [0, 1)")

    o = config.optimizer
    need(o.name in OPTIMIZERS, "optimizer.name", f"choose one of {', '.join(OPTIMIZERS)}")
    need(o.learning_rate > 0, "optimizer.learning_rate", "must be positive")
    need(o.clip_norm >= 0, "optimizer.clip_norm", "must be 0 (no clipping) or positive")
    need(o.initial_accumulator_value >= 0, "optimizer.initial_accumulator_value", "must be >= 0")
    need(o.eps >= 0, "optimizer.eps", "must be >= 0")
    if o.name == "adagrad":
        need(
            o.initial_accumulator_value > 0 or o.eps > 0,
            "optimizer.initial_accumulator_value",
            "adagrad divides by zero unless this or optimizer.eps is positive",
        )
    need(0 <= o.momentum < 1, "optimizer.momentum", "must be in [0, 1)")
    need(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(o.schedule in SCHEDULES, "optimizer.schedule", f"choose one of {', '.join(SCHEDULES)}")
    need(0 <= o.warmup_fraction < 1, "optimizer.warmup_fraction", "must be in [0, 1)")
    need(0 <= o.final_lr_fraction <= 1, "optimizer.final_lr_fraction", "must be in [0, 1]")

    d = config.data
    need(d.source in SOURCES, "data.source", f"choose one of {', '.join(SOURCES)}")
    need(d.validation_size >= 0, "data.validation_size", "must be >= 0")


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-safe nested dict (tuples become lists)."""
    return json.loads(config.to_json())


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields whose values differ between two `to_dict` configs."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def from_dict(d: Any, where: str = "config") -> ml_collections.ConfigDict:
    """A config saved as JSON by a run, back as a ConfigDict (lists become tuples); fields
    added since it was saved take their defaults."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object, found {type(d).__name__}")

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(x) if isinstance(x, list) else x

    base = to_dict(get_config())
    merged = {**flatten(base), **flatten(tuples(d))}
    out: dict[str, Any] = {}
    for dotted, value in merged.items():
        target = out
        *path, last = dotted.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return ml_collections.ConfigDict(tuples(out))
