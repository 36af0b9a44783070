"""The pure step, the fused loop, evaluation and the optimizer: correctness, not speed."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import (
    config as config_lib,
    control,
    data,
    models,
    optim,
    shuffle as shuffle_lib,
    step,
)
from mnist_jax.errors import UserError
from mnist_jax.sharding import Placement

from conftest import small_config, train_results, trees_equal


def _parts(config):
    model = models.create_model(config.model)
    tx = optim.make_optimizer(config.optimizer, 1000)
    return model, tx


def _chunk(config, model, tx):
    return jax.jit(
        functools.partial(step.train_chunk, model=model, tx=tx, batch_size=config.batch_size)
    )


def test_adagrad_chain_is_tf1_adagrad_after_global_clipping():
    opt = config_lib.get_config().optimizer
    opt.learning_rate, opt.clip_norm = 0.5, 1.0
    tx = optim.make_optimizer(opt)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}  # Global norm 13.
    updates, _ = tx.update(grads, tx.init(params), params)
    for k in params:
        g = np.asarray(grads[k]) / 13.0  # Clipped to norm 1 over all parameters together.
        accum = 0.1 + g**2  # TF1: accumulator starts at 0.1, no epsilon.
        np.testing.assert_allclose(updates[k], -0.5 * g / np.sqrt(accum), rtol=1e-6)


@pytest.mark.parametrize(
    ("schedule", "checks"),
    [
        ("constant", {0: 1.0, 50: 1.0, 99: 1.0}),
        ("warmup_cosine", {0: 0.0, 10: 1.0, 55: 0.5, 100: 0.0}),
        ("linear", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.5, 100: 0.0}),
        ("one_cycle", {0: 1 / 25, 10: 1.0}),
    ],
)
def test_schedules_scale_the_injected_peak(schedule, checks):
    opt = config_lib.get_config().optimizer
    opt.name, opt.learning_rate, opt.clip_norm = "sgd", 0.2, 0.0
    opt.schedule, opt.warmup_fraction = schedule, 0.1
    shape = optim.unit_schedule(opt, 100)
    for count, value in checks.items():
        np.testing.assert_allclose(float(shape(count)), value, atol=1e-6)
    # An SGD step moves each parameter by -lr(count) * grad: the schedule is in the update.
    tx = optim.make_optimizer(opt, 100)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for count in range(12):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        np.testing.assert_allclose(updates["w"], -0.2 * float(shape(count)), rtol=1e-5)


def test_an_allowed_config_change_replaces_the_injected_hyperparameters():
    opt = config_lib.get_config().optimizer
    tx = optim.make_optimizer(opt)
    state = tx.init({"w": jnp.ones(2)})
    opt.learning_rate, opt.clip_norm = 0.5, 2.0
    new = optim.set_hyperparams(state, opt)
    assert float(new.hyperparams["learning_rate"]) == 0.5
    assert float(new.hyperparams["clip_norm"]) == 2.0


def test_train_steps_lower_the_loss(sample):
    c = small_config("", "dnn")
    model, tx = _parts(c)
    p = Placement()
    images, labels = p.put(sample.images), p.put(sample.labels)
    rows = jnp.arange(len(sample))
    split = p.put_eval(sample, 1000)
    evaluate = jax.jit(functools.partial(step.eval_sums, model=model))
    state = step.init_state(model, tx, 0)
    before = evaluate(step.variables_of(state), split.images, split.labels, split.size)["loss_sum"]
    state, stats = _chunk(c, model, tx)(state, images, labels, rows, 0, 50)
    after = evaluate(step.variables_of(state), split.images, split.labels, split.size)["loss_sum"]
    assert int(state.step) == 50 and int(stats["nonfinite_step"]) == -1
    assert after < 0.5 * before


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_chunking_does_not_change_the_result(sample, dropout):
    """10 steps in one call == 4 + 6 == ten calls of one step, bit for bit, across epochs."""
    c = small_config("", "dnn", **{"model.dropout_rate": dropout, "batch_size": 1000})
    model, tx = _parts(c)
    run = _chunk(c, model, tx)  # 5 steps per epoch: the chunks cross epochs.
    images, labels, rows = sample.images, sample.labels, jnp.arange(len(sample))
    init = functools.partial(step.init_state, model, tx, 0)
    one, _ = run(init(), images, labels, rows, 0, 10)
    two, _ = run(init(), images, labels, rows, 0, 4)
    two, _ = run(two, images, labels, rows, 4, 6)
    many = init()
    for s in range(10):
        many, _ = run(many, images, labels, rows, s, 1)
    assert trees_equal(one, two) and trees_equal(one, many)


def test_the_loop_takes_each_epochs_permutation_in_consecutive_batches(sample):
    """The fused loop equals a plain Python loop over the batches it is specified to take:
    epoch e's order is permutation(fold_in(fold_in(rng, SHUFFLE), e)) of the training rows,
    cut into consecutive batches, each example once per epoch (the rest dropped)."""
    c = small_config("", "dnn", **{"model.dropout_rate": 0.2, "batch_size": 300})
    model, tx = _parts(c)
    rows = np.arange(1000, 2000)  # Training example i is row 1000 + i of the data.
    state = step.init_state(model, tx, 7)
    fused, _ = _chunk(c, model, tx)(state, sample.images, sample.labels, rows, 0, 8)

    shuffle = jax.random.fold_in(state.rng, step.SHUFFLE)
    one_step = jax.jit(functools.partial(step.train_step, model=model, tx=tx))
    seen = []
    for s in range(8):  # 3 steps per epoch of 1,000 examples: 100 dropped each epoch.
        epoch, k = divmod(s, 3)
        perm = np.asarray(shuffle_lib.epoch_permutation(jax.random.fold_in(shuffle, epoch), 1000))
        batch = rows[perm[k * 300 : (k + 1) * 300]]
        seen.append(batch)
        state, _ = one_step(state, sample.images[batch], sample.labels[batch])
    assert trees_equal(fused.replace(loss_sum=0.0), state)  # The loop also sums the losses.
    first_epoch = np.concatenate(seen[:3])
    assert len(set(first_epoch.tolist())) == 900 and set(first_epoch) <= set(rows)
    assert not np.array_equal(np.sort(seen[0]), np.sort(seen[3]))  # A fresh order per epoch.


def test_evaluation_counts_every_example_once(sample):
    c = small_config("", "linear")
    model, tx = _parts(c)
    state, _ = _chunk(c, model, tx)(
        step.init_state(model, tx, 0), sample.images, sample.labels, jnp.arange(5000), 0, 30
    )
    part = data.Split(sample.images[:1234], sample.labels[:1234])
    split = Placement().put_eval(part, 500)  # 3 batches, 266 padded.
    v = step.variables_of(state)
    sums = step.eval_sums(v, split.images, split.labels, split.size, model=model)
    logits = model.apply({"params": state.params}, step.scale_images(part.images))
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, part.labels).sum()
    pred = np.asarray(jnp.argmax(logits, -1))
    assert int(sums["correct"]) == np.sum(pred == part.labels)
    np.testing.assert_allclose(sums["loss_sum"], expected_loss, rtol=1e-5)
    cm = np.asarray(sums["confusion"])
    assert cm.sum(axis=1).tolist() == np.bincount(part.labels, minlength=10).tolist()
    assert np.trace(cm) == np.sum(pred == part.labels)


def test_plan_stops_at_every_eval_and_checkpoint():
    c = config_lib.get_config()
    c.num_steps, c.num_periods, c.checkpoint_every_steps = 100, 4, 30
    plan = control.make_plan(c, 1000)
    assert plan.eval_steps == [25, 50, 75, 100]
    assert plan.checkpoint_steps == [30, 60, 90, 100]
    stops, s = [], 0
    while s < plan.num_steps:
        s = plan.next_stop(s)
        stops.append(s)
    assert stops == [25, 30, 50, 60, 75, 90, 100]
    c.num_steps, c.num_epochs, c.batch_size = 0, 2.5, 100
    assert control.make_plan(c, 1000).num_steps == 25


def test_bad_batch_sizes_are_clear_errors():
    with pytest.raises(UserError, match="larger than the training split"):
        Placement().check_batch(100, 10)


@pytest.mark.parametrize("name", ["linear", "dnn", "tflearn_dnn"])
def test_each_config_trains_end_to_end(tmp_path, idx_dir, name):
    overrides = {"num_epochs": 5.0, "num_steps": 0} if name == "tflearn_dnn" else {}
    c = small_config(idx_dir, name, **overrides)
    results = train_results(c, tmp_path)
    assert results["data_source"] == "idx"
    assert results["final"]["test"]["size"] == 300
    assert results["final"]["test"]["accuracy"] > 0.5
    assert sum(map(sum, results["confusion_matrix"])) == 300
    assert set(results["timing"]) >= {"startup_s", "data_s", "compile_s", "train_s", "wall_s"}
    from mnist_jax.rundir import read_jsonl

    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert {r["split"] for r in rows} == {"train", "validation"}
    assert rows[-1]["step"] == results["num_steps"]
    for f in ("config.json", "results.json", "checkpoints"):
        assert (tmp_path / f).exists()


@pytest.mark.parametrize("eval_train_examples", [0, 100, 10**6])
def test_the_end_scores_the_periods_training_subset(tmp_path, idx_dir, eval_train_examples):
    """Validation and test in full; train: eval_train_examples of them (0 or more: all)."""
    c = small_config(idx_dir, "linear", num_steps=20, eval_train_examples=eval_train_examples)
    results = train_results(c, tmp_path)
    sizes = results["data_sizes"]
    expected = min(eval_train_examples or sizes["train"], sizes["train"])
    assert results["final"]["train"]["size"] == expected
    assert results["final"]["validation"]["size"] == sizes["validation"]
    assert results["final"]["test"]["size"] == sizes["test"]
