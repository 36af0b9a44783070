"""What a resume may change, and what it must not: the steps after the checkpoint are the ones
the run it continues would take (same data, same learning-rate schedule), or the command is
refused in one line; and every metric logged after an allowed resume means what it says."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import data, evaluate
from mnist_jax.errors import UserError
from mnist_jax.rundir import read_jsonl

from conftest import (
    REPO,
    latest_checkpoint,
    main_args,
    metric_rows,
    one_error_line,
    small_config,
    train_results,
)

TOTAL = 40  # The longest run a search draws.


def _snapshot(workdir: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


def _as_if_killed(workdir: Path, newest: int) -> None:
    """Removes the `newest` latest checkpoints and results.json: a run killed before them."""
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    for s in steps[len(steps) - newest :] if newest else []:
        shutil.rmtree(workdir / "checkpoints" / str(s))
    (workdir / "results.json").unlink(missing_ok=True)


def _params(workdir: Path) -> list[bytes]:
    """The bytes of every parameter of a run's latest checkpoint."""
    leaves = jax.tree_util.tree_leaves(evaluate.restore_model(workdir)[1])
    return [np.asarray(x).tobytes() for x in leaves]


# ----------------------------------------------------------------------------- batch_loss


@pytest.fixture(scope="module")
def step_losses(idx_dir, tmp_path_factory) -> list[np.float32]:
    """The training loss of every step 1..TOTAL, from a straight run that logs every step
    (its batch_loss is then one step's loss). Constant schedule: a step's loss does not depend
    on the run's length, so these are the losses of every shorter run too."""
    c = small_config(idx_dir, "linear", num_steps=TOTAL, num_periods=TOTAL)
    c.checkpoint_every_steps = TOTAL  # One checkpoint: saves are the slow part.
    workdir = tmp_path_factory.mktemp("every_step")
    train_results(c, workdir)
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))
    return [np.float32(r["batch_loss"]) for r in rows]


