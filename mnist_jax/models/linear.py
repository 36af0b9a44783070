"""`linear`: softmax regression."""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections

from mnist_jax.models.common import KERNEL_INITS

NAME = "linear"
FIELDS = ()  # Reads model.kernel_init only (models.common).


class Linear(nn.Module):
    """Softmax regression: logits = W x + b."""

    num_classes: int = 10
    kernel_init: str = "zeros"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # No dropout in a linear model.
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INITS[self.kernel_init])(x)


def check(model_config: ml_collections.ConfigDict) -> None:
    """No rules beyond the fields' own."""


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The Linear module `model_config` describes."""
    return Linear(num_classes, kernel_init=model_config.kernel_init)
