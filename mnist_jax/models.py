"""The two classifiers, as Flax Linen modules.

Linen keeps parameters as a plain pytree outside the module, so the training step stays a pure
function of (state, batch) that `jax.jit`, `lax.scan`/`fori_loop`, `jax.vmap` (sweeps) and
sharding (data parallelism) take as it is, with no per-call Python graph traversal.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.errors import UserError

MODELS = ("linear", "mlp")
KERNEL_INITS = {
    "zeros": nn.initializers.zeros,  # TF's LinearClassifier starts from zero weights.
    "glorot_uniform": nn.initializers.glorot_uniform(),  # TF/Keras Dense default.
    "lecun_normal": nn.initializers.lecun_normal(),  # Flax default.
    "he_normal": nn.initializers.he_normal(),
    "truncated_normal": nn.initializers.truncated_normal(0.02),  # TFLearn's default.
}


class Linear(nn.Module):
    """Softmax regression: logits = W x + b."""

    num_classes: int = 10
    kernel_init: str = "zeros"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # No dropout in a linear model.
        return nn.Dense(self.num_classes, kernel_init=KERNEL_INITS[self.kernel_init])(x)


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


def create_model(model_config, num_classes: int = 10) -> nn.Module:
    """Builds the module that `config.model` describes."""
    if model_config.name not in MODELS:
        raise UserError(f"unknown model.name {model_config.name!r}; choose one of {MODELS}")
    if model_config.kernel_init not in KERNEL_INITS:
        raise UserError(
            f"unknown model.kernel_init {model_config.kernel_init!r}; "
            f"choose one of {', '.join(KERNEL_INITS)}"
        )
    if model_config.name == "linear":
        return Linear(num_classes, kernel_init=model_config.kernel_init)
    return MLP(
        tuple(model_config.hidden_units),
        num_classes,
        dropout_rate=float(model_config.dropout_rate),
        kernel_init=model_config.kernel_init,
    )


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(jnp.size(p)) for p in jax.tree_util.tree_leaves(params))
