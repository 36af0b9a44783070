"""`mlp`: fully connected ReLU layers with optional dropout."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections

from mnist_jax.errors import UserError
from mnist_jax.fields import MAX_UNITS, FieldSpec, Float, IntTuple
from mnist_jax.models.common import KERNEL_INITS

NAME = "mlp"
FIELDS = (
    FieldSpec(
        "model.hidden_units",
        (128,),
        IntTuple(MAX_UNITS),
        "Units of each hidden ReLU layer (mlp; cnn, bn_cnn: after the convs).",
        owner=NAME,
    ),
    FieldSpec(
        "model.dropout_rate",
        0.0,
        Float(0, 1, hi_open=True),
        "Dropout after the hidden layers while training (mlp, cnn: each; bn_cnn: the last).",
        owner=NAME,
    ),
)


class MLP(nn.Module):
    """Fully connected ReLU layers, each followed by dropout when `dropout_rate` > 0."""

    hidden_units: Sequence[int] = (128,)
    num_classes: int = 10
    dropout_rate: float = 0.0
    kernel_init: str = "glorot_uniform"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        init = KERNEL_INITS[self.kernel_init]
        for units in self.hidden_units:
            x = nn.relu(nn.Dense(units, kernel_init=init)(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init)(x)


def check(model_config: ml_collections.ConfigDict) -> None:
    """An MLP has at least one hidden layer."""
    if not model_config.hidden_units:
        raise UserError("config.model.hidden_units=(): the mlp needs a hidden layer, e.g. '(128,)'")


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The MLP module `model_config` describes."""
    return MLP(
        tuple(model_config.hidden_units),
        num_classes,
        dropout_rate=float(model_config.dropout_rate),
        kernel_init=model_config.kernel_init,
    )
