"""The classifiers (linear, MLP, CNN), as Flax Linen modules.

Linen keeps parameters as a plain pytree outside the module, so the training step stays a pure
function of (state, batch) that `jax.jit`, `lax.scan`/`fori_loop`, `jax.vmap` (sweeps) and
sharding (data parallelism) take as it is, with no per-call Python graph traversal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax import conv as conv_forms
from mnist_jax.errors import UserError

MODELS = ("linear", "mlp", "cnn")
CONV_IMPLS = ("native", "slices", "vjp", "auto")
KERNEL_SIZE = 5  # Every conv is 5x5, stride 1, SAME padding, then a 2x2 max-pool.
MAX_CONV_LAYERS = 2  # 28 -> 14 -> 7: a third 2x2 pool would not divide 7.
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


class SliceConv(nn.Module):
    """`nn.Conv(features, (5, 5), padding="SAME")` as ONE matmul: the 25 shifted windows of the
    zero-padded input, concatenated on the channel axis, times the kernel reshaped to (25*in, out).

    Same parameters as nn.Conv (`kernel` (5, 5, in, out), `bias` (out,), same initializers), so a
    checkpoint trained with one form restores into the other. Its gradient is a matmul plus
    slices and pads, which XLA:CPU runs ~20x faster than a convolution's backward.
    """

    features: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, (_, h, w, c) = KERNEL_SIZE, x.shape
        kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        p = k // 2
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        # The 25 windows as 5 row shifts, then 5 column shifts of those: the same patches as 25
        # separate slices, in half the compile time. Channels end up ordered (dx, dy, c).
        rows = jnp.concatenate([xp[:, dy : dy + h] for dy in range(k)], axis=-1)
        patches = jnp.concatenate([rows[:, :, dx : dx + w] for dx in range(k)], axis=-1)
        matrix = kernel.transpose(1, 0, 2, 3).reshape(k * k * c, self.features)
        return patches @ matrix + bias


class CNN(nn.Module):
    """5x5 SAME conv -> ReLU -> 2x2 max-pool per `conv_features`, then ReLU dense layers (with
    dropout) and the classifier. Takes flat (n, 784) float images.

    `conv_impl` (native: nn.Conv, slices: SliceConv, or vjp: conv.Conv's custom_vjp form; the
    same function of the same parameter tree) picks the form for training, where the gradient
    is taken. Inference (train=False) always uses nn.Conv: its forward is as fast or faster on
    every backend (4x on XLA:CPU, benchmarks/conv_forms.py) and does not hold 25 copies of each
    conv's input.
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
            if self.conv_impl == "native" or not train:
                conv = nn.Conv(
                    features, (KERNEL_SIZE,) * 2, padding="SAME", kernel_init=init, name=f"Conv_{i}"
                )
            elif self.conv_impl == "vjp":  # mnist_jax/conv.py: canonical conv, matmul backward.
                conv = conv_forms.Conv(features, KERNEL_SIZE, "vjp", init, name=f"Conv_{i}")
            else:
                conv = SliceConv(features, kernel_init=init, name=f"Conv_{i}")
            x = nn.max_pool(nn.relu(conv(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for i, units in enumerate(self.hidden_units):
            x = nn.relu(nn.Dense(units, kernel_init=init, name=f"Dense_{i}")(x))
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init, name="Classifier")(x)


def validate_model_config(model_config) -> None:
    """Raises a UserError naming the first bad `config.model` field (model-specific checks)."""

    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise UserError(f"config.model.{field}={model_config[field]!r}: {why}")

    need(model_config.name in MODELS, "name", f"choose one of {', '.join(MODELS)}")
    need(
        model_config.kernel_init in KERNEL_INITS,
        "kernel_init",
        f"choose one of {', '.join(KERNEL_INITS)}",
    )
    # Run directories written before the CNN existed hold no conv fields; only a cnn needs them.
    if model_config.name == "cnn" or "conv_impl" in model_config:
        impls = ", ".join(CONV_IMPLS)
        need(model_config.conv_impl in CONV_IMPLS, "conv_impl", f"choose one of {impls}")
        feats = model_config.conv_features
        need(
            isinstance(feats, (tuple, list))
            and 0 < len(feats) <= MAX_CONV_LAYERS
            and all(_positive_int(f) for f in feats),
            "conv_features",
            f"must be 1 to {MAX_CONV_LAYERS} positive ints (each 2x2 pool halves 28x28), "
            "e.g. '(32, 64)'",
        )
    if model_config.name == "cnn":
        units = model_config.hidden_units
        need(
            isinstance(units, (tuple, list)) and all(_positive_int(u) for u in units),
            "hidden_units",
            "must be a tuple of positive ints (may be empty), e.g. '(512,)'",
        )
        need(
            model_config.kernel_init != "zeros",
            "kernel_init",
            "a CNN from zero weights never leaves zero (ReLU); choose another",
        )


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def resolve_conv_impl(conv_impl: str) -> str:
    """auto -> slices on CPU (XLA:CPU's conv backward is ~20x slower than the matmul form),
    native on accelerators (cuDNN/TPU convs are fast; slices would cost 25x activation memory)."""
    if conv_impl == "auto":
        return "slices" if jax.default_backend() == "cpu" else "native"
    return conv_impl


def create_model(model_config, num_classes: int = 10) -> nn.Module:
    """Builds the module that `config.model` describes (conv_impl auto is decided here)."""
    validate_model_config(model_config)
    if model_config.name == "linear":
        return Linear(num_classes, kernel_init=model_config.kernel_init)
    if model_config.name == "cnn":
        return CNN(
            tuple(model_config.conv_features),
            tuple(model_config.hidden_units),
            num_classes,
            dropout_rate=float(model_config.dropout_rate),
            kernel_init=model_config.kernel_init,
            conv_impl=resolve_conv_impl(model_config.conv_impl),
        )
    return MLP(
        tuple(model_config.hidden_units),
        num_classes,
        dropout_rate=float(model_config.dropout_rate),
        kernel_init=model_config.kernel_init,
    )


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(jnp.size(p)) for p in jax.tree_util.tree_leaves(params))
