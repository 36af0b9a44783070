"""Stride-1 SAME convolutions (NHWC input, HWIO kernel) and the 2x2 max-pool in forms XLA:CPU
trains fast.

XLA:CPU runs a forward convolution in canonical NHWC/HWIO layout fast, but the convolutions that
autodiff makes for the gradient (a transposed input, a kernel gradient) reach a slow generic
emitter, worst inside `lax.fori_loop` (benchmarks/cnn_speed.py). The forms here differ only in
how the forward and the backward are written; each computes nn.Conv's function:

- `slices`: the k*k shifted windows of the zero-padded input concatenated on the channel axis
  (im2col) times the kernel reshaped to (k*k*in, out); autodiff takes the gradient. Cheapest
  where the input has few channels (the first layer's windows are narrow).
- `vjp`: a `custom_vjp` whose forward is the canonical convolution and whose backward is written
  by hand: the kernel gradient as k matmuls, one per kernel row (`kernel_grad`), the input
  gradient as a canonical forward convolution of the output gradient with the flipped,
  in/out-swapped kernel. No transposed convolution reaches XLA.
- `cpu`: per layer, `slices` for an input of fewer than `NARROW_INPUT` channels, else `vjp` (the
  fastest of the two on XLA:CPU for each of the shipped CNNs' layers).

`Conv` is the Flax module: the same parameter tree as `nn.Conv(features, (k, k),
padding="SAME")` (`kernel` (k, k, in, out), `bias` (out,)), so checkpoints interchange.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

FORMS = ("slices", "vjp", "cpu")
NARROW_INPUT = 4  # `cpu` form: fewer input channels than this take `slices`.
_DIMS = ("NHWC", "HWIO", "NHWC")


def _column_windows(x: jax.Array, k: int) -> jax.Array:
    """(b, h, w, c) -> (b, h + k - 1, w, k*c): the k column shifts of the zero-padded input."""
    _, _, w, _ = x.shape
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    return jnp.concatenate([xp[:, :, dx : dx + w] for dx in range(k)], axis=-1)


def windows(x: jax.Array, k: int) -> jax.Array:
    """(b, h, w, c) -> (b, h, w, k*k*c): the k x k SAME windows, channels ordered (dy, dx, c),
    so that `windows(x, k) @ kernel.reshape(k*k*c, out)` is the convolution."""
    h = x.shape[1]
    cols = _column_windows(x, k)  # k + k slices instead of k*k.
    return jnp.concatenate([cols[:, dy : dy + h] for dy in range(k)], axis=-1)


def kernel_grad(x: jax.Array, g: jax.Array, k: int) -> jax.Array:
    """The SAME convolution's kernel gradient (k, k, c, out) for input x and output gradient g:
    one matmul per kernel row of the column windows with g. k times less memory than the k*k
    windows, and the form XLA:CPU runs fastest (benchmarks/cnn_speed.py)."""
    _, h, _, c = x.shape
    cols, gg = _column_windows(x, k), g.reshape(-1, g.shape[-1])
    rows = [cols[:, dy : dy + h].reshape(-1, k * c).T @ gg for dy in range(k)]
    return jnp.stack(rows).reshape(k, k, c, g.shape[-1])


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, of (b, h, w, c) with h and w even: nn.max_pool's values as a
    reshape and a max. Its gradient (XLA's reduce, shared among tied maxima) trains ~3x faster
    on XLA:CPU than reduce_window's select-and-scatter (which gives a tie to the first)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


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
    d_kernel = kernel_grad(x, g, kernel.shape[0])
    # SAME with an odd k is symmetric, so the input gradient is a SAME forward convolution of g
    # with the kernel flipped in space and its in/out axes swapped.
    d_x = _conv(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return d_x, d_kernel


conv_vjp.defvjp(_conv_vjp_fwd, _conv_vjp_bwd)


def conv_cpu(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`slices` for a narrow input (fewer than NARROW_INPUT channels), else `vjp`."""
    return (conv_slices if x.shape[-1] < NARROW_INPUT else conv_vjp)(x, kernel)


FUNCTIONS = {"slices": conv_slices, "vjp": conv_vjp, "cpu": conv_cpu}


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
        y = FUNCTIONS[self.form](x.astype(dtype), kernel.astype(dtype))
        if not self.use_bias:  # Like nn.Conv(use_bias=False): no `bias` parameter.
            return y
        return y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)


def layer(
    features: int,
    kernel_size: int,
    impl: str,
    *,
    train: bool,
    kernel_init: nn.initializers.Initializer,
    use_bias: bool = True,
    dtype: jnp.dtype | None = None,
    name: str | None = None,
) -> nn.Module:
    """A model's SAME conv layer for its `conv_impl`: nn.Conv for `native`; otherwise `Conv` in
    that form for training and in the `cpu` form for inference, whose forward (slices on a
    narrow input, else the canonical convolution) is the fastest on XLA:CPU. The same
    parameters either way; `dtype` is the compute type."""
    if impl == "native":
        return nn.Conv(
            features,
            (kernel_size,) * 2,
            padding="SAME",
            use_bias=use_bias,
            kernel_init=kernel_init,
            dtype=dtype,
            name=name,
        )
    form = impl if train else "cpu"
    return Conv(features, kernel_size, form, kernel_init, dtype=dtype, use_bias=use_bias, name=name)
