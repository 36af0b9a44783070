"""Every path a command writes is checked before any is written: a search over each output
path of a run and of a sweep x each way it can be wrong (the other kind of file there, a link
out of the workdir, read-only, a FIFO) finds the command refused in one line with the
workdir's bytes unchanged, a stale holder file included. Atomic writes leave no temporary file
behind a kill -9 or a full disk."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from mnist_jax import api, outputs, sweep
from mnist_jax.errors import UserError

from conftest import REPO, main_args, one_error_line, small_config, snapshot

FILES = ("config.json", "results.json", "metrics.jsonl", ".holder", "report.md", "plots/loss.png")
DIRS = ("checkpoints", "tensorboard", "corrupt_checkpoints", "plots")
FAULTS = ("other_kind", "link_out", "read_only", "fifo")
STALE_HOLDER = "pid 999999 (elsewhere, since 2020-01-01 00:00:00)\n"
# Figure and report targets are replaced, never followed: a link there is no fault.
REPLACED_LINKS = ("report.md", "plots/loss.png")


@pytest.fixture(scope="module")
def config(idx_dir):
    return small_config(idx_dir, "dnn", tensorboard=True, plots=True, num_steps=20, num_periods=1)


def place(fault: str, path, is_dir: bool, outside) -> None:
    """Puts `fault` at `path` (where a directory goes if `is_dir`, else a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fault == "other_kind":
        path.write_text("in the way") if is_dir else path.mkdir()
    elif fault == "link_out":
        target = outside / ("dir" if is_dir else "file")
        path.symlink_to(target, target_is_directory=is_dir)
    elif fault == "read_only":
        path.mkdir() if is_dir else path.write_text(STALE_HOLDER if path.name == ".holder" else "")
        path.chmod(0o555 if is_dir else 0o444)
    else:
        os.mkfifo(path)


@pytest.fixture
def outside(tmp_path):
    """What lies outside the workdir, that no command may change."""
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "file").write_text("precious")
    return out


@pytest.mark.parametrize(
    ("name", "fault"),
    [*itertools.product(FILES, FAULTS), *itertools.product(DIRS, FAULTS)],
)
def test_a_bad_output_path_refuses_the_run_before_any_write(tmp_path, outside, config, name, fault):
    if fault == "read_only" and os.geteuid() == 0:
        pytest.skip("root writes through permissions")
    workdir = tmp_path / "run"
    workdir.mkdir()
    if name != ".holder":
        (workdir / ".holder").write_text(STALE_HOLDER)  # Left by a killed run: kept.
    place(fault, workdir / name, name in DIRS, outside)
    before, outside_before = snapshot(workdir), snapshot(outside)
    if fault == "link_out" and name in REPLACED_LINKS:
        api.train(config, workdir, progress=False)
        assert not (workdir / name).is_symlink()
    else:
        with pytest.raises(UserError, match=name.split("/")[-1].replace(".", r"\.")) as e:
            api.train(config, workdir, progress=False)
        assert "\n" not in str(e.value)
        assert snapshot(workdir) == before
    assert snapshot(outside) == outside_before


@pytest.mark.parametrize("fault", ["other_kind", "link_out", "fifo"])
def test_a_bad_member_directory_refuses_the_sweep_before_any_member_trains(
    tmp_path, outside, config, fault
):
    workdir = tmp_path / "sweep"
    workdir.mkdir()
    place(fault, workdir / "num_steps=40", True, outside)  # The second group's member.
    before = snapshot(workdir)
    with pytest.raises(UserError, match="num_steps=40"):
        sweep.run_sweep(config, workdir, ["num_steps=20,40"], progress=False)
    assert snapshot(workdir) == before


def test_a_tensorboard_file_through_the_command_is_one_line(tmp_path, idx_dir):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "tensorboard").write_text("in the way")
    before = snapshot(workdir)
    proc = subprocess.run(
        [*main_args(idx_dir, workdir), "--config.num_steps=20", "--config.num_periods=1",
         "--config.tensorboard=True"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "tensorboard" in one_error_line(proc.returncode, proc.stderr)
    assert snapshot(workdir) == before


def test_a_single_run_is_refused_in_an_interrupted_sweep(tmp_path, config):
    workdir = tmp_path / "sweep"
    (workdir / "seed=0").mkdir(parents=True)  # A member that started; no sweep.json yet.
    (workdir / "seed=0" / "config.json").write_text("{}")
    (workdir / ".sweep").write_text("seed=0,1\n")  # The mark a sweep writes first.
    before = snapshot(workdir)
    with pytest.raises(UserError, match=r"holds a sweep \(members seed=0\)"):
        api.train(config, workdir, progress=False)
    assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- atomic writes


def test_a_killed_writers_temporary_file_goes_with_the_next_write(tmp_path):
    target = tmp_path / "results.json"
    code = (
        "import sys, time; from mnist_jax import outputs\n"
        "def write(f):\n    f.write(b'{\"half'); f.flush(); print('writing', flush=True)\n"
        "    time.sleep(600)\n"
        "outputs.write_atomic(sys.argv[1], write)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    proc.kill()
    proc.wait()
    assert [p.name.split(".")[3] for p in tmp_path.iterdir()] == [str(proc.pid)]
    outputs.write_atomic(target, lambda f: f.write(b"{}"))
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("{}")
    code = (
        "import resource, signal, sys; from mnist_jax import outputs\n"
        "from mnist_jax.errors import UserError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n    outputs.write_atomic(sys.argv[1], lambda f: f.write(bytes(1 << 20)))\n"
        "except UserError as e:\n    print(e)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120
    )
    assert "cannot write" in proc.stdout and "File too large" in proc.stdout, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert target.read_text() == "{}"


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    """A temporary file of a live writer (this process) is never removed by another write."""
    target = tmp_path / "x.json"
    mine = tmp_path / f".x.json.{os.getpid()}.abc.tmp"
    mine.write_text("in progress")
    outputs.write_atomic(target, lambda f: f.write(b"{}"))
    assert mine.exists()
