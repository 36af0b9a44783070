"""The optimizer: `[add_decayed_weights] -> [clip_by_global_norm] -> adagrad | sgd | adam`,
with a learning-rate schedule, and its hyperparameters injected into the optimizer state.

Learning rate (the schedule's peak), clip norm and weight decay live in the state, so a sweep
vmaps over them, a resumed run can replace them (`set_hyperparams`), and the driver logs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mnist_jax.errors import UserError

OPTIMIZERS = ("adagrad", "sgd", "adam")
SCHEDULES = ("constant", "warmup_cosine", "one_cycle", "linear")
INJECTED = ("learning_rate", "clip_norm", "weight_decay")


def clip_by_global_norm(max_norm: float | jax.Array) -> optax.GradientTransformation:
    """TF's `clip_by_global_norm`: all gradients times `max_norm / max(global_norm, max_norm)`.

    Kept instead of `optax.clip_by_global_norm` (same maths) because optax's
    `where(norm < max, g, g / norm * max)` rounds differently with a scalar and with a vmapped
    `max_norm`; one multiplication by a scale makes a sweep member equal its single run bitwise.
    """

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = max_norm / jnp.maximum(norm, max_norm)
        return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def unit_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The schedule's shape with peak 1 (optax schedules); the injected learning rate scales it,
    so sweeps still vary the peak as one number in the state."""
    warmup = round(opt.warmup_fraction * num_steps)
    end = float(opt.final_lr_fraction)
    if opt.schedule == "constant":
        return optax.constant_schedule(1.0)
    if opt.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, 1.0, warmup, max(num_steps, warmup + 1), end_value=end
        )
    if opt.schedule == "one_cycle":  # optax: cosine up from peak/25, cosine down to ~0.
        pct = max(min(warmup / max(num_steps, 1), 0.99), 1e-3)
        return optax.cosine_onecycle_schedule(
            max(num_steps, 1), 1.0, pct_start=pct, final_div_factor=1e4
        )
    if opt.schedule == "linear":  # Linear warmup, then linear decay to `end`.
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, 1.0, max(warmup, 1)),
                optax.linear_schedule(1.0, end, max(num_steps - warmup, 1)),
            ],
            [warmup],
        )
    raise UserError(f"unknown optimizer.schedule {opt.schedule!r}; choose one of {SCHEDULES}")


def make_optimizer(
    opt: ml_collections.ConfigDict, num_steps: int = 1
) -> optax.GradientTransformation:
    """The configured chain; `num_steps` (the run's length) scales the schedule."""
    name = opt.name
    shape = unit_schedule(opt, num_steps)

    def chain(learning_rate, clip_norm, weight_decay):
        parts = []
        if opt.weight_decay > 0:
            parts.append(optax.add_decayed_weights(weight_decay))
        if opt.clip_norm > 0:
            parts.append(clip_by_global_norm(clip_norm))
        lr: Any = learning_rate
        if opt.schedule != "constant":
            lr = lambda count: learning_rate * shape(count)  # noqa: E731
        if name == "adagrad":
            parts.append(
                optax.adagrad(
                    lr, initial_accumulator_value=opt.initial_accumulator_value, eps=opt.eps
                )
            )
        elif name == "sgd":
            parts.append(optax.sgd(lr, momentum=opt.momentum or None))
        elif name == "adam":
            parts.append(optax.adam(lr))
        else:
            raise UserError(f"unknown optimizer.name {name!r}; choose one of {OPTIMIZERS}")
        return optax.chain(*parts)

    return optax.inject_hyperparams(chain)(
        learning_rate=opt.learning_rate, clip_norm=opt.clip_norm, weight_decay=opt.weight_decay
    )


def structure(opt: ml_collections.ConfigDict) -> dict[str, Any]:
    """What fixes the optimizer state's structure: a resumed run cannot change these."""
    return {
        "optimizer.name": opt.name,
        "optimizer.schedule (constant or not)": opt.schedule == "constant",
        "optimizer.clip_norm (0 or not)": opt.clip_norm > 0,
        "optimizer.weight_decay (0 or not)": opt.weight_decay > 0,
    }


def current_learning_rate(
    opt: ml_collections.ConfigDict, num_steps: int
) -> Callable[[Any, int], float]:
    """(opt_state, step) -> the learning rate the step used: injected peak times the schedule
    (one jitted call: op by op, a schedule's few scalar ops took 0.1-0.2 s each period)."""
    shape = jax.jit(unit_schedule(opt, num_steps))
    return lambda opt_state, step: (
        float(opt_state.hyperparams["learning_rate"]) * float(shape(max(step - 1, 0)))
    )


def learning_rate_at(opt: ml_collections.ConfigDict, num_steps: int, count: int) -> float:
    """The learning rate of the update after `count` updates, in a run of `num_steps`."""
    return float(opt.learning_rate) * float(unit_schedule(opt, num_steps)(count))


def set_hyperparams(opt_state: Any, opt: ml_collections.ConfigDict) -> Any:
    """`opt_state` with the injected hyperparameters replaced by `opt`'s (an allowed config
    change on resume takes effect instead of the checkpoint's old values)."""
    hp = dict(opt_state.hyperparams)
    for k in INJECTED:
        hp[k] = jnp.asarray(getattr(opt, k), dtype=jnp.asarray(hp[k]).dtype)
    return opt_state._replace(hyperparams=hp)
