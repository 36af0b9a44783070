"""`cnn`: 5x5 convolutions with 2x2 max-pools, then dense layers; the convolution in one of
the forms of conv.py (nn.Conv, `slices` one matmul, `vjp` custom_vjp, or `cpu` per layer) and
`conv_impl` auto's choice between them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from mnist_jax import conv as conv_forms
from mnist_jax.errors import UserError
from mnist_jax.fields import MAX_UNITS, Choice, FieldSpec, IntTuple
from mnist_jax.models.common import KERNEL_INITS

NAME = "cnn"
CONV_IMPLS = ("native", "slices", "vjp", "auto")
KERNEL_SIZE = 5  # Every conv is 5x5, stride 1, SAME padding, then a 2x2 max-pool.
MAX_CONV_LAYERS = 2  # 28 -> 14 -> 7: a third 2x2 pool would not divide 7.


def _conv_features(v: Any) -> str | None:
    if IntTuple(MAX_UNITS)(v) is None and 0 < len(v) <= MAX_CONV_LAYERS:
        return None
    return (
        f"must be 1 to {MAX_CONV_LAYERS} positive ints (each 2x2 pool halves 28x28), "
        "e.g. '(32, 64)'"
    )


FIELDS = (
    FieldSpec(
        "model.conv_features",
        (32, 64),
        _conv_features,
        "Filters of each conv + 2x2 max-pool layer (cnn: 5x5; bn_cnn: 3x3 + BatchNorm).",
        owner=NAME,
    ),
    FieldSpec(
        "model.conv_impl",
        "auto",
        Choice(lambda: CONV_IMPLS),
        "native | slices | vjp | auto (CPU: slices on 1 channel, then vjp; native elsewhere).",
        owner=NAME,
    ),
)


class CNN(nn.Module):
    """5x5 SAME conv -> ReLU -> 2x2 max-pool per `conv_features`, then ReLU dense layers (with
    dropout) and the classifier. Takes flat (n, 784) float images.

    `conv_impl` (native: nn.Conv, or slices / vjp / cpu: conv.Conv in that form; the same
    function of the same parameter tree) picks the form for training, where the gradient
    is taken; inference (train=False) uses nn.Conv for native, else the `cpu` form, whose
    forward is the fastest on XLA:CPU (`conv.layer`). Pools are conv.max_pool2 (nn.max_pool's
    values, a faster gradient).
    """

    conv_features: Sequence[int] = (32, 64)
    hidden_units: Sequence[int] = (512,)
    num_classes: int = 10
    dropout_rate: float = 0.0
    kernel_init: str = "glorot_uniform"
    conv_impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        init = KERNEL_INITS[self.kernel_init]
        side = math.isqrt(x.shape[-1])
        x = x.reshape(x.shape[0], side, side, 1)
        for i, features in enumerate(self.conv_features):
            conv = conv_forms.layer(
                features,
                KERNEL_SIZE,
                self.conv_impl,
                train=train,
                kernel_init=init,
                name=f"Conv_{i}",
            )
            x = conv_forms.max_pool2(nn.relu(conv(x)))
        x = x.reshape(x.shape[0], -1)
        for i, units in enumerate(self.hidden_units):
            x = nn.relu(nn.Dense(units, kernel_init=init, name=f"Dense_{i}")(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init, name="Classifier")(x)


def check(model_config: ml_collections.ConfigDict) -> None:
    """A CNN cannot start from zero weights."""
    if model_config.kernel_init == "zeros":
        raise UserError(
            "config.model.kernel_init='zeros': a CNN from zero weights never leaves zero (ReLU); "
            "choose another"
        )


def resolve_conv_impl(conv_impl: str) -> str:
    """auto -> conv.py's `cpu` form on CPU (XLA:CPU's nn.Conv backward is ~20x slower than the
    matmul forms; `cpu` picks slices or vjp per layer), native on accelerators (cuDNN/TPU convs
    are fast; slices would cost k*k times the activation memory)."""
    if conv_impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "native"
    return conv_impl


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The CNN module `model_config` describes (conv_impl auto is decided here)."""
    return CNN(
        tuple(model_config.conv_features),
        tuple(model_config.hidden_units),
        num_classes,
        dropout_rate=float(model_config.dropout_rate),
        kernel_init=model_config.kernel_init,
        conv_impl=resolve_conv_impl(model_config.conv_impl),
    )
