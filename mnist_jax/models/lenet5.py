"""`lenet5`: LeNet-5 (LeCun, Bottou, Bengio and Haffner 1998, "Gradient-based learning applied
to document recognition", Fig. 2 and Table I), on 28x28 MNIST padded to 32x32 as the paper does.

Layers (paper's names, trainable parameters as in the paper):
C1 6@5x5 conv -> 6x28x28 (156); S2 2x2 subsampling -> 6x14x14 (12); C3 16@5x5 conv -> 16x10x10
with the paper's connection table (1,516); S4 -> 16x5x5 (32); C5 120@5x5 conv -> 120x1x1
(48,120); F6 84 units (10,164); output 10. Every layer up to F6 is followed by the paper's
squashing function 1.7159 tanh(2/3 a). The subsampling is the paper's trainable one: the sum
of each 2x2 window times a per-map coefficient, plus a per-map bias.

What differs from the paper: the output is a dense layer (850 parameters) whose logits go to
softmax cross-entropy, not Euclidean RBF units with fixed 7x12 bitmap codes and the MAP
criterion; weights start from config.model.kernel_init (the paper: uniform in +-2.4 / fan-in);
training (configs/lenet5.py) is by minibatch optax, not stochastic diagonal Levenberg-Marquardt.
`model.lenet5_c3 = 'full'` connects every C3 map to every S2 map (2,416 parameters) instead.
Inputs are mapped from [0, 1] to the paper's [-0.1, 1.175] (mean about 0, variance about 1).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_jax import conv as conv_forms
from mnist_jax.errors import UserError
from mnist_jax.fields import Choice, FieldSpec
from mnist_jax.models.cnn import resolve_conv_impl
from mnist_jax.models.common import KERNEL_INITS

NAME = "lenet5"
C3_TABLES = ("paper", "full")
PAD = 2  # 28x28 -> 32x32, the paper's input field.
KERNEL_SIZE = 5

# Table I: the S2 maps each C3 map takes as input.
C3_INPUTS = (
    *((i, (i + 1) % 6, (i + 2) % 6) for i in range(6)),
    *((i, (i + 1) % 6, (i + 2) % 6, (i + 3) % 6) for i in range(6)),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    tuple(range(6)),
)
C3_ROWS = np.array([s2 for ins in C3_INPUTS for s2 in ins])
C3_COLS = np.array([c3 for c3, ins in enumerate(C3_INPUTS) for _ in ins])

FIELDS = (
    FieldSpec(
        "model.lenet5_c3",
        "paper",
        Choice(lambda: C3_TABLES),
        "lenet5: C3's connections to S2, the paper's table (60 of 96) or full.",
        owner=NAME,
    ),
)


def squash(a: jax.Array) -> jax.Array:
    """The paper's sigmoid: 1.7159 tanh(2/3 a) (f(1) = 1, f(-1) = -1)."""
    return 1.7159 * jnp.tanh(a * (2.0 / 3.0))


def valid_conv(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
    """A stride-1 VALID convolution (NHWC, HWIO). `native`: lax's; `slices`/`vjp`/`cpu`: conv.py's
    SAME form, cropped to the VALID window (its gradient runs fast on XLA:CPU)."""
    if impl == "native":
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    p = kernel.shape[0] // 2
    y = conv_forms.FUNCTIONS[impl](x, kernel)
    return y[:, p:-p, p:-p]


class Subsample(nn.Module):
    """The paper's S layers: each 2x2 window's sum times a trainable per-map coefficient, plus
    a trainable per-map bias."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        coef = self.param("coef", nn.initializers.constant(0.25), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        n, h, w, _ = x.shape
        sums = x.reshape(n, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))
        return sums * coef + bias


class ConvLayer(nn.Module):
    """A VALID k x k convolution with bias; `table` (pairs of input map, output map) keeps only
    those kernels as parameters (`kernel` (k, k, len(table))), as the paper's C3."""

    features: int
    kernel_init: nn.initializers.Initializer
    impl: str = "native"
    table: tuple[np.ndarray, np.ndarray] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = KERNEL_SIZE, x.shape[-1]
        if self.table is None:
            kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features))
        else:
            rows, cols = self.table
            init = self.kernel_init

            def table_init(key, shape):
                # The full kernel's draw (its fan-in), then the table's kernels of it.
                return init(key, (k, k, c, self.features))[:, :, rows, cols]

            used = self.param("kernel", table_init, (k, k, len(rows)))
            kernel = jnp.zeros((k, k, c, self.features), used.dtype).at[:, :, rows, cols].set(used)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return valid_conv(x, kernel, self.impl) + bias


class LeNet5(nn.Module):
    """LeNet-5 (see the module docstring); takes flat (n, 784) float images in [0, 1]."""

    num_classes: int = 10
    kernel_init: str = "glorot_uniform"
    c3_table: str = "paper"
    conv_impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        init = KERNEL_INITS[self.kernel_init]
        impl = self.conv_impl if train else "native"
        side = math.isqrt(x.shape[-1])
        x = x.reshape(-1, side, side, 1) * 1.275 - 0.1  # Background 0 -> -0.1, ink 1 -> 1.175.
        x = jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), constant_values=-0.1)
        x = squash(ConvLayer(6, init, impl, name="C1")(x))
        x = squash(Subsample(name="S2")(x))
        table = (C3_ROWS, C3_COLS) if self.c3_table == "paper" else None
        x = squash(ConvLayer(16, init, impl, table, name="C3")(x))
        x = squash(Subsample(name="S4")(x))
        # C5's 5x5 kernels cover S4's whole 5x5 maps: a dense layer over them, same kernel.
        x = squash(nn.DenseGeneral(120, axis=(-3, -2, -1), kernel_init=init, name="C5")(x))
        x = squash(nn.Dense(84, kernel_init=init, name="F6")(x))
        return nn.Dense(self.num_classes, kernel_init=init, name="Output")(x)


def check(model_config: ml_collections.ConfigDict) -> None:
    """LeNet-5's tanh units from zero weights never break symmetry."""
    if model_config.kernel_init == "zeros":
        raise UserError(
            "config.model.kernel_init='zeros': LeNet-5 from zero weights never breaks symmetry; "
            "choose another"
        )


def build(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The LeNet5 module `model_config` describes (conv_impl auto is decided here)."""
    return LeNet5(
        num_classes,
        kernel_init=model_config.kernel_init,
        c3_table=model_config.lenet5_c3,
        conv_impl=resolve_conv_impl(model_config.conv_impl),
    )
