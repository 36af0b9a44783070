"""Data parallelism: 1 vs 8 devices, and 2 real processes vs 1, agree to float tolerance; so
do sweep members split over 8 devices and trained on 1.

Each run is a subprocess, because JAX fixes its device count (JAX_NUM_CPU_DEVICES) and its
distributed runtime when it starts.
"""

from __future__ import annotations

import os
import socket
import subprocess

import numpy as np
import pytest

from mnist_jax import metrics, sweep

from conftest import REPO, main_args, small_config, sweep_args


def _args(idx_dir, workdir, *extra):
    return main_args(
        idx_dir,
        workdir,
        "--config.batch_size=40",
        "--config.num_steps=90",
        "--config.num_periods=3",
        "--config.model.hidden_units=(64,)",
        "--config.model.dropout_rate=0.1",
        *extra,
    )


def _env(num_devices: int) -> dict:
    return {**os.environ, "JAX_NUM_CPU_DEVICES": str(num_devices), "JAX_PLATFORMS": "cpu"}


def _run(args, num_devices):
    proc = subprocess.run(
        args, cwd=REPO, env=_env(num_devices), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_metrics(a, b):
    rows_a, rows_b = metrics.read_jsonl(a), metrics.read_jsonl(b)
    assert [(r["step"], r["split"]) for r in rows_a] == [(r["step"], r["split"]) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        np.testing.assert_allclose(ra["log_loss"], rb["log_loss"], rtol=1e-4)
        assert abs(ra["accuracy"] - rb["accuracy"]) <= 0.002


def test_eight_devices_match_one(tmp_path, idx_dir):
    _run(_args(idx_dir, tmp_path / "one"), 1)
    proc = _run(_args(idx_dir, tmp_path / "eight"), 8)
    assert "on 8 device(s)" in proc.stderr
    assert_same_metrics(tmp_path / "one" / "metrics.jsonl", tmp_path / "eight" / "metrics.jsonl")


def test_sweep_members_split_over_eight_devices_match_one_device(tmp_path, idx_dir):
    """9 members, 6 at a time, on 8 devices: 6 on 2 rows of 4 devices (3 mapped per row),
    then 3 on all 8 by data parallelism alone (gcd(members, devices) rows), each member as on
    1 device."""
    import jax

    specs = ["optimizer.learning_rate=0.05,0.1,0.2", "seed=0,1,2"]
    flags = ["--config.batch_size=40", "--config.num_steps=40", "--config.num_periods=2",
             "--max_parallel=6", *(f"--sweep={s}" for s in specs)]  # fmt: skip
    proc = _run(sweep_args(idx_dir, tmp_path / "eight", *flags), 8)
    assert "on 8 device(s) (2 member groups); members learning_rate=0.05-seed=0," in proc.stderr
    assert "on 8 device(s); members learning_rate=0.2-seed=0," in proc.stderr
    assert jax.device_count() == 1
    c = small_config(idx_dir, "linear", batch_size=40, num_steps=40, num_periods=2)
    rows = sweep.run_sweep(c, tmp_path / "one", specs, max_parallel=6, progress=False)
    assert len(rows) == 9
    for name in (r["member"] for r in rows):
        assert_same_metrics(tmp_path / "one" / name / "metrics.jsonl",
                            tmp_path / "eight" / name / "metrics.jsonl")  # fmt: skip


def test_batch_must_divide_by_devices(tmp_path, idx_dir):
    args = _args(idx_dir, tmp_path / "w", "--config.batch_size=42")
    proc = subprocess.run(args, cwd=REPO, env=_env(8), capture_output=True, text=True)
    assert proc.returncode == 1
    assert "error: config.batch_size=42 must divide by the 8 devices" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, idx_dir):
    """Two processes of 2 CPU devices each (jax.distributed over 127.0.0.1) == 1 x 4."""
    _run(_args(idx_dir, tmp_path / "single"), 4)
    port = _free_port()
    workdir = tmp_path / "multi"
    procs = [
        subprocess.Popen(
            _args(
                idx_dir,
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--initialization_timeout=60",
            ),
            cwd=REPO,
            env=_env(2),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        errs = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "process 1 of 2" in errs[1]
    assert_same_metrics(tmp_path / "single" / "metrics.jsonl", workdir / "metrics.jsonl")
    # Only process 0 wrote: one metric row per evaluation, one TensorBoard event file.
    assert len(metrics.read_jsonl(workdir / "metrics.jsonl")) == 6
    assert len(list((workdir / "tensorboard").iterdir())) == 1
    assert metrics.read_json(workdir / "results.json")["num_processes"] == 2


@pytest.mark.parametrize("bad", [["--num_processes=2"], ["--num_processes=2", "--process_id=2"]])
def test_bad_distributed_flags(tmp_path, idx_dir, bad):
    args = _args(idx_dir, tmp_path / "w", "--coordinator_address=127.0.0.1:1", *bad)
    proc = subprocess.run(args, cwd=REPO, env=_env(1), capture_output=True, text=True)
    assert proc.returncode == 1 and "error: --coordinator_address needs" in proc.stderr
