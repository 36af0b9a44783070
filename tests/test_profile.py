"""config.profile_steps: a jax.profiler trace of exactly that many steps after the first chunk,
in the workdir, with step annotations; the run's bits are those of an unprofiled run."""

from __future__ import annotations

import gzip
import json
import subprocess

import pytest

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


def config(idx_dir, **fields):
    """A 60-step MLP with dropout (so a step's randomness is exercised), 3 periods."""
    return small_config(idx_dir, "dnn", **{"model.hidden_units": (16,), "model.dropout_rate": 0.2},
                        **fields)  # fmt: skip


@pytest.fixture(scope="module")
def unprofiled(tmp_path_factory, idx_dir):
    workdir = tmp_path_factory.mktemp("unprofiled")
    train_results(config(idx_dir, steps_per_call=4), workdir)
    return workdir


def traced_calls(workdir) -> list[dict]:
    """The step annotations of the trace in `workdir/profile`, in order."""
    (trace,) = (workdir / "profile").glob("plugins/profile/*/perfetto_trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    calls = [e for e in events if e.get("name") == "train" and e.get("ph") == "X"]
    return sorted(({k: int(v) for k, v in e["args"].items()} for e in calls),
                  key=lambda a: a["step_num"])  # fmt: skip


@pytest.mark.parametrize(
    ("steps_per_call", "profile_steps", "calls"),
    [
        # First chunk 0-3; the window 4-10 in chunks of 4, the last cut at the window's end.
        (4, 7, [{"step_num": 4, "num_steps": 4}, {"step_num": 8, "num_steps": 3}]),
        # Timed chunks: a first chunk of one step, then one call up to the window's end.
        (0, 5, [{"step_num": 1, "num_steps": 5}]),
    ],
)
def test_a_profiled_run_traces_exactly_its_steps_and_keeps_the_bits(
    tmp_path, idx_dir, unprofiled, steps_per_call, profile_steps, calls
):
    workdir = tmp_path / "profiled"
    train_results(config(idx_dir, steps_per_call=steps_per_call, profile_steps=profile_steps),
                  workdir)  # fmt: skip
    assert list((workdir / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert traced_calls(workdir) == calls
    assert same_params(workdir, unprofiled)
    assert metric_rows(workdir) == metric_rows(unprofiled)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--config.profile_steps=-1"], "config.profile_steps=-1: must be 0 or positive"),
        (["--config.profile_steps=1.5"], "--config.profile_steps='1.5': expected an integer"),
        (
            ["--config.num_steps=20", "--config.num_periods=1", "--config.profile_steps=20"],
            "config.profile_steps=20: the trace starts after the first chunk (step 1) and "
            "only 19 of 20 steps are left",
        ),
    ],
)
def test_a_bad_profile_steps_is_one_line_and_writes_nothing(tmp_path, idx_dir, flags, message):
    workdir = tmp_path / "run"
    proc = subprocess.run(main_args(idx_dir, workdir, *flags), cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert message in one_error_line(proc.returncode, proc.stderr)
    assert not workdir.exists() or snapshot(workdir) == {}  # The lock may create it, empty.


def test_a_profile_file_in_the_workdir_is_refused_before_writing(tmp_path, idx_dir):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "profile").write_text("not a directory")
    before = snapshot(workdir)
    args = main_args(idx_dir, workdir, "--config.profile_steps=5")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "profile is not a directory" in one_error_line(proc.returncode, proc.stderr)
    assert snapshot(workdir) == before
