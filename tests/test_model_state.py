"""Model state (a module's collections besides params, here BatchNorm's batch_stats) through
every path: training updates it, evaluation reads its running averages, checkpoints carry it
under their digest, resumes, sweeps (map and vmap) and data parallelism reproduce it, and
restore/predict/export use it. A stateless model's checkpoints keep their layout."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_export import call_in_a_clean_process
from test_scale import assert_same_metrics

from mnist_jax import api, checkpoint, data, driver, export, optim, step, sweep
from mnist_jax.errors import UserError
from mnist_jax.models import BNCNN
from mnist_jax.sharding import Placement

from conftest import REPO, bn_net, saved_state, small_config, train_results


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_same_bits(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def assert_close(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


@pytest.fixture
def bn_config(idx_dir):
    return small_config(idx_dir, "dnn", num_periods=2)


@pytest.mark.parametrize("model", [bn_net(), BNCNN(conv_features=(4,), hidden_units=(8,))])
def test_training_updates_the_state_and_evaluation_reads_its_running_averages(sample, model):
    tx = optim.make_optimizer(small_config("", "dnn").optimizer, 1000)
    init = step.init_state(model, tx, 0)
    assert set(init.model_state) == {"batch_stats"}
    chunk = jax.jit(functools.partial(step.train_chunk, model=model, tx=tx, batch_size=20))
    state, stats = chunk(init, sample.images, sample.labels, jnp.arange(1000), 0, 30)
    assert int(stats["nonfinite_step"]) == -1
    for before, after in zip(_leaves(init.model_state), _leaves(state.model_state), strict=True):
        assert not np.allclose(before, after)  # Every running mean and variance moved.
    variables = step.variables_of(state)
    images, labels = sample.images[:40], sample.labels[:40]
    probs = np.asarray(step.predict_probs(variables, images, model=model))
    # Running averages, not batch statistics: an image's prediction ignores its batch.
    alone = [step.predict_probs(variables, images[i : i + 1], model=model) for i in range(4)]
    np.testing.assert_allclose(probs[:4], np.concatenate(alone), atol=1e-6)
    # ... and they are this state's averages, not the initial ones.
    stale = step.predict_probs({**variables, **init.model_state}, images, model=model)
    assert not np.allclose(probs, stale, atol=1e-3)
    split = Placement().put_eval(data.Split(images, labels), 16)
    sums = step.eval_sums(variables, split.images, split.labels, split.size, model=model)
    assert int(sums["correct"]) == int(np.sum(probs.argmax(1) == labels))


def test_any_declared_collection_is_state_and_sown_intermediates_are_not(sample):
    """Not only batch_stats: a collection a module declares is carried from step to step;
    Flax's `sow` collection (per-call outputs) is left out, so the loop's carry keeps its
    shape."""
    import flax.linen as nn

    class Counting(nn.Module):
        num_classes: int = 10

        @nn.compact
        def __call__(self, x, *, train: bool = False):
            seen = self.variable("counters", "examples", lambda: jnp.zeros((), jnp.int32))
            if train:
                seen.value += x.shape[0]
            self.sow("intermediates", "input_mean", x.mean())
            return nn.Dense(self.num_classes)(x)

    model = Counting()
    tx = optim.make_optimizer(small_config("", "linear").optimizer, 1000)
    init = step.init_state(model, tx, 0)
    assert set(init.model_state) == {"counters"}
    chunk = jax.jit(functools.partial(step.train_chunk, model=model, tx=tx, batch_size=20))
    state, _ = chunk(init, sample.images, sample.labels, jnp.arange(1000), 0, 7)
    assert int(state.model_state["counters"]["examples"]) == 7 * 20
    probs = step.predict_probs(step.variables_of(state), sample.images[:3], model=model)
    assert probs.shape == (3, 10)


def test_resume_n_to_2n_equals_2n_straight_including_batch_stats(tmp_path, bn_config):
    full = bn_config.copy_and_resolve_references()
    full.num_steps = 120
    straight_results = train_results(full, tmp_path / "full", model=bn_net())
    bn_config.num_steps = 60
    train_results(bn_config, tmp_path / "resumed", model=bn_net())
    bn_config.num_steps = 120
    results = train_results(bn_config, tmp_path / "resumed", model=bn_net())
    assert results["resumed_from_step"] == 60
    straight, resumed = saved_state(tmp_path / "full"), saved_state(tmp_path / "resumed")
    assert set(straight["model_state"]) == {"batch_stats"}
    assert_same_bits(straight, resumed)
    assert results["final"] == straight_results["final"]  # Evaluated with the same averages.


def test_the_digest_covers_batch_stats(tmp_path, bn_config, monkeypatch):
    """A checkpoint whose batch_stats lost one bit, its digest intact, is refused."""
    bn_config.num_steps = 20
    train_results(bn_config, tmp_path, model=bn_net())
    saved = saved_state(tmp_path)
    at, true_digest = int(saved["step"]), checkpoint.digest(saved)
    mean = saved["model_state"]["batch_stats"]["BatchNorm_0"]["mean"]
    flipped = np.array(mean)
    flipped.view(np.uint8)[0] ^= 1
    saved["model_state"]["batch_stats"]["BatchNorm_0"]["mean"] = flipped
    shutil.rmtree(tmp_path / "checkpoints" / str(at))
    with monkeypatch.context() as m:  # Writes the flipped arrays under the original digest.
        m.setattr(checkpoint, "digest", lambda tree: true_digest)
        with checkpoint.Checkpointer(tmp_path / "checkpoints") as c:
            c.save(at, step.TrainState(**saved))
    corrupt = rf"checkpoint .*checkpoints/{at} is corrupt \(its arrays do not match their digest\)"
    with pytest.raises(UserError, match=corrupt):
        api.load_run(tmp_path, model=bn_net())
    bn_config.num_steps = 40
    with pytest.raises(UserError, match=corrupt):
        train_results(bn_config, tmp_path, model=bn_net())


def test_a_stateless_checkpoint_keeps_its_layout_and_digest(tmp_path, idx_dir):
    """No model_state entry for a model without state: checkpoints written before model state
    existed restore, and new ones are the same files."""
    c = small_config(idx_dir, "linear", num_steps=20, num_periods=1)
    run = api.train(c, tmp_path, progress=False)
    assert run.model_state == {}
    saved = saved_state(tmp_path)
    assert set(saved) == {"step", "params", "opt_state", "rng", "loss_sum"}
    assert checkpoint.as_dict(step.TrainState(**saved)).keys() == saved.keys()


@pytest.mark.parametrize("vectorize", ["map", "vmap"])
def test_sweep_members_carry_their_own_batch_stats(tmp_path, bn_config, vectorize):
    """map: every member equals its single run to the bit; vmap: within float tolerance."""
    specs = ["optimizer.learning_rate=0.05,0.2", "seed=0,1"]
    members = sweep.members(bn_config, specs, tmp_path / "sweep")
    for m in members:  # The module mj.train(model=...) would hand over.
        m.model = bn_net()
    driver.run(members, vectorize=vectorize, progress=False)
    for m in members:
        train_results(m.config, tmp_path / "single" / m.name, model=bn_net())
        single, member = saved_state(tmp_path / "single" / m.name), saved_state(m.rundir.path)
        assert set(member["model_state"]) == {"batch_stats"}
        if vectorize == "map":
            assert_same_bits(single, member)
        else:
            assert_close(single, member)


TRAIN_BN = """
import sys
sys.path.insert(0, "tests")
import jax
import numpy as np
from conftest import bn_net, small_config
from mnist_jax import api
c = small_config(sys.argv[1], "dnn", batch_size=40, num_steps=90, num_periods=3)
run = api.train(c, sys.argv[2], progress=False, model=bn_net())
assert set(run.model_state) == {"batch_stats"} and len(jax.devices()) == int(sys.argv[3])
np.savez(sys.argv[2] + ".npz", *map(np.asarray, jax.tree_util.tree_leaves(run.variables)))
"""


def test_data_parallel_batch_stats_match_one_device(tmp_path, idx_dir):
    """The batch is sharded over 8 devices and BatchNorm's batch mean is one jitted global
    reduction: statistics are synced over the mesh, and 8 devices match 1."""
    for n in (1, 8):
        env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(n), "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run(
            [sys.executable, "-c", TRAIN_BN, str(idx_dir), str(tmp_path / str(n)), str(n)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, eight = (np.load(tmp_path / f"{n}.npz") for n in (1, 8))
    assert len(one.files) == len(eight.files)
    for name in one.files:  # batch_stats and params.
        np.testing.assert_allclose(one[name], eight[name], rtol=2e-4, atol=2e-5)
    assert_same_metrics(tmp_path / "1" / "metrics.jsonl", tmp_path / "8" / "metrics.jsonl")
    assert len(jax.devices()) == 1  # The run written on 8 devices restores on 1, as it was.
    read = api.load_run(tmp_path / "8", model=bn_net())
    for a, b in zip(jax.tree_util.tree_leaves(read.variables), eight.values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_predict_and_export_use_the_running_averages(tmp_path, bn_config, sample):
    bn_config.num_steps = 30
    run = api.train(bn_config, tmp_path / "run", progress=False, model=bn_net())
    loaded = api.load_run(tmp_path / "run", model=bn_net())
    assert_same_bits(loaded.variables, run.variables)
    again = api.train(bn_config, tmp_path / "run", progress=False, model=bn_net())  # Finished.
    assert_same_bits(again.variables, run.variables)
    assert_same_bits(loaded.model_state, saved_state(tmp_path / "run")["model_state"])
    images = sample.images[:64]
    probs = run.predict(images)
    assert_same_bits(loaded.predict(images), probs)
    np.testing.assert_allclose(run.predict(images[:1]), probs[:1], atol=1e-6)  # Batch-free.
    (tmp_path / "bn.jax").write_bytes(export.exported(loaded.model, loaded.variables).serialize())
    out = call_in_a_clean_process(tmp_path, {"bn_64": images})
    np.testing.assert_allclose(out["bn_64"], probs, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="does not match the given model"):
        api.load_run(tmp_path / "run", model=bn_net(units=16))
