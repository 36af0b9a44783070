"""Sweeps: members equal their single runs to the bit; groups, tables, figures, bad specs."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import evaluate, metrics, sweep
from mnist_jax.errors import UserError

from conftest import (
    REPO,
    main_args,
    metric_rows,
    one_error_line,
    params_of,
    same_params,
    small_config,
    snapshot,
    sweep_args,
    train_results,
)


def test_members_equal_single_runs_to_the_bit(tmp_path, idx_dir):
    c = small_config(idx_dir, "dnn", **{"model.hidden_units": (64,), "optimizer.clip_norm": 1.0})
    specs = ["optimizer.learning_rate=0.05,0.3", "seed=0,1"]
    rows = sweep.run_sweep(c, tmp_path / "sweep", specs, max_parallel=8)
    assert len(rows) == 4
    accs = [r["validation_accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    for m in sweep.members(c, specs):
        single = tmp_path / "single" / m.name
        results = train_results(m.config, single)
        member = tmp_path / "sweep" / m.name
        assert same_params(single, member), m.name
        assert metric_rows(single) == metric_rows(member), m.name
        assert metrics.read_json(member / "results.json")["final"] == results["final"]
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["member"] for r in table] == [r["member"] for r in rows]
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == rows


def test_shape_fields_make_groups_and_num_steps_figure(tmp_path, idx_dir):
    c = small_config(idx_dir, "linear", num_periods=2)
    specs = ["num_steps=10,40", "optimizer.learning_rate=0.1,0.3"]
    groups = {sweep.group_key(m.config) for m in sweep.members(c, specs)}
    assert len(groups) == 2
    sweep.run_sweep(c, tmp_path, specs, max_parallel=8)
    results = metrics.read_json(tmp_path / "num_steps=40-learning_rate=0.3" / "results.json")
    assert results["sweep_group_size"] == 2 and results["num_steps"] == 40
    assert (tmp_path / "first_layer_by_steps.png").stat().st_size > 10_000
    # Rerunning keeps the finished members as they are.
    before = (tmp_path / "num_steps=40-learning_rate=0.3" / "metrics.jsonl").read_bytes()
    sweep.run_sweep(c, tmp_path, specs, max_parallel=8)
    after = (tmp_path / "num_steps=40-learning_rate=0.3" / "metrics.jsonl").read_bytes()
    assert before == after


def test_max_parallel_chunks_give_the_same_members(tmp_path, idx_dir):
    c = small_config(idx_dir, "linear")
    specs = ["optimizer.learning_rate=0.05,0.1,0.2"]
    sweep.run_sweep(c, tmp_path / "a", specs, max_parallel=8)
    sweep.run_sweep(c, tmp_path / "b", specs, max_parallel=2)
    for m in sweep.members(c, specs):
        assert same_params(tmp_path / "a" / m.name, tmp_path / "b" / m.name), m.name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("optimizer.lr=0.1", "has no field 'optimizer.lr'"),
        ("batch_size=ten", "'ten' is not an integer"),
        ("optimizer.learning_rate", "expected field=value1,value2"),
        ("optimizer.learning_rate=-1", "must be positive"),
    ],
)
def test_bad_sweep_specs(idx_dir, spec, message):
    with pytest.raises(UserError, match=message):
        sweep.members(small_config(idx_dir, "linear"), [spec])


def test_vmap_members_match_single_runs_within_tolerance(tmp_path, idx_dir):
    """vmap (the accelerator default) runs members in parallel: other roundings, same maths."""
    c = small_config(idx_dir, "dnn", **{"model.hidden_units": (32,), "optimizer.clip_norm": 1.0})
    specs = ["optimizer.learning_rate=0.05,0.2", "seed=0,1"]
    sweep.run_sweep(c, tmp_path / "vmap", specs, vectorize="vmap", progress=False)
    sweep.run_sweep(c, tmp_path / "map", specs, vectorize="map", progress=False)
    for m in sweep.members(c, specs):
        pairs = zip(
            jax.tree_util.tree_leaves(params_of(tmp_path / "vmap" / m.name)),
            jax.tree_util.tree_leaves(params_of(tmp_path / "map" / m.name)),
            strict=True,
        )
        for a, b in pairs:
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=m.name)


def test_a_sweep_stopped_by_sigterm_resumes_to_the_same_members(tmp_path, idx_dir):
    args = [
        sys.executable, "-m", "mnist_jax.sweep", "--config=configs/linear.py",
        "--config.data.source=idx", f"--config.data.dir={idx_dir}",
        "--config.data.validation_size=200", "--config.batch_size=20",
        # An evaluation every 100 steps; the signal lands at the third (step 300), and 1,500
        # steps are left to run: it stops the sweep mid-run even on a loaded machine.
        "--config.num_steps=1800", "--config.num_periods=18", "--config.steps_per_call=20",
        "--config.tensorboard=False", "--config.plots=False",
        "--sweep=optimizer.learning_rate=0.05,0.2",
    ]  # fmt: skip
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([*args, f"--workdir={stopped}"], cwd=REPO, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    dump = stopped / "learning_rate=0.05" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not dump.exists() or dump.read_text().count("\n") < 6):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM at step" in err
    resumed = subprocess.run([*args, f"--workdir={stopped}"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run([*args, f"--workdir={tmp_path / 'straight'}"], cwd=REPO,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]
    for name in ("learning_rate=0.05", "learning_rate=0.2"):
        assert same_params(stopped / name, tmp_path / "straight" / name), name
        assert metric_rows(stopped / name) == metric_rows(tmp_path / "straight" / name)


def test_a_diverged_member_is_dropped_and_the_others_go_on(tmp_path, idx_dir):
    c = small_config(idx_dir, "dnn", **{"optimizer.name": "sgd", "optimizer.clip_norm": 0.0})
    rows = sweep.run_sweep(c, tmp_path, ["optimizer.learning_rate=0.1,1e4"], progress=False)
    by_name = {r["member"]: r for r in rows}
    assert by_name["learning_rate=10000.0"]["diverged_at_step"] is not None
    assert by_name["learning_rate=0.1"]["test_accuracy"] > 0.5
    results = metrics.read_json(tmp_path / "learning_rate=10000.0" / "results.json")
    assert "diverged" in results and "final" not in results
    # A rerun keeps both as they were.
    again = sweep.run_sweep(c, tmp_path, ["optimizer.learning_rate=0.1,1e4"], progress=False)
    assert again == rows


def test_a_repeated_sweep_field_is_an_error(idx_dir):
    with pytest.raises(UserError, match="given twice"):
        sweep.members(small_config(idx_dir, "linear"), ["seed=0", "seed=1"])


def _float_spellings(v: float) -> list[str]:
    """Texts that Python reads as the float `v` (0.1, 0.10, 1e-01, +0.1, 1 for 1.0, -0.0)."""
    forms = {repr(v), format(v, ".17g"), format(v, ".17e"), f"+{v!r}"}
    if "e" not in repr(v):
        forms.add(f"{v!r}0")
    if v == int(v):
        forms |= {str(int(v)), f"{int(v)}.", f"{int(v)}e0", f"00{int(v)}"}
    if v == 0:
        forms |= {"-0.0", "-0"}
    return sorted(forms)


def _int_spellings(v: int) -> list[str]:
    return [str(v), f"+{v}", hex(v), oct(v), f"{v:_}", f"00{v}"]


FLOATS = st.sampled_from([0.0, 1e-5, 0.001, 0.1, 0.3, 1.0, 2.0, 1 / 3])


@given(FLOATS, st.data())
def test_a_value_spelled_twice_is_refused_as_a_repeat(idx_dir, value, data):
    first, second = (data.draw(st.sampled_from(_float_spellings(value))) for _ in range(2))
    spec = f"optimizer.weight_decay={first},{second}"
    with pytest.raises(UserError, match=r"is given twice; list each value once"):
        sweep.members(small_config(idx_dir, "linear"), [spec])


@given(st.lists(FLOATS, min_size=1, max_size=4, unique=True), st.data())
def test_distinct_values_are_members_whatever_their_spelling(idx_dir, values, data):
    c = small_config(idx_dir, "linear")
    spelled = [data.draw(st.sampled_from(_float_spellings(v))) for v in values]
    got = sweep.members(c, [f"optimizer.weight_decay={','.join(spelled)}"])
    plain = sweep.members(c, [f"optimizer.weight_decay={','.join(map(repr, values))}"])
    assert [m.name for m in got] == [m.name for m in plain]
    assert [m.config.optimizer.weight_decay for m in got] == values
    assert "weight_decay=-0.0" not in [m.name for m in got]  # -0.0 is the member 0.0.


@given(st.integers(0, 2**31 - 1), st.data())
def test_int_values_spelled_twice_are_repeats_and_bools_are_not_ints(idx_dir, value, data):
    first, second = (data.draw(st.sampled_from(_int_spellings(value))) for _ in range(2))
    with pytest.raises(UserError, match="is given twice"):
        sweep.members(small_config(idx_dir, "linear"), [f"seed={first},{second}"])
    with pytest.raises(UserError, match="True is not an integer"):
        sweep.members(small_config(idx_dir, "linear"), ["seed=True"])


@given(st.lists(FLOATS, min_size=1, max_size=3), st.integers(0, 3))
def test_an_empty_value_anywhere_is_refused(idx_dir, values, at):
    items = [repr(v) for v in values]
    items.insert(min(at, len(items)), "")  # A stray comma: first, between, or last.
    spec = f"optimizer.weight_decay={','.join(items)}"
    with pytest.raises(UserError, match=r"an empty value \(a stray comma\?\)"):
        sweep.members(small_config(idx_dir, "linear"), [spec])


# ------------------------------------------------------- a sweep's directory, from its first write


def _sweep_in_state(tmp_path, idx_dir, state):
    """A sweep directory over seed=0,1: killed (SIGKILL) as soon as it is marked, killed once
    a member holds its config.json (no sweep.json yet), or finished."""
    workdir = tmp_path / "sweep"
    if state == "finished":
        sweep.run_sweep(small_config(idx_dir, "linear"), workdir, ["seed=0,1"], progress=False)
        return workdir
    args = [*sweep_args(idx_dir, workdir, "--config.num_steps=3000", "--sweep=seed=0,1")]
    proc = subprocess.Popen(args, cwd=REPO, stderr=subprocess.DEVNULL)
    ready = {"marked": workdir / ".sweep", "member started": workdir / "seed=0" / "config.json"}
    deadline = time.time() + 120
    while not ready[state].exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert ready[state].exists() and not (workdir / "sweep.json").exists()
    return workdir


@pytest.mark.parametrize("state", ["marked", "member started", "finished"])
def test_every_command_treats_an_interrupted_sweep_like_a_finished_one(tmp_path, idx_dir, state):
    """From the sweep's first write on: a single run into the sweep's directory or a member's
    is refused (the API and the real command line), and eval, plot, predict/load_run and
    export of the sweep's directory name it as a sweep; nothing there changes."""
    from mnist_jax import api, export, plot

    workdir = _sweep_in_state(tmp_path, idx_dir, state)
    before = snapshot(workdir)
    single = small_config(idx_dir, "linear")
    with pytest.raises(UserError, match="holds a sweep"):
        api.train(single, workdir, progress=False)
    with pytest.raises(UserError, match=f"is a member of the sweep {workdir}"):
        api.train(single, workdir / "seed=0", progress=False)
    readers = (evaluate.evaluate_workdir, plot.plot_workdir, evaluate.restore_model,
               api.load_run, lambda w: export.export_run(w, tmp_path / "model.jax"))  # fmt: skip
    for read in readers:
        with pytest.raises(UserError, match=f"{workdir} is a sweep directory"):
            read(workdir)
    proc = subprocess.run([*main_args(idx_dir, workdir / "seed=1")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "is a member of the sweep" in one_error_line(proc.returncode, proc.stderr)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("field", ["batch_size", "seed"])
def test_a_field_given_by_both_config_and_sweep_is_one_error(idx_dir, tmp_path, field):
    """--config.FIELD and --sweep=FIELD=... : neither silently wins; nothing is written."""
    workdir = tmp_path / "sweep"
    args = sweep_args(idx_dir, workdir, f"--config.{field}=5", f"--sweep={field}=10,20")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    line = one_error_line(proc.returncode, proc.stderr)
    assert f"{field} is given by both --config.{field} and --sweep" in line
    assert not workdir.exists()


def test_the_config_files_own_sweep_is_named_in_the_conflict(idx_dir, tmp_path):
    """sweep_args sets --config.batch_size; configs/linear_sweep.py's own sweep sweeps it."""
    workdir = tmp_path / "sweep"
    args = [a.replace("configs/linear.py", "configs/linear_sweep.py")
            for a in sweep_args(idx_dir, workdir)]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    line = one_error_line(proc.returncode, proc.stderr)
    assert "batch_size is given by both --config.batch_size and the config's sweep" in line
    assert not workdir.exists()


_PAD = st.text(alphabet=" \t", max_size=2)


@settings(max_examples=3, deadline=None)
@given(before=_PAD, after=_PAD)
def test_a_spec_field_padded_with_whitespace_is_that_field_everywhere(
    idx_dir, tmp_path_factory, before, after
):
    """Members, tables and figure read 'seed' from ' seed =0,1' alike (the figure once raised
    KeyError: ' seed ' after every member had trained)."""
    c = small_config(idx_dir, "linear", num_steps=4, num_periods=1)
    workdir = tmp_path_factory.mktemp("padded")
    rows = sweep.run_sweep(c, workdir, [f"{before}seed{after}=0,1"], progress=False)
    assert sorted(r["seed"] for r in rows) == [0, 1]
    assert (workdir / "sweep.png").is_file()
