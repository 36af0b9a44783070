"""Models: output shapes, parameter counts, dropout only in training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.errors import UserError


def _model(name, hidden=(), dropout=0.0, init="glorot_uniform"):
    cfg = ml_collections.ConfigDict(
        {"name": name, "hidden_units": hidden, "dropout_rate": dropout, "kernel_init": init}
    )
    return models.create_model(cfg)


@pytest.mark.parametrize(
    ("name", "hidden", "count"),
    [
        ("linear", (), 784 * 10 + 10),
        ("mlp", (342, 68), 784 * 342 + 342 + 342 * 68 + 68 + 68 * 10 + 10),
        ("mlp", (512, 256), 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10),
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


def test_dropout_only_when_training():
    model = _model("mlp", (64,), dropout=0.5)
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


def test_unknown_model_and_init():
    with pytest.raises(UserError, match=r"unknown model\.name 'cnn'"):
        _model("cnn")
    with pytest.raises(UserError, match=r"unknown model\.kernel_init"):
        _model("mlp", (4,), init="ones")
