"""mnist_jax/conv.py: every form is nn.Conv's function, gradient and parameter tree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import conv, models

# float32 sums in a different order: agreement to a few ulps of the values' scale.
RTOL, ATOL = 1e-5, 1e-5


def _pair(features: int, k: int, form: str, bias: bool = True) -> tuple[nn.Module, nn.Module]:
    native = nn.Conv(features, (k, k), padding="SAME", use_bias=bias)
    return native, conv.Conv(features, k, form, use_bias=bias)


def _output_and_grads(module: nn.Module, params, x, cotangent):
    def scalar(p, x):
        y = module.apply({"params": p}, x)
        return jnp.sum(y * cotangent), y

    return jax.jit(jax.grad(scalar, argnums=(0, 1), has_aux=True))(params, x)


@settings(derandomize=True, max_examples=6, deadline=None)
@given(
    form=st.sampled_from(conv.FORMS),
    batch=st.integers(1, 4),
    side=st.integers(3, 9),
    channels=st.integers(1, 6),
    features=st.integers(1, 8),
    k=st.sampled_from((3, 5)),
    seed=st.integers(0, 2**16),
)
def test_every_form_gives_nn_convs_output_and_gradients(
    form, batch, side, channels, features, k, seed
):
    native, other = _pair(features, k, form)
    k_params, k_x, k_cot = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k_x, (batch, side, side, channels))
    params = native.init(k_params, x)["params"]
    shift = lambda p: p + 0.1 * jax.random.normal(k_params, p.shape)  # noqa: E731
    params = jax.tree_util.tree_map(shift, params)  # Non-zero biases too.
    cotangent = jax.random.normal(k_cot, (batch, side, side, features))
    (g_native, y_native), (g_other, y_other) = (
        _output_and_grads(m, params, x, cotangent) for m in (native, other)
    )

    def close(a, b):  # Rounding of sums in another order: relative to the array's scale.
        scale = max(1.0, float(np.max(np.abs(a))))
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL * scale)

    close(y_native, y_other)
    assert jax.tree_util.tree_structure(g_native) == jax.tree_util.tree_structure(g_other)
    jax.tree_util.tree_map(close, g_native, g_other)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("form", conv.FORMS)
def test_every_form_has_nn_convs_parameter_tree(form, bias):
    """Same names, shapes and initial values: a checkpoint of one form restores into another
    (without a bias: the kernel alone, as bn_cnn's convs)."""
    native, other = _pair(6, 3, form, bias)
    x = jnp.zeros((1, 7, 7, 2))
    p_native = native.init(jax.random.PRNGKey(3), x)
    p_other = other.init(jax.random.PRNGKey(3), x)
    assert jax.tree_util.tree_structure(p_native) == jax.tree_util.tree_structure(p_other)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_native, p_other)


def test_vjp_backward_has_no_transposed_convolution():
    """The point of `vjp`: its gradient holds only canonical forward convolutions and matmuls."""
    module = conv.Conv(4, 5, "vjp")
    x = jnp.ones((2, 8, 8, 3))
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    loss = lambda p, x: jnp.sum(module.apply({"params": p}, x) ** 2)  # noqa: E731
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).as_text()
    convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert len(convs) == 2  # The forward's and the input gradient's.
    for line in convs:
        assert "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]" in line
        assert "stride = [1, 1]" in line and "lhs_dilate = [1, 1]" in line
        assert "reverse = [false, false]" in line


def test_the_cnn_trains_with_the_vjp_form_as_with_nn_conv():
    """config.model.conv_impl=vjp: same parameters, logits and gradients as native."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 784))
    native, vjp = (models.CNN((4, 6), (8,), conv_impl=impl) for impl in ("native", "vjp"))
    params = native.init(jax.random.PRNGKey(1), x)["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        vjp.init(jax.random.PRNGKey(1), x)["params"]
    )

    def grads(model):
        loss = lambda p: jnp.sum(model.apply({"params": p}, x, train=True) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)  # noqa: E731
    jax.tree_util.tree_map(close, grads(native), grads(vjp))


def test_bfloat16_compute_keeps_float32_parameters():
    module = conv.Conv(4, 3, "vjp", dtype=jnp.bfloat16)
    x = jnp.ones((1, 6, 6, 2))
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    assert module.apply({"params": params}, x).dtype == jnp.bfloat16


def test_an_even_kernel_size_is_refused():
    with pytest.raises(ValueError, match="odd"):
        conv.Conv(4, 4).init(jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 1)))


def _train_jaxpr(function, channels: int) -> str:
    x, kernel = jnp.ones((1, 6, 6, channels)), jnp.ones((3, 3, channels, 2))
    loss = lambda x, k: jnp.sum(function(x, k))  # noqa: E731
    return str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, kernel))


@pytest.mark.parametrize("channels", [1, conv.NARROW_INPUT - 1, conv.NARROW_INPUT, 16])
def test_the_cpu_form_takes_slices_for_a_narrow_input_and_vjp_for_a_wide_one(channels):
    narrow = channels < conv.NARROW_INPUT
    expected = _train_jaxpr(conv.conv_slices if narrow else conv.conv_vjp, channels)
    assert _train_jaxpr(conv.conv_cpu, channels) == expected
    assert ("conv_general_dilated" in expected) != narrow  # vjp: canonical convolutions.


@settings(derandomize=True, max_examples=8, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
    levels=st.integers(2, 1000),
    seed=st.integers(0, 2**16),
)
def test_max_pool2_gives_nn_max_pools_values_and_its_gradient_without_ties(shape, levels, seed):
    """Few `levels` make ties (then the gradient is shared among them, nn.max_pool's goes to
    one; both sum to the same); many make none (then the gradients are equal)."""
    b, h, w, c = shape
    x = jax.random.randint(jax.random.PRNGKey(seed), (b, 2 * h, 2 * w, c), 0, levels) / levels
    native = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(conv.max_pool2(x), native(x))
    cot = jax.random.normal(jax.random.PRNGKey(seed + 1), (b, h, w, c))
    g_ours, g_native = (
        jax.grad(lambda x, f=f: jnp.sum(f(x) * cot))(x) for f in (conv.max_pool2, native)
    )
    windows = lambda g: g.reshape(b, h, 2, w, 2, c).sum(axis=(2, 4))  # noqa: E731
    np.testing.assert_allclose(windows(g_ours), windows(g_native), rtol=1e-6, atol=1e-6)
    blocks = np.asarray(x).reshape(b, h, 2, w, 2, c)
    top = blocks.max(axis=(2, 4), keepdims=True)
    if np.all((blocks == top).sum(axis=(2, 4)) == 1):  # No ties: the very same gradient.
        np.testing.assert_array_equal(g_ours, g_native)
