"""Data parallelism: 1 vs 8 devices, and 2 real processes vs 1, agree to float tolerance; so
do sweep members split over 8 devices and trained on 1.

Each run is a subprocess, because JAX fixes its device count (JAX_NUM_CPU_DEVICES) and its
distributed runtime when it starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mnist_jax import api, metrics, sweep

from conftest import (
    REPO,
    latest_checkpoint,
    main_args,
    one_error_line,
    params_of,
    small_config,
    sweep_args,
)


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


@pytest.fixture(scope="module")
def on_one_device(tmp_path_factory, idx_dir) -> Path:
    """The run of `_args` on 1 device, that each other device count must match (read only)."""
    workdir = tmp_path_factory.mktemp("one_device") / "run"
    _run(_args(idx_dir, workdir), 1)
    return workdir


def test_eight_devices_match_one(tmp_path, idx_dir, on_one_device):
    proc = _run(_args(idx_dir, tmp_path / "eight"), 8)
    assert "on 8 device(s)" in proc.stderr
    assert_same_metrics(on_one_device / "metrics.jsonl", tmp_path / "eight" / "metrics.jsonl")


READ = """
import sys

import jax
import numpy as np
from mnist_jax import api

images, devices, workdirs = np.load(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
assert len(jax.devices()) == devices
for w in workdirs:
    run = api.load_run(w)
    np.save(f"{w}.read_on_{devices}.npy", run.predict(images))
    run.export(f"{w}.read_on_{devices}.jax")
"""


def test_a_checkpoint_written_on_any_device_count_is_read_on_any(tmp_path, idx_dir, sample):
    """Train on a pod, read on a laptop: a checkpoint written on 8, 4 or 2 devices is restored
    on 1 (this process: load_run, predict, --mode=eval) and on 2 (load_run, predict, export)
    onto the devices there, and every reader predicts as the others do."""
    written = {n: tmp_path / f"on_{n}" for n in (8, 4, 2)}
    for n, workdir in written.items():
        _run(_args(idx_dir, workdir, "--config.num_steps=30", "--config.num_periods=1"), n)
    images = sample.images[:64]
    np.save(tmp_path / "images.npy", images)
    _run([sys.executable, "-c", READ, str(tmp_path / "images.npy"), "2",
          *map(str, written.values())], 2)  # fmt: skip
    assert len(jax.devices()) == 1
    for workdir in written.values():
        probs = api.load_run(workdir).predict(images)
        np.testing.assert_allclose(np.load(f"{workdir}.read_on_2.npy"), probs, atol=1e-6)
        assert Path(f"{workdir}.read_on_2.jax").stat().st_size > 0
    _run([sys.executable, "-m", "mnist_jax.main", f"--workdir={written[8]}", "--mode=eval"], 1)
    final = json.loads((written[8] / "results.json").read_text())["final"]["test"]
    scored = json.loads((written[8] / "eval_results.json").read_text())["test"]
    assert scored["accuracy"] == final["accuracy"]
    np.testing.assert_allclose(scored["log_loss"], final["log_loss"], rtol=1e-5)


@pytest.mark.parametrize("written_on, resumed_on", [(8, 2), (2, 1)])
def test_a_run_resumes_on_another_device_count(
    tmp_path, idx_dir, on_one_device, written_on, resumed_on
):
    """Half a run on one device count, the rest on another: the parameters and the final
    scores of the whole run on 1 device, within float tolerance (data parallelism only
    changes the order of float sums)."""
    _run(_args(idx_dir, tmp_path / "moved", "--config.num_steps=45"), written_on)
    proc = _run(_args(idx_dir, tmp_path / "moved"), resumed_on)
    assert "resumed from" in proc.stderr
    moved, straight = (params_of(w) for w in (tmp_path / "moved", on_one_device))
    for a, b in zip(jax.tree_util.tree_leaves(moved), jax.tree_util.tree_leaves(straight),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    finals = [json.loads((w / "results.json").read_text())["final"]["test"]
              for w in (tmp_path / "moved", on_one_device)]  # fmt: skip
    np.testing.assert_allclose(finals[0]["log_loss"], finals[1]["log_loss"], rtol=1e-4)
    assert abs(finals[0]["accuracy"] - finals[1]["accuracy"]) <= 0.002


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


_COORD = "--coordinator_address=127.0.0.1:1"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([_COORD, "--num_processes=2"], "--coordinator_address needs"),
        ([_COORD, "--num_processes=2", "--process_id=2"], "--coordinator_address needs"),
        ([_COORD, "--num_processes=0", "--process_id=0"], "--coordinator_address needs"),
        (["--num_processes=2"], "need --coordinator_address"),
        (["--process_id=1"], "need --coordinator_address"),
        ([_COORD, "--num_processes=1", "--process_id=0", "--initialization_timeout=0"],
         "--initialization_timeout=0: must be at least 1"),
        (["--coordinator_address=localhost", "--num_processes=1", "--process_id=0"],
         "expected HOST:PORT"),
    ],
)  # fmt: skip
def test_bad_distributed_flags(tmp_path, idx_dir, bad, message):
    args = _args(idx_dir, tmp_path / "w", *bad)
    proc = subprocess.run(args, cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=60)
    assert message in one_error_line(proc.returncode, proc.stderr)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("count", ["0", "abc", "-1", ""])
def test_launcher_refuses_a_process_count_that_is_not_positive(tmp_path, count):
    proc = subprocess.run(["bash", "launch/local_multiprocess.sh", count, str(tmp_path / "w")],
                          cwd=REPO, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert "NUM_PROCESSES" in one_error_line(proc.returncode, proc.stderr)


def _start_two(idx_dir, workdir, logs, *extra, port=None, lag_s=0.0, pause_s=0.0):
    """Processes 0 and 1 of one run (1 CPU device each), stderr to `logs`/<i>.log. Process 1
    starts `lag_s` later and, once it has joined, is stopped `pause_s` more (SIGSTOP): it
    lags at start-up while process 0 goes ahead."""
    port = port or _free_port()
    logs.mkdir(exist_ok=True)
    procs = []
    for i in range(2):
        if i:
            time.sleep(lag_s)
        args = _args(idx_dir, workdir, f"--coordinator_address=127.0.0.1:{port}",
                     "--num_processes=2", f"--process_id={i}", "--initialization_timeout=30",
                     *extra)  # fmt: skip
        with open(logs / f"{i}.log", "w") as log:
            procs.append(subprocess.Popen(args, cwd=REPO, env=_env(1), stdout=log, stderr=log))
    if pause_s:
        _wait_for(lambda: "process 1 of 2" in (logs / "1.log").read_text(), procs)
        procs[1].send_signal(signal.SIGSTOP)
        time.sleep(pause_s)
        procs[1].send_signal(signal.SIGCONT)
    return procs


def _wait_for(condition, procs, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline and all(p.poll() is None for p in procs), "never happened"
        time.sleep(0.05)


def _finish(procs, logs, timeout=240) -> list[str]:
    """Each process's stderr once all have ended (killed at `timeout`)."""
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
    return [(logs / f"{i}.log").read_text() for i in range(2)]


def test_two_processes_take_one_path_when_one_lags_at_start_up(tmp_path, idx_dir):
    """Process 0 creates checkpoints/ while process 1 is still starting: fresh, then resumed,
    both take process 0's reading of the workdir (orbax's barriers would not match else)."""
    workdir = tmp_path / "w"
    for steps, logs in ((90, tmp_path / "fresh"), (180, tmp_path / "resumed")):
        procs = _start_two(idx_dir, workdir, logs, f"--config.num_steps={steps}",
                           "--config.model.dropout_rate=0", lag_s=2.5, pause_s=4)  # fmt: skip
        errs = _finish(procs, logs)
        assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    results = metrics.read_json(workdir / "results.json")
    assert results["resumed_from_step"] == 90 and results["num_processes"] == 2
    assert "resumed from" in errs[1]


def test_coordinator_port_in_use_is_one_line_on_each_process(tmp_path, idx_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        procs = _start_two(idx_dir, tmp_path / "w", tmp_path, "--initialization_timeout=5",
                           port=port)  # fmt: skip
        errs = _finish(procs, tmp_path, timeout=90)
    assert f"coordinator port {port} is in use" in one_error_line(procs[0].returncode, errs[0])
    assert "no JAX coordinator at" in one_error_line(procs[1].returncode, errs[1])
    assert not (tmp_path / "w").exists()


def test_a_killed_peer_is_named_and_the_checkpoints_stay_intact(tmp_path, idx_dir):
    workdir = tmp_path / "w"
    procs = _start_two(idx_dir, workdir, tmp_path, "--config.num_steps=4000",
                       "--config.num_periods=200", "--config.checkpoint_every_steps=40",
                       "--config.steps_per_call=10", "--peer_timeout=5")  # fmt: skip
    dump = workdir / "metrics.jsonl"
    _wait_for(lambda: dump.exists() and dump.read_text().count("\n") >= 8, procs)
    procs[1].kill()
    started = time.time()
    errs = _finish(procs[:1], tmp_path, timeout=60)
    line = one_error_line(procs[0].returncode, errs[0])
    assert "process 1 stopped responding (peer lost)" in line
    assert time.time() - started < 30  # Not JAX's 100 s heartbeat timeout, nor an abort.
    assert "Fatal Python error" not in errs[0]
    assert latest_checkpoint(workdir) >= 40


@pytest.mark.parametrize(("started", "num_processes"), [((0,), 2), ((0, 2), 3), ((1,), 2)])
def test_a_peer_that_never_joins_is_one_line_within_the_timeout(
    tmp_path, idx_dir, started, num_processes
):
    """Any subset of the processes started (process 0 alone, a middle one missing, process 0
    itself missing): each one started says so in one line, exit 1, before JAX's C++ abort
    (which came at about twice the timeout), and writes nothing."""
    port, timeout = _free_port(), 4
    procs, began = [], time.time()
    for i in started:
        args = _args(idx_dir, tmp_path / "w", f"--coordinator_address=127.0.0.1:{port}",
                     f"--num_processes={num_processes}", f"--process_id={i}",
                     f"--initialization_timeout={timeout}")  # fmt: skip
        with open(tmp_path / f"{i}.log", "w") as log:
            procs.append(subprocess.Popen(args, cwd=REPO, env=_env(1), stdout=log, stderr=log))
    for i, p in zip(started, procs, strict=True):
        p.wait(timeout=120)
        line = one_error_line(p.returncode, (tmp_path / f"{i}.log").read_text())
        assert "no JAX coordinator" in line if 0 not in started else "never joined" in line
        assert f"127.0.0.1:{port}" in line
    assert time.time() - began < 2 * timeout + 30  # Start-up (imports) on a loaded machine.
    assert not (tmp_path / "w").exists()
