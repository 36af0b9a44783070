"""A convolutional network with BatchNorm: the model with state (`batch_stats`).

BNCNN keeps to the contract of every model here: called as `module(images, train=bool)` on
float images (n, 784) in [0, 1], it returns logits (n, num_classes). In training (train=True)
each BatchNorm normalizes by its batch's statistics and updates its running averages (the
`batch_stats` collection, carried in `step.TrainState.model_state`); in evaluation
(train=False) it normalizes by the running averages, so a prediction does not depend on the
other images of its batch.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class BNCNN(nn.Module):
    """Blocks of 3x3 conv -> BatchNorm -> relu -> 2x2 max-pool (one per `conv_features`),
    then dense -> BatchNorm -> relu per `hidden_units`, dropout, and the classifier."""

    num_classes: int = 10
    conv_features: tuple[int, ...] = (32, 64)
    hidden_units: tuple[int, ...] = (128,)
    dropout_rate: float = 0.3
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        def norm(y: jax.Array) -> jax.Array:
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(y)

        x = x.reshape(-1, 28, 28, 1)
        for features in self.conv_features:
            x = nn.Conv(features, (3, 3), use_bias=False)(x)
            x = nn.max_pool(nn.relu(norm(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for units in self.hidden_units:
            x = nn.relu(norm(nn.Dense(units, use_bias=False)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="Classifier")(x).astype(jnp.float32)
