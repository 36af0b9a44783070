"""Models: output shapes, parameter counts, dropout only in training; the CNN's two conv forms
(native nn.Conv and the slices-and-one-matmul form) are the same function of the same
parameters; model config validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import config as config_lib, models
from mnist_jax.errors import UserError

from conftest import small_config, train_results


def _model(name, hidden=(), dropout=0.0, init="glorot_uniform", **fields):
    cfg = config_lib.get_config().model
    cfg.name, cfg.hidden_units, cfg.dropout_rate, cfg.kernel_init = name, hidden, dropout, init
    for key, value in fields.items():
        cfg[key] = value
    return models.create_model(cfg)


def _cnn_pair(conv_features, hidden=(16,)):
    return tuple(
        _model("cnn", hidden, conv_features=conv_features, conv_impl=impl)
        for impl in ("native", "slices")
    )


@pytest.mark.parametrize(
    ("name", "hidden", "count"),
    [
        ("linear", (), 784 * 10 + 10),
        ("mlp", (342, 68), 784 * 342 + 342 + 342 * 68 + 68 + 68 * 10 + 10),
        ("mlp", (512, 256), 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10),
        # 5x5 convs 1->32->64, 28x28 -> 14x14 -> 7x7 after the pools, then 3136 -> 512 -> 10.
        ("cnn", (512,), 25 * 32 + 32 + 25 * 32 * 64 + 64 + 7 * 7 * 64 * 512 + 512 + 5130),
    ],
)
def test_shapes_and_parameter_counts(name, hidden, count):
    model = _model(name, hidden)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
    assert models.count_params(params) == count
    assert model.apply({"params": params}, jnp.zeros((5, 784))).shape == (5, 10)


def test_linear_starts_from_zero_weights():
    params = _model("linear", init="zeros").init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))
    assert all(not np.any(p) for p in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize(
    ("name", "fields"), [("mlp", {}), ("cnn", {"conv_features": (4,), "conv_impl": "slices"})]
)
def test_dropout_only_when_training(name, fields):
    model = _model(name, (64,), dropout=0.5, **fields)
    x = jnp.ones((4, 784))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    eval_a = model.apply({"params": params}, x)
    eval_b = model.apply({"params": params}, x)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model.apply(
        {"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}
    )
    train_b = model.apply(
        {"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)}
    )
    assert not np.allclose(train_a, train_b) and not np.allclose(train_a, eval_a)


def test_both_conv_forms_have_one_parameter_tree():
    """Same names, shapes and initial values: a checkpoint of one form restores into the other."""
    native, slices = _cnn_pair((32, 64), hidden=(512,))
    x = jnp.zeros((1, 784))
    p_native = native.init(jax.random.PRNGKey(3), x)["params"]
    p_slices = slices.init(jax.random.PRNGKey(3), x)["params"]
    assert jax.tree_util.tree_structure(p_native) == jax.tree_util.tree_structure(p_slices)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_native, p_slices)
    assert set(p_native) == {"Conv_0", "Conv_1", "Dense_0", "Classifier"}
    assert p_native["Conv_1"]["kernel"].shape == (5, 5, 32, 64)
    assert p_native["Conv_1"]["bias"].shape == (64,)


# float32 sums in a different order: agreement to a few ulps of the values' scale.
RTOL, ATOL = 1e-5, 1e-5


@settings(derandomize=True, max_examples=6, deadline=None)
@given(
    batch=st.integers(1, 5),
    conv_features=st.lists(st.integers(1, 8), min_size=1, max_size=2).map(tuple),
    seed=st.integers(0, 2**16),
)
def test_native_and_slices_give_the_same_logits_and_gradients(batch, conv_features, seed):
    native = _cnn_pair(conv_features)[0]
    k_params, k_x, k_cot = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(k_x, (batch, 784))
    params = native.init(k_params, x)["params"]
    # Non-zero biases too, so that every parameter's role is compared.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(k_params, p.shape), params
    )
    cotangent = jax.random.normal(k_cot, (batch, 10))

    def logits_and_grads(model):
        def scalar(p, x):
            logits = model.apply({"params": p}, x, train=True)  # No dropout: deterministic.
            return jnp.sum(logits * cotangent), logits

        # One compiled program per form: op-by-op dispatch of 25 slices is slow to test.
        return jax.jit(jax.grad(scalar, argnums=(0, 1), has_aux=True))(params, x)

    (g_native, logits_native), (g_slices, logits_slices) = map(
        logits_and_grads, _cnn_pair(conv_features)
    )
    np.testing.assert_allclose(logits_native, logits_slices, rtol=RTOL, atol=ATOL)
    assert jax.tree_util.tree_structure(g_native) == jax.tree_util.tree_structure(g_slices)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL), g_native, g_slices
    )


@pytest.mark.parametrize("train_form", ["slices", "vjp"])
def test_inference_takes_the_cpu_forms_forward_whatever_the_training_form(train_form):
    """conv.layer: the first conv (one input channel) as slices, the second as the canonical
    convolution; only `native` keeps nn.Conv throughout."""
    x = jnp.ones((2, 784))
    native, other = (_model("cnn", (8,), conv_features=(4, 6), conv_impl=impl)
                     for impl in ("native", train_form))  # fmt: skip
    params = native.init(jax.random.PRNGKey(0), x)["params"]
    jaxpr = str(jax.make_jaxpr(lambda p: other.apply({"params": p}, x))(params))
    assert jaxpr.count("conv_general_dilated[") == 1  # The second layer's; the first: slices.
    jaxpr = str(jax.make_jaxpr(lambda p: native.apply({"params": p}, x))(params))
    assert jaxpr.count("conv_general_dilated[") == 2
    y_native, y_other = (m.apply({"params": params}, x) for m in (native, other))
    np.testing.assert_allclose(y_native, y_other, rtol=1e-5, atol=1e-5)


def test_auto_picks_the_cpu_form_on_cpu_and_native_elsewhere():
    expected = "cpu" if jax.default_backend() == "cpu" else "native"
    assert _model("cnn", (8,), conv_impl="auto").conv_impl == expected
    assert _model("cnn", (8,), conv_impl="native").conv_impl == "native"


_VALUES = st.one_of(st.integers(-2, 64), st.booleans(), st.floats(-1, 64), st.text(max_size=2))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(conv_features=st.lists(_VALUES, max_size=4).map(tuple))
def test_conv_features_are_one_or_two_positive_ints(conv_features):
    ok = 1 <= len(conv_features) <= 2 and all(type(f) is int and f > 0 for f in conv_features)
    if ok:
        _model("cnn", (8,), conv_features=conv_features)
    else:
        with pytest.raises(UserError, match=r"^config\.model\.conv_features="):
            _model("cnn", (8,), conv_features=conv_features)


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("rnn", {}, r"config\.model\.name='rnn': choose one of linear, mlp, cnn"),
        ("mlp", {"kernel_init": "ones"}, r"config\.model\.kernel_init='ones'"),
        (
            "cnn",
            {"conv_impl": "slice"},
            r"conv_impl='slice': choose one of native, slices, vjp, auto",
        ),
        ("mlp", {"conv_impl": "Native"}, r"conv_impl='Native'"),
        ("cnn", {"kernel_init": "zeros"}, r"kernel_init='zeros': a CNN from zero weights"),
        ("cnn", {"hidden_units": (8, 0)}, r"hidden_units=\(8, 0\)"),
    ],
)
def test_bad_model_fields_are_named(name, fields, message):
    fields = {"kernel_init": "glorot_uniform", **fields}
    with pytest.raises(UserError, match=message):
        _model(name, (8,), init=fields.pop("kernel_init"), **fields)


def test_a_cnn_trains_through_the_fused_loop(tmp_path, idx_dir):
    c = small_config(
        idx_dir, "cnn", **{"model.conv_features": (8, 16), "model.hidden_units": (32,)}
    )
    c.num_steps, c.num_epochs = 0, 3.0
    results = train_results(c, tmp_path)
    assert results["final"]["test"]["size"] == 300
    assert results["final"]["test"]["accuracy"] > 0.6


@pytest.mark.parametrize(
    ("name", "tree"),
    [
        ("linear", {"Dense_0": ("bias", "kernel")}),
        ("mlp", {"Dense_0": ("bias", "kernel"), "Dense_1": ("bias", "kernel")}),
        ("cnn", {k: ("bias", "kernel") for k in ("Conv_0", "Conv_1", "Dense_0", "Classifier")}),
    ],
)
def test_each_family_builds_from_the_registry_with_the_parameter_tree_runs_have_saved(name, tree):
    """Existing run directories restore: the families keep their parameter names."""
    family = models.FAMILIES[name]
    assert {f.owner for f in family.FIELDS} <= {name}
    model = _model(name, (8,))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
    assert {k: tuple(sorted(v)) for k, v in params.items()} == tree
    assert models.num_classes(model) == 10
