"""Stride-1 SAME convolutions (NHWC input, HWIO kernel) in forms XLA:CPU trains fast.

XLA:CPU runs a forward convolution in canonical NHWC/HWIO layout fast, but the convolutions that
autodiff makes for the gradient (a transposed input, a kernel gradient) reach a slow generic
emitter, worst inside `lax.fori_loop` (benchmarks/cnn_speed.py). The forms here differ only in
how the forward and the backward are written; each computes nn.Conv's function:

- `slices`: the k*k shifted windows of the zero-padded input concatenated on the channel axis
  (im2col) times the kernel reshaped to (k*k*in, out); autodiff takes the gradient.
- `vjp`: a `custom_vjp` whose forward is the canonical convolution and whose backward is written
  by hand: the kernel gradient as ONE matmul of the input's windows with the output gradient,
  the input gradient as a canonical forward convolution of the output gradient with the
  flipped, in/out-swapped kernel. No transposed convolution reaches XLA.

`Conv` is the Flax module: the same parameter tree as `nn.Conv(features, (k, k),
padding="SAME")` (`kernel` (k, k, in, out), `bias` (out,)), so checkpoints interchange.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

FORMS = ("slices", "vjp")
_DIMS = ("NHWC", "HWIO", "NHWC")


def windows(x: jax.Array, k: int) -> jax.Array:
    """(b, h, w, c) -> (b, h, w, k*k*c): the k x k SAME windows, channels ordered (dy, dx, c),
    so that `windows(x, k) @ kernel.reshape(k*k*c, out)` is the convolution."""
    _, h, w, _ = x.shape
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    # Column shifts, then row shifts of those: k + k slices instead of k*k.
    cols = jnp.concatenate([xp[:, :, dx : dx + w] for dx in range(k)], axis=-1)
    return jnp.concatenate([cols[:, dy : dy + h] for dy in range(k)], axis=-1)


def conv_slices(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The convolution as windows times the reshaped kernel (autodiff for the gradient)."""
    k, _, c, out = kernel.shape
    return windows(x, k) @ kernel.reshape(k * k * c, out)


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMS)


@jax.custom_vjp
def conv_vjp(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The canonical convolution, differentiated by matmul and canonical convolution only."""
    return _conv(x, kernel)


def _conv_vjp_fwd(x, kernel):
    return _conv(x, kernel), (x, kernel)


def _conv_vjp_bwd(res, g):
    x, kernel = res
    k, _, c, out = kernel.shape
    cols = windows(x, k).reshape(-1, k * k * c)
    d_kernel = (cols.T @ g.reshape(-1, out)).reshape(kernel.shape)
    # SAME with an odd k is symmetric, so the input gradient is a SAME forward convolution of g
    # with the kernel flipped in space and its in/out axes swapped.
    d_x = _conv(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return d_x, d_kernel


conv_vjp.defvjp(_conv_vjp_fwd, _conv_vjp_bwd)

_FUNCTIONS = {"slices": conv_slices, "vjp": conv_vjp}


class Conv(nn.Module):
    """`nn.Conv(features, (kernel_size,) * 2, padding="SAME", use_bias=...)` computed in `form` (see
    FORMS); `dtype` (e.g. bfloat16) is the compute type, parameters stay float32."""

    features: int
    kernel_size: int = 5
    form: str = "vjp"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    dtype: jnp.dtype | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd for SAME padding, got {k}")
        kernel = self.param("kernel", self.kernel_init, (k, k, c, self.features))
        dtype = self.dtype or x.dtype
        y = _FUNCTIONS[self.form](x.astype(dtype), kernel.astype(dtype))
        if not self.use_bias:  # Like nn.Conv(use_bias=False): no `bias` parameter.
            return y
        return y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
