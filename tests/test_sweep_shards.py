"""Sweeps split over processes (--shard=I/N), and sweeps resumed with members at other steps."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from mnist_jax import metrics, sweep
from mnist_jax.errors import UserError

from conftest import (
    REPO,
    file_bytes,
    metric_rows,
    one_error_line,
    same_params,
    small_config,
    sweep_args,
)

SPEC = [
    "--config.num_steps=40",
    "--config.num_periods=2",
    "--sweep=optimizer.learning_rate=0.05,0.2",
    "--sweep=seed=0,1",
]
NAMES = [f"learning_rate={lr}-seed={s}" for lr in (0.05, 0.2) for s in (0, 1)]


def _sweep(idx_dir, workdir, *extra) -> subprocess.CompletedProcess:
    proc = subprocess.run(sweep_args(idx_dir, workdir, *SPEC, *extra), cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_two_shards_at_once_then_a_merge_equal_the_unsharded_sweep(tmp_path, idx_dir):
    sharded, straight = tmp_path / "sharded", tmp_path / "straight"
    procs = [
        subprocess.Popen(sweep_args(idx_dir, sharded, *SPEC, f"--shard={i}/2"), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "sweep: 2 members (shard 0/2 of 4)" in errs[0]
    assert "sweep: 2 members (shard 1/2 of 4)" in errs[1]
    for name in NAMES:  # Each member was trained once, by its shard, in a group of 2.
        assert metrics.read_json(sharded / name / "results.json")["sweep_group_size"] == 2
    table = (sharded / "sweep.csv").read_text()
    assert len(table.splitlines()) == 1 + 4  # The shard that finished last saw every member.
    members_before = file_bytes(sharded / NAMES[0])
    merged = _sweep(idx_dir, sharded)  # No --shard: every member is finished; the table.
    assert merged.stderr.count("already finished") == 4
    assert file_bytes(sharded / NAMES[0]) == members_before
    # The same sweep unsharded, through the Python API (the same config as SPEC's flags).
    specs = [a.removeprefix("--sweep=") for a in SPEC if a.startswith("--sweep=")]
    config = small_config(idx_dir, "linear", num_steps=40, num_periods=2)
    sweep.run_sweep(config, straight, specs, progress=False)
    assert (sharded / "sweep.csv").read_text() == (straight / "sweep.csv").read_text() == table
    assert (sharded / "sweep.json").read_text() == (straight / "sweep.json").read_text()
    for name in NAMES:
        assert same_params(sharded / name, straight / name), name
        assert metric_rows(sharded / name) == metric_rows(straight / name), name


@pytest.mark.parametrize("bad", ["2/2", "one/2"])
def test_a_bad_shard_is_one_error_line_and_writes_nothing(tmp_path, idx_dir, bad):
    proc = subprocess.run(sweep_args(idx_dir, tmp_path / "w", *SPEC, f"--shard={bad}"),
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    line = one_error_line(proc.returncode, proc.stderr)
    assert line == f"error: --shard={bad}: expected I/N, integers with 0 <= I < N (e.g. 0/4)"
    assert not (tmp_path / "w").exists()


@given(st.integers(-3, 20), st.integers(-3, 20))
def test_shard_i_of_n_is_accepted_exactly_when_0_le_i_lt_n(index, count):
    if 0 <= index < count:
        assert sweep.check_shard(f"{index}/{count}") == sweep.check_shard((index, count))
        assert sweep.check_shard(f"{index}/{count}") == (index, count)
    else:
        with pytest.raises(UserError, match=r"^--shard=.*0 <= I < N"):
            sweep.check_shard(f"{index}/{count}")


@given(st.text(max_size=8))
def test_any_shard_text_is_parsed_or_one_line_refused(text):
    try:
        index, count = sweep.check_shard(text)
    except UserError as e:
        assert str(e).startswith(f"--shard={text}: expected I/N")
        return
    assert 0 <= index < count and [int(x) for x in text.split("/")] == [index, count]


def test_members_at_different_steps_train_by_start_step_and_a_config_change_is_refused(
    tmp_path, idx_dir
):
    """Members that stopped at different steps train as one group per start step (never one
    by one, never with more allowed than the caller allowed); a changed field is refused."""
    specs = ["optimizer.learning_rate=0.05,0.1,0.2"]
    workdir, straight = tmp_path / "w", tmp_path / "straight"
    first = small_config(idx_dir, "linear", num_steps=30, num_periods=1)
    sweep.run_sweep(first, workdir, ["optimizer.learning_rate=0.05,0.1"], progress=False)
    c = small_config(idx_dir, "linear", num_steps=60, num_periods=2)  # Evaluates at 30 too.
    sweep.run_sweep(c, workdir, specs, progress=False)
    sweep.run_sweep(c, straight, specs, progress=False)
    for lr, size, resumed in ((0.05, 2, 30), (0.1, 2, 30), (0.2, 1, None)):
        name = f"learning_rate={lr}"
        results = metrics.read_json(workdir / name / "results.json")
        assert (results["sweep_group_size"], results["resumed_from_step"]) == (size, resumed)
        assert same_params(workdir / name, straight / name), name
        assert metric_rows(workdir / name) == metric_rows(straight / name), name
    before = file_bytes(workdir)
    changed = small_config(idx_dir, "linear", num_steps=90, seed=1)
    with pytest.raises(UserError, match=r"holds a run of a different config \(seed differ\)"):
        sweep.run_sweep(changed, workdir, specs, progress=False)
    assert file_bytes(workdir) == before


def test_the_table_lists_only_members_trained_as_far_as_the_sweep_asks(tmp_path, idx_dir):
    """Shards resuming a finished sweep to more steps: until a member's shard has trained it
    on, its earlier (shorter) result is not in the table."""
    specs = ["optimizer.learning_rate=0.05,0.2", "seed=0,1"]
    short = small_config(idx_dir, "linear", num_steps=20, num_periods=1)
    assert len(sweep.run_sweep(short, tmp_path, specs, progress=False)) == 4
    longer = small_config(idx_dir, "linear", num_steps=40, num_periods=1)
    rows = sweep.run_sweep(longer, tmp_path, specs, progress=False, shard=(1, 2))
    assert sorted(r["member"] for r in rows) == [NAMES[1], NAMES[3]]
    assert len(json.loads((tmp_path / "sweep.json").read_text())) == 2
    rows = sweep.run_sweep(longer, tmp_path, specs, progress=False, shard=(0, 2))
    assert sorted(r["member"] for r in rows) == sorted(NAMES)
    for name in NAMES:
        assert metrics.read_json(tmp_path / name / "results.json")["num_steps"] == 40


ARRAY = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_STEP": "2"}


@pytest.mark.parametrize(
    ("env", "shard", "error"),
    [
        ({}, None, "error: SLURM_ARRAY_TASK_ID is not set: submit with sbatch --array=0-(N-1)"),
        ({**ARRAY, "SLURM_ARRAY_TASK_COUNT": "2"}, "1/2", "error: --max_parallel=0: must be"),
        ({"SLURM_ARRAY_TASK_ID": "4", "SHARDS": "4"}, "4/4", "error: --shard=4/4: expected I/N"),
    ],
)
def test_the_array_script_passes_its_task_as_the_shard(tmp_path, idx_dir, env, shard, error):
    """launch/sweep_array.sbatch run as SLURM runs it (array variables set, no srun)."""
    flags = sweep_args(idx_dir, tmp_path / "w", *SPEC, "--max_parallel=0")[3:]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SHARDS"))}
    proc = subprocess.run(
        [str(REPO / "launch" / "sweep_array.sbatch"), *flags], cwd=REPO, capture_output=True,
        text=True, timeout=120, env={**base, **env, "VENV": str(Path(sys.executable).parents[1])},
    )  # fmt: skip
    assert one_error_line(proc.returncode, proc.stderr).startswith(error)
    assert (f"sweep_array: shard {shard}\n" in proc.stderr) == (shard is not None)
    assert not (tmp_path / "w").exists()


def test_shards_share_the_sweep_directory_and_a_run_there_is_refused(tmp_path):
    """The flock rule (separate open files conflict as separate processes do)."""
    from mnist_jax.rundir import RunDir

    shards = [RunDir(tmp_path), RunDir(tmp_path)]
    for shard in shards:
        shard.lock(shared=True)
    with pytest.raises(UserError, match="is in use by another process"):
        RunDir(tmp_path).lock()
    for shard in shards:
        shard.unlock()
    with RunDir(tmp_path), pytest.raises(UserError, match="is in use by"):
        RunDir(tmp_path).lock(shared=True)  # A run or an eval holds it alone: no shard starts.


def test_table_turns_exclude_each_other_across_processes(tmp_path):
    code = "\n".join([
        "import sys",
        "from mnist_jax.rundir import RunDir",
        "with RunDir(sys.argv[1]).serialized():",
        "    print('in', flush=True)",
        "    sys.stdin.read()",
    ])  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout.readline() == "in\n"
        fd = os.open(tmp_path / ".tables.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Its turn ended: free.
        os.close(fd)
    finally:
        holder.kill()
