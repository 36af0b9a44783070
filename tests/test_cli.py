"""The command line as a user runs it: a real subprocess, one-line errors, exit statuses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mnist_jax import config as config_lib
from mnist_jax.errors import UserError

from conftest import REPO


def run_cli(*args: str, env: dict | None = None, module: str = "mnist_jax.main", timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(proc) -> str:
    """The one line a failed run printed on stderr (absl's info logs aside)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_main_job_offline_trains_on_the_sample_and_says_so(tmp_path):
    """The README's main command with no MNIST around: falls back loudly, then evaluates."""
    workdir = tmp_path / "run"
    proc = run_cli(
        "--config=configs/dnn.py",
        f"--workdir={workdir}",
        "--config.num_steps=200",
        "--config.num_periods=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FULL MNIST UNAVAILABLE" in proc.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert results["data_source"] == "sample"
    assert results["final"]["test"]["accuracy"] > 0.8
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 4
    # --mode=eval restores the checkpoint and reproduces the test accuracy.
    proc = run_cli("--config=configs/dnn.py", f"--workdir={workdir}", "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((workdir / "eval_results.json").read_text())
    assert evaluated["test"]["accuracy"] == results["final"]["test"]["accuracy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config.model.foo=3"], "unknown config field model.foo"),
        (["--config.batch_size=abc"], "--config.batch_size='abc': expected an integer"),
        (["--config.optimizer.learning_rate=0"], "optimizer.learning_rate=0.0: must be positive"),
        (["--config.batch_size=9000", "--config.data.source=sample"], "larger than the training"),
        (["--config.data.source=idx", "--config.data.dir=/nonexistent"], "does not exist"),
        (["--config.data.source=csv"], "data.source=csv needs --config.data.train_file"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    proc = run_cli("--config=configs/linear.py", f"--workdir={tmp_path / 'w'}", *args)
    assert message in error_line(proc)


@pytest.mark.parametrize(
    ("config_file", "message"),
    [
        ("configs/nope.py", "config file configs/nope.py not found"),
        ("pyproject.toml", "cannot load config file pyproject.toml"),
        ("mnist_jax/errors.py", "has no get_config() function"),
    ],
)
def test_bad_config_files(tmp_path, config_file, message):
    proc = run_cli(f"--config={config_file}", f"--workdir={tmp_path}")
    assert message in error_line(proc)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "must be positive"),
        ("num_steps", -5, "must be 0 or positive"),
        ("num_periods", 0, "must be positive"),
        ("num_epochs", 2.0, "set exactly one of"),
        ("model.hidden_units", (), "the mlp needs a hidden layer"),
        ("model.hidden_units", (64, -1), "integers from 1 to"),
        ("model.dropout_rate", 1.0, "must be in [0, 1)"),
        ("model.dropout_rate", -0.1, "must be in [0, 1)"),
        ("model.name", "rnn", "choose one of linear, mlp, cnn"),
        ("optimizer.name", "rmsprop", "choose one of adagrad, sgd, adam"),
        ("optimizer.learning_rate", -0.1, "must be positive"),
        ("optimizer.clip_norm", -1.0, "must be >= 0"),
        ("data.source", "web", "choose one of auto"),
        ("data.validation_size", -1.0, "must be >= 0"),
    ],
)
def test_config_validation(field, value, message):
    c = config_lib.get_config()
    config_lib.set_field(c, field, value)
    with pytest.raises(UserError, match=re.escape(message)) as e:
        config_lib.validate(c)
    assert f"config.{field}" in str(e.value) or "num_steps" in str(e.value)