@st.composite
def _plans(draw):
    """(num_steps, num_periods, checkpoint_every_steps) before and after, and how many of the
    newest checkpoints a kill took (a few periods and checkpoints: saves are the slow part)."""

    def plan(lo: int) -> tuple[int, int, int]:
        n = draw(st.integers(lo, TOTAL))
        every = draw(st.sampled_from([0, 0, max(1, n // 3), max(1, n // 2) + 1, n]))
        return n, draw(st.integers(1, min(n, 4))), every

    before = plan(1)
    return before, plan(before[0]), draw(st.integers(0, 2))


@settings(max_examples=10)
@given(plans=_plans())
def test_batch_loss_is_the_mean_loss_since_the_previous_row_after_any_resume(
    idx_dir, step_losses, plans
):
    """However the evaluation and checkpoint plan changes on resume (and wherever the first
    command stopped), each train row's batch_loss is the mean training loss of the steps
    since the previous train row, as a float32 sum step after step."""
    before, after, killed = plans
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "run"
        for (n, periods, every), kill in ((before, killed), (after, 0)):
            c = small_config(idx_dir, "linear", num_steps=n, num_periods=periods)
            c.checkpoint_every_steps = every
            train_results(c, workdir)
            _as_if_killed(workdir, kill)
        rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["step"] == after[0]
    previous = 0
    for r in rows:
        total = np.float32(0)
        for loss in step_losses[previous : r["step"]]:
            total = np.float32(total + loss)
        # Within float32 rounding: XLA may fuse a step's mean loss into the sum.
        assert r["batch_loss"] == pytest.approx(float(total) / (r["step"] - previous), rel=1e-6)
        previous = r["step"]


# ----------------------------------------------------------------------------- the schedule

# Every non-constant schedule, each with another optimizer (all three are covered).
STRETCHABLE = [("warmup_cosine", "adam"), ("one_cycle", "sgd"), ("linear", "adagrad")]


def _scheduled(idx_dir, schedule: str, optimizer: str, **overrides):
    c = small_config(idx_dir, "linear", **overrides)
    c.optimizer.name, c.optimizer.schedule, c.optimizer.warmup_fraction = (
        optimizer, schedule, 0.25
    )  # fmt: skip
    return c


def _length(c, field: str, steps: int) -> None:
    """Sets the run's length in `field`: num_steps, or num_epochs of the 1,000-digit split."""
    per_epoch = 1000 // c.batch_size
    c.num_steps, c.num_epochs = (steps, 0.0) if field == "num_steps" else (0, steps / per_epoch)


@settings(max_examples=6)
@given(
    case=st.sampled_from(STRETCHABLE),
    optimizer=st.sampled_from(["adagrad", "sgd", "adam"]),
    field=st.sampled_from(["num_steps", "num_epochs"]),
    first=st.integers(4, 20),
    more=st.integers(1, 30),
)
def test_a_resume_that_would_stretch_the_schedule_is_refused(
    idx_dir, case, optimizer, field, first, more
):
    """The schedule spans the run's steps, so a longer resume would change every later step's
    learning rate: refused naming the field, the rates and the way on; nothing written."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "run"
        c = _scheduled(idx_dir, case[0], optimizer, num_periods=1)
        _length(c, field, first)
        train_results(c, workdir)
        before = _snapshot(workdir)
        _length(c, field, first + more)
        with pytest.raises(UserError) as refused:
            train_results(c, workdir)
        assert _snapshot(workdir) == before
    message = str(refused.value)
    assert f"{field}=" in message and f"from {first} to {first + more} steps" in message
    assert f"the learning rate of step {first + 1} would jump from" in message
    assert "--allow_config_change" in message


def test_a_workdir_from_before_run_json_is_checked_from_its_config(idx_dir, tmp_path):
    c = _scheduled(idx_dir, "one_cycle", "adam", num_steps=10, num_periods=1)
    train_results(c, tmp_path)
    (tmp_path / "run.json").unlink()  # As an older version left it.
    c.num_steps = 20
    with pytest.raises(UserError, match=r"num_steps=20 \(was 10\) stretches the one_cycle"):
        train_results(c, tmp_path)


@pytest.mark.parametrize(("schedule", "optimizer"), STRETCHABLE)
def test_a_stopped_scheduled_run_resumes_to_the_straight_runs_bits(
    idx_dir, tmp_path, schedule, optimizer
):
    """Resuming to the same length (after a kill, or in more commands) keeps the schedule."""
    c = _scheduled(idx_dir, schedule, optimizer, num_steps=30, num_periods=3)
    train_results(c, tmp_path / "straight")
    train_results(c, tmp_path / "resumed")
    _as_if_killed(tmp_path / "resumed", 2)  # Back to step 10.
    assert train_results(c, tmp_path / "resumed")["resumed_from_step"] == 10
    assert _params(tmp_path / "resumed") == _params(tmp_path / "straight")
    assert metric_rows(tmp_path / "resumed") == metric_rows(tmp_path / "straight")


def test_the_cli_refuses_a_stretched_schedule_in_one_line_and_allows_it_when_asked(
    idx_dir, tmp_path
):
    def run(*extra):
        args = main_args(idx_dir, tmp_path, "--config.optimizer.schedule=one_cycle",
                         "--config.optimizer.name=adam", "--config.optimizer.learning_rate=0.01",
                         "--config.optimizer.warmup_fraction=0.25", "--config.num_periods=1",
                         "--config.batch_size=20", "--config.plots=False",
                         "--config.tensorboard=False", *extra)  # fmt: skip
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)

    assert run("--config.num_steps=20").returncode == 0
    refused = run("--config.num_steps=40")
    line = one_error_line(refused.returncode, refused.stderr)
    assert "num_steps=40 (was 20) stretches the one_cycle learning-rate schedule" in line
    assert "the learning rate of step 21 would jump from" in line
    assert "--allow_config_change" in line
    allowed = run("--config.num_steps=40", "--allow_config_change")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "--allow_config_change: num_steps=40 (was 20) stretches" in allowed.stderr
    assert latest_checkpoint(tmp_path) == 40


# ----------------------------------------------------------------------------- the data


def _copy_idx(src: Path, dst: Path, swap_labels: bool = False) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    if swap_labels:  # The same files but two training labels exchanged: other data.
        path = dst / "train-labels-idx1-ubyte.gz"
        labels = data.read_idx(path, data.IDX_LABELS_MAGIC).copy()
        i, j = np.flatnonzero(labels != labels[0])[0], 0
        labels[[i, j]] = labels[[j, i]]
        data.write_idx(path, labels)
    return dst


def test_a_resume_onto_other_data_is_refused_and_moved_data_is_not(idx_dir, tmp_path, caplog):
    c = small_config(idx_dir, "linear", num_steps=20, num_periods=2)
    train_results(c, tmp_path / "run")
    c.num_steps = 40
    c.data.dir = str(_copy_idx(idx_dir, tmp_path / "other", swap_labels=True))
    before = _snapshot(tmp_path / "run")
    with pytest.raises(UserError, match=r"trained on other data \(idx: 1200 train"):
        train_results(c, tmp_path / "run")
    assert _snapshot(tmp_path / "run") == before
    c.data.dir = str(_copy_idx(idx_dir, tmp_path / "moved"))  # The same digits elsewhere.
    assert train_results(c, tmp_path / "run")["resumed_from_step"] == 20
    c.num_steps, c.optimizer.learning_rate = 60, 0.5
    c.data.dir = str(tmp_path / "other")
    assert train_results(c, tmp_path / "run", allow_config_change=True)["resumed_from_step"] == 40
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("--allow_config_change: " in w and "trained on other data" in w for w in warnings)
    jump = "--allow_config_change: the learning rate of step 41 jumps from 0.05 (the schedule"
    assert any(jump in w and w.endswith("to 0.5") for w in warnings), warnings


_RESUMABLE_CHANGES = [
    ("augment.tta_shift", 2), ("eval_batch_size", 100), ("checkpoint_every_steps", 5),
    ("checkpoints_to_keep", 5), ("num_periods", 4), ("tensorboard", True),
    ("steps_per_call", 5), ("profile_steps", 3),
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(idx_dir, tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("finished") / "run"
    train_results(small_config(idx_dir, "linear", num_steps=20, num_periods=2), wd)
    return wd


@settings(derandomize=True, max_examples=6, deadline=None)
@given(changes=st.lists(st.sampled_from(_RESUMABLE_CHANGES), min_size=1, max_size=3,
                        unique_by=lambda fv: fv[0]))  # fmt: skip
def test_a_finished_run_says_which_resumable_changes_it_did_not_apply(
    idx_dir, finished_run, changes, caplog
):
    """A finished run given the same num_steps has nothing to do; a resumable field changed
    with it (one that takes effect while a run trains) is named, not silently dropped."""
    c = small_config(idx_dir, "linear", num_steps=20, num_periods=2)
    for field, value in changes:
        parent, _, leaf = field.rpartition(".")
        setattr(c[parent] if parent else c, leaf, value)
    before = _snapshot(finished_run)
    caplog.clear()
    train_results(c, finished_run)
    assert _snapshot(finished_run) == before
    said = [r.getMessage() for r in caplog.records if "not applied" in r.getMessage()]
    assert len(said) == 1 and all(field in said[0] for field, _ in changes), said
