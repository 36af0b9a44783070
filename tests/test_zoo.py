"""The model zoo: the `bn_cnn` and `lenet5` families build from the registry, own their config
fields, train through the driver, resume N -> 2N to the straight run's bits, and ship configs;
LeNet-5 has the paper's layers (LeCun et al. 1998, Fig. 2) and parameter counts."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import config as config_lib, models
from mnist_jax.errors import UserError
from mnist_jax.models import lenet5

from conftest import REPO, saved_state, small_config, train_results, trees_equal

# Each new family with a config of its own, shrunk to its smallest width for the tests.
ZOO = {
    "bn_cnn": {"model.conv_features": (4,), "model.hidden_units": (8,)},
    "lenet5": {},
}
SHIPPED = ("bn_cnn", "best_cnn", "lenet5")


def _family_config(idx_dir, name, **overrides):
    # A constant rate: a one-cycle schedule would stretch (and the resume refuse) from N to 2N.
    fields = {**ZOO[name], "optimizer.schedule": "constant", **overrides}
    return small_config(idx_dir, name, **fields)


@pytest.mark.parametrize("name", list(ZOO))
def test_each_new_family_is_in_the_registry_and_owns_its_fields(name):
    family = models.FAMILIES[name]
    assert name == family.NAME and family.FIELDS
    for f in family.FIELDS:
        assert f.owner == name and f in config_lib.FIELDS
    shown = config_lib.describe(config_lib.load(name))
    for f in family.FIELDS:
        assert shown.count(f"{f.name} = ") == 1


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_config_loads_by_name_and_validates(name):
    assert name in config_lib.list_configs()
    c = config_lib.load(name)
    assert c.model.name in models.FAMILIES
    model = models.create_model(c.model)
    logits = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0], jnp.zeros((2, 784))
    )
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("name", list(ZOO))
def test_a_new_family_trains_and_resumes_n_to_2n_to_the_straight_runs_bits(tmp_path, idx_dir, name):
    straight = _family_config(idx_dir, name, num_steps=16, num_periods=2)
    straight_results = train_results(straight, tmp_path / "straight")
    first = _family_config(idx_dir, name, num_steps=8, num_periods=1)
    train_results(first, tmp_path / "resumed")
    resumed_results = train_results(straight, tmp_path / "resumed")
    assert resumed_results["resumed_from_step"] == 8
    assert trees_equal(saved_state(tmp_path / "straight"), saved_state(tmp_path / "resumed"))
    assert resumed_results["final"] == straight_results["final"]
    assert 0.0 <= straight_results["final"]["test"]["accuracy"] <= 1.0


def test_bn_cnn_carries_batch_stats_and_its_owned_field_reaches_the_module():
    c = config_lib.load("bn_cnn")
    c.model.bn_momentum = 0.5
    model = models.create_model(c.model)
    assert model.bn_momentum == 0.5
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 784)))
    assert set(variables) == {"params", "batch_stats"}


# Fig. 2: (name, output shape after the layer, trainable parameters as the paper counts them).
PAPER_LAYERS = (
    ("C1", (28, 28, 6), 156),
    ("S2", (14, 14, 6), 12),
    ("C3", (10, 10, 16), 1516),
    ("S4", (5, 5, 16), 32),
    ("C5", (120,), 48120),
    ("F6", (84,), 10164),
)


def _lenet(**fields):
    c = config_lib.load("lenet5")
    for key, value in fields.items():
        c.model[key] = value
    return models.create_model(c.model)


def test_lenet5_has_the_papers_layers_shapes_and_parameter_counts():
    model = _lenet()
    x = jnp.zeros((2, 784))
    variables = model.init(jax.random.PRNGKey(0), x)
    params = variables["params"]
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    outputs = {k: v for k, v in state["intermediates"].items() if k != "__call__"}
    shapes = {k: v["__call__"][0].shape[1:] for k, v in outputs.items()}
    for name, shape, count in PAPER_LAYERS:
        assert models.count_params(params[name]) == count, name
        assert shapes[name] == shape, name
    assert models.count_params(params["Output"]) == 84 * 10 + 10  # The RBF layer's stand-in.
    assert models.count_params(params) == sum(n for *_, n in PAPER_LAYERS) + 850


def test_lenet5_c3_follows_table_i_or_connects_fully():
    assert len(lenet5.C3_INPUTS) == 16 and sum(map(len, lenet5.C3_INPUTS)) == 60
    # Table I's first column takes S2 maps 0, 1, 2 and its last takes all six.
    assert lenet5.C3_INPUTS[0] == (0, 1, 2) and lenet5.C3_INPUTS[15] == tuple(range(6))
    full = _lenet(lenet5_c3="full")
    params = full.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
    assert models.count_params(params["C3"]) == 5 * 5 * 6 * 16 + 16


@pytest.mark.parametrize("impl", ["slices", "vjp"])
@pytest.mark.parametrize("table", ["paper", "full"])
def test_lenet5_training_forms_are_nn_convs_function_and_gradient(impl, table):
    fast = _lenet(conv_impl=impl, lenet5_c3=table)
    native = _lenet(conv_impl="native", lenet5_c3=table)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 784))
    params = native.init(jax.random.PRNGKey(0), x)["params"]

    def loss(model, p):
        return jnp.sum(model.apply({"params": p}, x, train=True) ** 2)

    np.testing.assert_allclose(
        fast.apply({"params": params}, x, train=True),
        native.apply({"params": params}, x),
        atol=1e-5,
    )
    g_fast, g_native = (jax.grad(lambda p, m=m: loss(m, p))(params) for m in (fast, native))
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(g_fast), leaves(g_native), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_lenet5_squash_is_the_papers():
    np.testing.assert_allclose(lenet5.squash(jnp.array([-1.0, 0.0, 1.0])), [-1, 0, 1], atol=1e-4)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lenet5_c3", "partial", r"config\.model\.lenet5_c3='partial': choose one of paper, full"),
        ("bn_momentum", 1.0, r"config\.model\.bn_momentum=1\.0"),
        ("kernel_init", "zeros", r"kernel_init='zeros': LeNet-5 from zero weights"),
    ],
)
def test_bad_zoo_fields_are_named(field, value, message):
    with pytest.raises(UserError, match=message):
        _lenet(**{field: value})


def test_show_config_lists_the_owned_fields():
    out = subprocess.run(
        [sys.executable, "-m", "mnist_jax.main", "--config=lenet5", "--show_config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "model.lenet5_c3 = 'paper'" in out and "model.bn_momentum = 0.9" in out
