"""The exported model: a jax.export artifact that plain JAX loads and calls (no mnist_jax, no
Flax), for every model and any batch size, matching `Run.predict`; bad inputs write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from mnist_jax import api, export
from mnist_jax.errors import Diverged, UserError

from conftest import NOT_IMPORTED, one_error_line, small_config, snapshot, train_results

TINY = {
    "linear": ("linear", {}),
    "mlp": ("dnn", {"model.hidden_units": (16,), "model.dropout_rate": 0.2}),
    "cnn": ("cnn", {"model.conv_features": (4,), "model.hidden_units": (16,)}),
}
BATCHES = (1, 3, 17, 128)  # One, odd sizes, and a full batch.


@pytest.fixture(scope="module")
def runs(tmp_path_factory, idx_dir) -> dict[str, api.Run]:
    """A tiny finished run of each model, and its exported artifact at <workdir>/model.jax."""
    out = {}
    for model, (config, fields) in TINY.items():
        workdir = tmp_path_factory.mktemp(model) / "run"
        c = small_config(idx_dir, config, num_steps=20, num_periods=1, **fields)
        train_results(c, workdir)
        run = api.load_run(workdir)
        run.export(workdir / "model.jax")
        out[model] = run
    return out


def artifact(run: api.Run) -> bytes:
    return (run.workdir / "model.jax").read_bytes()


def pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 784), dtype=np.uint8)


CLEAN_CALLER = (
    textwrap.dedent(
        """
    import sys

    import jax
    import numpy as np

    inputs = np.load(sys.argv[1])
    probs = {}
    for name in inputs.files:
        model = name.split("_")[0]
        exported = jax.export.deserialize(open(f"{model}.jax", "rb").read())
        probs[name] = np.asarray(exported.call(inputs[name]))
    np.savez(sys.argv[2], **probs)
    """
    )
    + NOT_IMPORTED
)


def call_in_a_clean_process(directory, inputs: dict[str, np.ndarray]):
    """CLEAN_CALLER run in a fresh interpreter in `directory` (its `NAME.jax` artifacts, no
    PYTHONPATH): the outputs of `inputs` (named `NAME_...`), as a loaded npz."""
    np.savez(directory / "in.npz", **inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", CLEAN_CALLER, "in.npz", "out.npz"],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(directory / "out.npz")


def test_plain_jax_in_a_clean_process_calls_the_artifact_like_run_predict(tmp_path, runs):
    inputs = {}
    for model, run in runs.items():
        (tmp_path / f"{model}.jax").write_bytes(artifact(run))
        for n in BATCHES:
            inputs[f"{model}_{n}"] = pixels(n, n)
    probs = call_in_a_clean_process(tmp_path, inputs)
    for name, images in inputs.items():
        expected = runs[name.split("_")[0]].predict(images)
        assert probs[name].shape == expected.shape == (len(images), 10)
        np.testing.assert_allclose(probs[name], expected, atol=1e-5, rtol=0)


@given(
    model=st.sampled_from(sorted(TINY)),
    n=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
@example(model="cnn", n=1, seed=0)
@example(model="linear", n=1, seed=1)
@example(model="mlp", n=257, seed=2)
def test_any_batch_size_of_any_model_matches_run_predict(runs, model, n, seed):
    run = runs[model]
    exported = jax.export.deserialize(artifact(run))
    images = pixels(n, seed)
    probs = np.asarray(exported.call(images))
    assert probs.shape == (n, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, run.predict(images), atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_the_artifact_and_its_sidecar_record_the_contract(runs):
    run = runs["cnn"]
    exported = jax.export.deserialize(artifact(run))
    (x,), (y,) = exported.in_avals, exported.out_avals
    assert x.dtype == np.uint8 and str(x.shape[0]) == "n" and x.shape[1] == 784
    assert y.dtype == np.float32 and str(y.shape[0]) == "n" and y.shape[1] == 10
    described = json.loads((run.workdir / "model.jax.json").read_text())
    assert described["classes"] == 10 and described["model"] == "cnn"
    assert described["input"]["dtype"] == "uint8" and described["input"]["shape"] == ["n", 784]
    assert described["step"] == run.results["num_steps"] == 20
    assert described["jax_version"] == jax.__version__
    assert set(described["platforms"]) == set(exported.platforms) >= {"cpu", "cuda", "tpu"}


def test_the_command_line_and_run_export_write_the_same_model(tmp_path, runs):
    run = runs["mlp"]
    out = tmp_path / "cli.jax"
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_jax.export", f"--workdir={run.workdir}", f"--out={out}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    images = pixels(33, 7)
    ours = jax.export.deserialize(out.read_bytes()).call(images)
    theirs = jax.export.deserialize(artifact(run)).call(images)
    np.testing.assert_array_equal(ours, theirs)
    assert run.export(run.workdir / "model.jax") == run.workdir / "model.jax"  # Again: replaced.


def _unfinished(tmp_path, runs):
    """A run killed before its end: config.json and checkpoints, no results.json."""
    import shutil

    workdir = shutil.copytree(runs["linear"].workdir, tmp_path / "unfinished")
    (workdir / "results.json").unlink()
    return workdir


def _bad_targets(tmp_path, runs):
    """(workdir, out, expected message) for each kind of bad input."""
    good, other = runs["linear"].workdir, runs["mlp"].workdir
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "target.jax").write_bytes(b"someone else's")
    (tmp_path / "link.jax").symlink_to(tmp_path / "target.jax")
    (tmp_path / "side.jax.json").mkdir()
    (tmp_path / "not_a_run").mkdir()
    return [
        (tmp_path / "missing", tmp_path / "m.jax", "does not exist"),
        (tmp_path / "not_a_run", tmp_path / "m.jax", "not a mnist-jax run directory"),
        (_unfinished(tmp_path, runs), tmp_path / "m.jax", "has not finished"),
        (good, tmp_path / "a_dir", "is a directory"),
        (good, tmp_path / "link.jax", "symbolic link"),
        (good, tmp_path / "no" / "m.jax", "does not exist"),
        (good, tmp_path / "side.jax", "side.jax.json: it is a directory"),
        (good, good / "results.json", "replace or join the files of the run"),
        (good, good / "config", "config.json: it would replace or join the files of the run"),
        (good, good / "checkpoints" / "m.jax", "replace or join the files of the run"),
        (good, good / "sweep", "sweep.json: it would replace or join the files of the run"),
        (good, tmp_path / "target.jax", "exists and is not part of an earlier export"),
        # Another run's files are as safe as the exported run's own.
        *[
            (good, other / name, message)
            for name, message in [
                ("results", "results.json: it would replace or join the files of the run"),
                ("eval_results", "eval_results.json: it would replace or join"),
                ("run", "run.json: it would replace or join"),
                ("checkpoints/m.jax", "replace or join the files of the run"),
                ("model.jax.json", "exists and is not part of an earlier export"),
            ]
        ],
    ]


# One case of each kind through the command line (a missing workdir, an unfinished run, a link,
# the run's own file, another run's file): the command turns export_run's refusal into its one
# line, whatever the case; each process costs seconds of imports, so the others call export_run.
_THROUGH_THE_CLI = (0, 2, 4, 7, 12)


def test_bad_inputs_are_one_error_line_and_write_nothing(tmp_path, runs):
    cases = _bad_targets(tmp_path, runs)
    runs_dirs = [r.workdir for r in runs.values()]
    before = snapshot(tmp_path), [snapshot(w) for w in runs_dirs]
    for i, (workdir, out, message) in enumerate(cases):
        with pytest.raises(UserError) as refused:
            export.export_run(str(workdir), str(out))  # As the command passes its flags.
        assert message in str(refused.value), (workdir, out)
        if i in _THROUGH_THE_CLI:
            proc = subprocess.run(
                [sys.executable, "-m", "mnist_jax.export", f"--workdir={workdir}", f"--out={out}"],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert message in one_error_line(proc.returncode, proc.stderr), (workdir, out)
    assert (snapshot(tmp_path), [snapshot(w) for w in runs_dirs]) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_directory_is_refused(tmp_path, runs):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with pytest.raises(UserError, match="is not writable"):
        export.export_run(runs["linear"].workdir, locked / "m.jax")
    assert not any(locked.iterdir())


def test_a_diverged_run_is_refused(tmp_path, idx_dir):
    c = small_config(idx_dir, "dnn", num_steps=20, num_periods=1, **{"model.hidden_units": (16,)})
    c.optimizer.learning_rate, c.optimizer.clip_norm, c.optimizer.name = 3e38, 0.0, "sgd"
    workdir = tmp_path / "diverged"
    with pytest.raises(Diverged):
        train_results(c, workdir)
    with pytest.raises(UserError, match="diverged at step"):
        api.Run(workdir, c, None, None, {}, []).export(tmp_path / "m.jax")
    assert not (tmp_path / "m.jax").exists()
