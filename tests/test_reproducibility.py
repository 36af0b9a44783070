"""Same seed, same numbers: reruns, resumes and preemptions are bit-identical on CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from mnist_jax import errors
from mnist_jax.errors import UserError

from conftest import (
    REPO,
    latest_checkpoint,
    main_args,
    metric_rows,
    same_params,
    small_config,
    train_results,
)


@pytest.fixture
def dropout_config(idx_dir):
    return small_config(idx_dir, "dnn", **{"model.dropout_rate": 0.3, "num_periods": 4})


def test_same_seed_twice_is_bit_identical(tmp_path, dropout_config):
    train_results(dropout_config, tmp_path / "a")
    train_results(dropout_config, tmp_path / "b")
    assert same_params(tmp_path / "a", tmp_path / "b")
    assert metric_rows(tmp_path / "a") == metric_rows(tmp_path / "b")


def test_different_seed_gives_different_parameters(tmp_path, dropout_config):
    train_results(dropout_config, tmp_path / "a")
    dropout_config.seed = 1
    train_results(dropout_config, tmp_path / "b", allow_config_change=True)
    assert not same_params(tmp_path / "a", tmp_path / "b")


def test_resume_n_to_2n_equals_2n(tmp_path, dropout_config):
    full = dropout_config.copy_and_resolve_references()
    full.num_steps = 120
    train_results(full, tmp_path / "full")
    dropout_config.num_steps = 60
    train_results(dropout_config, tmp_path / "resumed")
    dropout_config.num_steps = 120
    results = train_results(dropout_config, tmp_path / "resumed")
    assert results["resumed_from_step"] == 60
    assert same_params(tmp_path / "full", tmp_path / "resumed")


def test_rerunning_a_finished_run_changes_nothing(tmp_path, dropout_config):
    first = train_results(dropout_config, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = train_results(dropout_config, tmp_path)
    assert second == first
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_sigterm_then_resume_reaches_the_uninterrupted_state(tmp_path, idx_dir):
    """A real subprocess gets a real SIGTERM mid-run, saves, exits 143, and resumes exactly."""
    args = lambda workdir: main_args(  # noqa: E731
        idx_dir,
        workdir,
        "--config.batch_size=20",
        # The signal lands after 2,000 bytes of metrics (about step 5): 600 steps leave it
        # mid-run with room to spare on a loaded machine.
        "--config.num_steps=600",
        "--config.num_periods=600",  # An evaluation (and a metrics row) every step...
        "--config.checkpoint_every_steps=100000",  # ...but checkpoints only at the end.
        "--config.model.hidden_units=(32,)",
        "--config.model.dropout_rate=0.2",
        "--config.tensorboard=False",
    )
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(args(interrupted), cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    dump = interrupted / "metrics.jsonl"
    while time.time() < deadline and (not dump.exists() or len(dump.read_text()) < 2000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM at step" in err
    stopped_at = latest_checkpoint(interrupted)
    assert 0 < stopped_at < 600

    resumed = subprocess.run(args(interrupted), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    straight = subprocess.run(args(tmp_path / "straight"), cwd=REPO, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert same_params(interrupted, tmp_path / "straight")
    assert metric_rows(interrupted) == metric_rows(tmp_path / "straight")
    a = json.loads((interrupted / "results.json").read_text())["final"]
    b = json.loads((tmp_path / "straight" / "results.json").read_text())["final"]
    assert a == b


def test_divergence_stops_with_the_step_and_writes_no_nan(tmp_path, idx_dir):
    c = small_config(idx_dir, "dnn", **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e4})
    c.optimizer.clip_norm = 0.0
    with pytest.raises(errors.Diverged, match=r"non-finite loss at step \d+"):
        train_results(c, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["diverged"]["step"] >= 0
    assert "NaN" not in (tmp_path / "results.json").read_text()
    assert latest_checkpoint(tmp_path) is None


def _corrupt(directory, which: str) -> None:
    for f in directory.rglob("*"):
        if not f.is_file():
            continue
        if which == "everything":
            f.write_bytes(b"\x00garbage" * 4)
        elif which == "truncated arrays" and "ocdbt.process_0" in str(f) and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("which", ["everything", "truncated arrays"])
def test_corrupt_checkpoint_is_a_clear_error_and_older_ones_survive(tmp_path, idx_dir, which):
    c = small_config(idx_dir, "linear")
    train_results(c, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [20, 40, 60]
    _corrupt(tmp_path / "checkpoints" / "60", which)
    c.num_steps = 80
    with pytest.raises(UserError, match=r"checkpoint .*checkpoints/60 is (corrupt|unreadable)"):
        train_results(c, tmp_path)
    assert (tmp_path / "checkpoints" / "40").is_dir()


def test_checkpoint_of_another_model_shape_is_refused(tmp_path, idx_dir):
    c = small_config(idx_dir, "dnn", **{"model.hidden_units": (32,)})
    train_results(c, tmp_path)
    c.model.hidden_units = (64,)
    with pytest.raises(UserError, match="holds a run of a different config"):
        train_results(c, tmp_path)
    mismatch = r"does not match this config's model.*\(32,\) there, \(64,\) here"
    with pytest.raises(UserError, match=mismatch):
        train_results(c, tmp_path, allow_config_change=True)
