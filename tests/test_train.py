"""The train step, the fused loop and evaluation: correctness, not speed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import config as config_lib, data, models, train
from mnist_jax.errors import UserError

from conftest import small_config


def _engine(config, num_train):
    model = models.create_model(config.model)
    tx = train.make_optimizer(config.optimizer)
    return train.Engine(model, tx, batch_size=config.batch_size, num_train=num_train)


def _steps(engine, state, images, labels, n):
    """`n` more steps in one call (reading the step back: fine outside the hot loop)."""
    return engine.train_chunk(state, images, labels, int(state.step), n)


def _tree_equal(a, b) -> bool:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in leaves)


def test_adagrad_chain_is_tf1_adagrad_after_global_clipping():
    opt = config_lib.get_config().optimizer
    opt.learning_rate, opt.clip_norm = 0.5, 1.0
    tx = train.make_optimizer(opt)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}  # Global norm 13.
    updates, _ = tx.update(grads, tx.init(params), params)
    for k in params:
        g = np.asarray(grads[k]) / 13.0  # Clipped to norm 1 over all parameters together.
        accum = 0.1 + g**2  # TF1: accumulator starts at 0.1, no epsilon.
        np.testing.assert_allclose(updates[k], -0.5 * g / np.sqrt(accum), rtol=1e-6)


def test_train_steps_lower_the_loss(sample):
    c = small_config("", "dnn")
    engine = _engine(c, len(sample))
    images, labels = engine.put_replicated(sample.images), engine.put_replicated(sample.labels)
    split = engine.put_eval(sample, 1000)
    state = engine.init(0)
    before = engine.eval_split(state.params, split)["log_loss"]
    state, stats = _steps(engine, state, images, labels, 50)
    after = engine.eval_split(state.params, split)["log_loss"]
    assert int(state.step) == 50 and int(stats["nonfinite_step"]) == -1
    assert after < 0.5 * before


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_chunking_does_not_change_the_result(sample, dropout):
    """10 steps in one call == 4 + 6 == ten calls of one step, bit for bit, across epochs."""
    c = small_config("", "dnn", **{"model.dropout_rate": dropout, "batch_size": 1000})
    engine = _engine(c, len(sample))  # 5 steps per epoch: the chunks cross epochs.
    images, labels = engine.put_replicated(sample.images), engine.put_replicated(sample.labels)
    one, _ = _steps(engine, engine.init(0), images, labels, 10)
    two, _ = _steps(engine, engine.init(0), images, labels, 4)
    two, _ = _steps(engine, two, images, labels, 6)
    many = engine.init(0)
    for _ in range(10):
        many, _ = _steps(engine, many, images, labels, 1)
    assert _tree_equal(one, two) and _tree_equal(one, many)


def test_each_epoch_visits_every_example_once(sample):
    c = small_config("", "linear", batch_size=500)
    engine = _engine(c, 5000)
    key = jax.random.fold_in(engine.init(0).rng, train.SHUFFLE)
    for epoch in range(2):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 5000))
        assert sorted(perm.tolist()) == list(range(5000))


def test_evaluation_counts_every_example_once(sample):
    c = small_config("", "linear")
    engine = _engine(c, len(sample))
    state = engine.init(0)
    state, _ = _steps(
        engine,
        state,
        engine.put_replicated(sample.images),
        engine.put_replicated(sample.labels),
        30,
    )
    part = data.Split(sample.images[:1234], sample.labels[:1234])
    m = engine.eval_split(state.params, engine.put_eval(part, 500))  # 3 batches, 266 padded.
    logits = engine.model.apply({"params": state.params}, train.scale_images(part.images))
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, part.labels).mean()
    pred = np.asarray(jnp.argmax(logits, -1))
    assert m["accuracy"] == np.mean(pred == part.labels)
    np.testing.assert_allclose(m["log_loss"], expected_loss, rtol=1e-5)
    cm = m["confusion_matrix"]
    assert cm.sum(axis=1).tolist() == np.bincount(part.labels, minlength=10).tolist()
    assert np.trace(cm) == np.sum(pred == part.labels)


def test_plan_chunks_stop_at_every_eval_and_checkpoint():
    c = config_lib.get_config()
    c.num_steps, c.num_periods, c.checkpoint_every_steps, c.steps_per_call = 100, 4, 30, 20
    plan = train.make_plan(c, 1000)
    assert plan.eval_steps == [25, 50, 75, 100]
    assert plan.checkpoint_steps == [30, 60, 90, 100]
    chunks = plan.chunks(0)
    ends = [s + n for s, n in chunks]
    assert ends == [20, 25, 30, 50, 60, 75, 90, 100]
    assert plan.chunks(60)[0] == (60, 15)
    c.num_steps, c.num_epochs, c.batch_size = 0, 2.5, 100
    assert train.make_plan(c, 1000).num_steps == 25


def test_bad_batch_sizes_are_clear_errors():
    c = small_config("", "linear")
    with pytest.raises(UserError, match="larger than the training split"):
        _engine(c, num_train=10)


@pytest.mark.parametrize("name", ["linear", "dnn", "tflearn_dnn"])
def test_each_config_trains_end_to_end(tmp_path, idx_dir, name):
    overrides = {"num_epochs": 5.0, "num_steps": 0} if name == "tflearn_dnn" else {}
    c = small_config(idx_dir, name, **overrides)
    results = train.train_and_evaluate(c, tmp_path)
    assert results["data_source"] == "idx"
    assert results["final"]["test"]["size"] == 300
    assert results["final"]["test"]["accuracy"] > 0.5
    assert sum(map(sum, results["confusion_matrix"])) == 300
    rows = [r for r in _jsonl(tmp_path / "metrics.jsonl")]
    splits = {r["split"] for r in rows}
    assert splits == {"train", "validation"}
    assert rows[-1]["step"] == results["num_steps"]
    for f in ("config.json", "results.json", "checkpoints"):
        assert (tmp_path / f).exists()


def _jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]
