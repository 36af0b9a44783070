"""`bn_cnn`: a convolutional network with BatchNorm, the shipped model with state
(`batch_stats`).

In training (train=True) each BatchNorm normalizes by its batch's statistics and updates its
running averages (the `batch_stats` collection, carried in `step.TrainState.model_state`); in
evaluation (train=False) it normalizes by the running averages, so a prediction does not depend
on the other images of its batch. Shares `conv_features`, `conv_impl` (cnn), `hidden_units`,
`dropout_rate` (mlp) and `kernel_init` with the other families; owns `bn_momentum`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mnist_jax import conv as conv_forms
from mnist_jax.errors import UserError
from mnist_jax.fields import FieldSpec, Float
from mnist_jax.models.cnn import resolve_conv_impl
from mnist_jax.models.common import KERNEL_INITS

NAME = "bn_cnn"
KERNEL_SIZE = 3  # Every conv is 3x3, stride 1, SAME padding, no bias (BatchNorm's beta is it).

FIELDS = (
    FieldSpec(
        "model.bn_momentum",
        0.9,
        Float(0, 1, hi_open=True),
        "bn_cnn: decay of BatchNorm's running averages (evaluation uses them).",
        owner=NAME,
    ),
)


class BNCNN(nn.Module):
    """Blocks of 3x3 conv -> BatchNorm -> relu -> 2x2 max-pool (one per `conv_features`),
    then dense -> BatchNorm -> relu per `hidden_units`, dropout, and the classifier.

    `conv_impl` (native, slices, vjp or cpu; conv.py) picks the conv's form for training, as
    in the cnn family, and evaluation's as `conv.layer` says. Every form has the same parameter
    tree. Pools are conv.max_pool2.
    """

    num_classes: int = 10
    conv_features: Sequence[int] = (32, 64)
    hidden_units: Sequence[int] = (128,)
    dropout_rate: float = 0.3
    bn_momentum: float = 0.9
    kernel_init: str = "lecun_normal"
    conv_impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        init = KERNEL_INITS[self.kernel_init]

        def norm(y: jax.Array) -> jax.Array:
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(y)

        side = math.isqrt(x.shape[-1])
        x = x.reshape(-1, side, side, 1)
        for i, features in enumerate(self.conv_features):
            conv = conv_forms.layer(
                features,
                KERNEL_SIZE,
                self.conv_impl,
                train=train,
                kernel_init=init,
                use_bias=False,
                name=f"Conv_{i}",
            )
            x = conv_forms.max_pool2(nn.relu(norm(conv(x))))
        x = x.reshape(x.shape[0], -1)
        for units in self.hidden_units:
            x = nn.relu(norm(nn.Dense(units, use_bias=False, kernel_init=init)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init, name="Classifier")(x).astype(
            jnp.float32
        )


def check(model_config: ml_collections.ConfigDict) -> None:
    """Zero weights would leave every conv's output zero (BatchNorm cannot recover a signal)."""
    if model_config.kernel_init == "zeros":
        raise UserError(
            "config.model.kernel_init='zeros': a bn_cnn from zero weights never leaves zero; "
            "choose another"
        )


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The BNCNN module `model_config` describes (conv_impl auto is decided here, as for cnn)."""
    return BNCNN(
        num_classes,
        tuple(model_config.conv_features),
        tuple(model_config.hidden_units),
        dropout_rate=float(model_config.dropout_rate),
        bn_momentum=float(model_config.bn_momentum),
        kernel_init=model_config.kernel_init,
        conv_impl=resolve_conv_impl(model_config.conv_impl),
    )
