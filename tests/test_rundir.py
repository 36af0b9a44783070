"""The run directory's promises: one process per workdir, nothing written before a command is
known to go on, exact trimming on resume, allowed changes that take effect, checkpoints that
are verified, no writes through links, and evaluation on the run's own data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from mnist_jax import api, evaluate
from mnist_jax.errors import UserError
from mnist_jax.rundir import RunDir, read_jsonl

from conftest import (
    REPO,
    main_args,
    metric_rows,
    one_error_line,
    same_params,
    small_config,
    snapshot,
    train_results,
)


@pytest.fixture(scope="module")
def config(idx_dir):
    return small_config(idx_dir, "dnn", **{"model.hidden_units": (32,), "model.dropout_rate": 0.2})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config):
    """An uninterrupted 60-step run (checkpoints at 20, 40, 60)."""
    workdir = tmp_path_factory.mktemp("reference")
    train_results(config, workdir)
    return workdir


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- the lock


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    holder = RunDir(tmp_path / "run")
    holder.lock()
    holder.claim()
    with pytest.raises(UserError, match=rf"in use by pid {os.getpid()} \(.*, since .*\)"):
        RunDir(tmp_path / "run").lock()
    holder.unlock()
    RunDir(tmp_path / "run").lock()  # Free again.


def test_a_killed_holders_lock_is_taken_over(tmp_path, idx_dir):
    workdir = tmp_path / "run"
    code = (
        "import sys, time; from mnist_jax.rundir import RunDir; r = RunDir(sys.argv[1]); "
        "r.lock(); r.claim(); print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    refused = subprocess.run(
        [*main_args(idx_dir, workdir), "--config.num_steps=20", "--config.num_periods=1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    line = one_error_line(refused.returncode, refused.stderr)
    assert f"is in use by pid {proc.pid}" in line
    assert not (workdir / "config.json").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = subprocess.run(
        [*main_args(idx_dir, workdir), "--config.num_steps=20", "--config.num_periods=1",
         "--config.plots=False"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert after.returncode == 0, after.stderr[-2000:]


# ------------------------------------------------------------- refused commands write nothing


def test_refused_commands_leave_the_workdir_as_it_was(tmp_path, config, reference):
    workdir = copy_run(reference, tmp_path / "run")
    before = snapshot(workdir)
    shorter = config.copy_and_resolve_references()
    shorter.num_steps = 40  # Fewer steps than trained: refused.
    with pytest.raises(UserError, match="already trained 60 steps"):
        api.train(shorter, workdir, progress=False)
    other = config.copy_and_resolve_references()
    other.optimizer.name = "sgd"
    with pytest.raises(UserError, match="different config"):
        api.train(other, workdir, progress=False)
    assert snapshot(workdir) == before
    api.train(config, workdir, progress=False)  # The original command still goes on.
    assert snapshot(workdir) == before  # (It had finished: nothing to do.)
    (workdir / "checkpoints" / "60" / "state" / "_METADATA").write_text("{")
    before = snapshot(workdir)
    longer = config.copy_and_resolve_references()
    longer.num_steps = 80
    with pytest.raises(UserError, match=r"checkpoints/60 is (corrupt|unreadable)"):
        api.train(longer, workdir, progress=False)
    assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- resume


def test_resume_trims_metrics_to_the_restored_step(tmp_path, config, reference):
    workdir = copy_run(reference, tmp_path / "run")
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "60")  # As if killed before the last save.
    (workdir / "results.json").unlink()
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "split": "train", "log_lo')  # Cut short by the kill.
    assert max(r["step"] for r in read_jsonl(workdir / "metrics.jsonl")) == 60
    train_results(config, workdir)
    assert metric_rows(workdir) == metric_rows(reference)
    assert same_params(workdir, reference)


def test_rows_without_any_checkpoint_are_dropped(tmp_path, config, reference):
    workdir = copy_run(reference, tmp_path / "run")
    import shutil

    shutil.rmtree(workdir / "checkpoints")
    (workdir / "results.json").unlink()
    train_results(config, workdir)
    assert metric_rows(workdir) == metric_rows(reference)


def test_a_malformed_metrics_line_is_an_error_not_a_deletion(tmp_path, config, reference):
    workdir = copy_run(reference, tmp_path / "run")
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"step": 20, "split": "train", "log_loss": oops}\n'
    (workdir / "metrics.jsonl").write_text("".join(lines))
    before = snapshot(workdir)
    longer = config.copy_and_resolve_references()
    longer.num_steps = 80
    with pytest.raises(UserError, match=r"metrics.jsonl: line 2 is malformed"):
        api.train(longer, workdir, progress=False)
    assert snapshot(workdir) == before


def test_an_allowed_learning_rate_change_takes_effect(tmp_path, config, reference):
    workdir = copy_run(reference, tmp_path / "run")
    changed = config.copy_and_resolve_references()
    changed.num_steps, changed.optimizer.learning_rate = 90, 0.5
    with pytest.raises(UserError, match=r"optimizer\.learning_rate differ"):
        api.train(changed, workdir, progress=False)
    train_results(changed, workdir, allow_config_change=True)
    rates = {r["step"]: r["learning_rate"] for r in read_jsonl(workdir / "metrics.jsonl")
             if r["split"] == "train"}  # fmt: skip
    assert rates[60] == pytest.approx(config.optimizer.learning_rate)
    assert rates[90] == pytest.approx(0.5)
    assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == 0.5


# ----------------------------------------------------------------------------- checkpoints


def _flip_array_bytes(step_dir) -> None:
    """Changes bytes inside the largest array file of a checkpoint (orbax's own metadata and
    TensorStore still read it: only the digest can tell)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0x5A for b in data[middle : middle + 8])
    target.write_bytes(bytes(data))


def test_changed_checkpoint_bytes_are_refused_and_fallback_resumes(tmp_path, config, reference):
    workdir = copy_run(reference, tmp_path / "run")
    (workdir / "results.json").unlink()
    _flip_array_bytes(workdir / "checkpoints" / "60")
    with pytest.raises(UserError, match=r"checkpoints/60 is corrupt.*--fallback_checkpoint"):
        api.train(config, workdir, progress=False)
    train_results(config, workdir, fallback_checkpoint=True)  # From step 40, to the same bits.
    assert same_params(workdir, reference)
    assert metric_rows(workdir) == metric_rows(reference)


def test_checkpoints_that_is_a_file_is_one_line_and_no_hang(tmp_path, idx_dir):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("not a directory")
    proc = subprocess.run(
        [*main_args(idx_dir, workdir), "--config.num_steps=20", "--config.num_periods=1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    line = one_error_line(proc.returncode, proc.stderr)
    assert "checkpoints is not a directory" in line
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]


# ----------------------------------------------------------------------------- links


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.json", "results.json"])
def test_nothing_is_written_through_a_link_out_of_the_workdir(tmp_path, config, name):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / name).symlink_to(outside)
    with pytest.raises(UserError, match="outside the workdir"):
        api.train(config, workdir, progress=False)
    assert outside.read_text() == "precious"


# ----------------------------------------------------------------------------- evaluation


def test_eval_uses_the_runs_own_data(reference, capsys):
    result = evaluate.evaluate_workdir(reference)
    assert result["data_source"] == "idx" and result["test"]["size"] == 300
    assert "on 300 examples of idx" in capsys.readouterr().out
    other = evaluate.evaluate_workdir(reference, {"source": "sample", "dir": ""})
    assert other["data_source"] == "sample" and other["test"]["size"] == 1000
