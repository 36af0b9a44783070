"""Faults a user meets, through the real CLI: each ends in one clear line, and nothing that was
already complete is lost. (Data, config and checkpoint cases at the function level are in
test_data.py, test_cli.py and test_reproducibility.py.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import api, data, metrics
from mnist_jax.errors import UserError

from conftest import (
    REPO,
    latest_checkpoint,
    main_args,
    make_not_file,
    metric_rows,
    no_hang,
    same_params,
    small_config,
    snapshot,
    sweep_args,
    train_results,
)


def _args(idx_dir, workdir, *extra):
    return main_args(
        idx_dir,
        workdir,
        "--config.batch_size=20",
        "--config.model.hidden_units=(32,)",
        "--config.model.dropout_rate=0.2",
        "--config.tensorboard=False",
        "--config.plots=False",
        *extra,
    )


def _run(args, timeout=300, **kw):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def _one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, idx_dir):
    """One uninterrupted 1,200-step run that every interrupted trial must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = _run(_args(idx_dir, workdir, *_LONG))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


# An evaluation every 20 steps, a checkpoint every 40, one jitted call per 10 steps: many
# places for a signal to land. Two metric rows per evaluation: the latest signal (row 58, about
# step 580) still leaves 600 steps and 15 checkpoints to run, so it lands mid-run.
_LONG = [
    "--config.num_steps=1200",
    "--config.num_periods=60",
    "--config.checkpoint_every_steps=40",
    "--config.steps_per_call=10",
]


def _start_and_signal(args, workdir, sig, min_rows) -> subprocess.Popen:
    proc = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, text=True)
    dump = workdir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if dump.exists() and dump.read_text().count("\n") >= min_rows:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc


# Signals land after a given number of metric rows: early, mid-run and late (each row is a
# different place in the evaluation/checkpoint/chunk cycle), deterministically.
# SIGHUP (the terminal closed) stops a run as SIGTERM does.
@pytest.mark.parametrize(
    ("sig", "rows"),
    [(signal.SIGTERM, 3), (signal.SIGINT, 33), (signal.SIGTERM, 58), (signal.SIGHUP, 20)],
)
def test_signal_mid_run_then_resume_is_exact(tmp_path, idx_dir, reference, sig, rows):
    args = _args(idx_dir, tmp_path, *_LONG)
    proc = _start_and_signal(args, tmp_path, sig, min_rows=rows)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the run finished before the signal; make it longer")
    assert proc.returncode == 128 + sig, err[-2000:]
    assert f"stopped by {signal.Signals(sig).name}" in err
    resumed = _run(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert same_params(tmp_path, reference)
    assert metric_rows(tmp_path) == metric_rows(reference)


# A step of this CNN takes about a second on a loaded 2-core CPU: with ten of them as the first
# chunk (before), a signal took 11-12 s; with one, 2.3 s (both measured from the signal to exit).
_SLOW_STEPS = ["--config.model.name=cnn", "--config.model.conv_features=(32, 64)",
               "--config.model.hidden_units=(64,)", "--config.batch_size=200",
               "--config.num_steps=500", "--config.num_periods=1"]  # fmt: skip


def test_sigterm_right_after_training_starts_is_honoured_after_one_step(tmp_path, idx_dir):
    """The promise: once training has started (the `compiled in` line), a signal ends the
    command after the chunk under way; the first chunk is one step, so even a config whose
    step is slow stops at once (the time bound is generous for a loaded CI machine; the step
    it stops at is the exact check)."""
    proc = subprocess.Popen(
        _args(idx_dir, tmp_path, *_SLOW_STEPS), cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    head = []
    for line in proc.stderr:
        head.append(line)
        if "compiled in" in line:
            break
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    latency = time.time() - sent
    assert proc.returncode == 128 + signal.SIGTERM, "".join(head)[-2000:] + err[-2000:]
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", err)[1])
    assert 1 <= stopped <= 3  # The first chunk (one step), or the next (also about one).
    assert latest_checkpoint(tmp_path) == stopped
    assert latency < 6.0, f"{latency:.1f} s from SIGTERM to exit"


@pytest.mark.parametrize("rows", [40])  # Mid-run, between checkpoints.
def test_kill_9_never_leaves_an_unrestorable_checkpoint(tmp_path, idx_dir, reference, rows):
    args = _args(idx_dir, tmp_path, *_LONG)
    proc = _start_and_signal(args, tmp_path, signal.SIGKILL, min_rows=rows)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = _run(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert same_params(tmp_path, reference)


def test_workdir_that_cannot_be_created(tmp_path, idx_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = _one_error_line(_run(_args(idx_dir, blocker / "run", "--config.num_steps=20")))
    assert "cannot be created" in line and "a-file/run" in line


def test_full_disk_fails_cleanly_and_keeps_the_finished_checkpoints(tmp_path, idx_dir):
    """A file-size limit (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk) hits the
    resumed run's first checkpoint; the earlier checkpoints and files stay intact."""
    args = _args(idx_dir, tmp_path, "--config.num_steps=40", "--config.num_periods=2")
    assert _run(args).returncode == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    # Through bash's ulimit (2 KiB), not preexec_fn: forking this multithreaded process is unsafe.
    command = shlex.join(
        _args(idx_dir, tmp_path, "--config.num_steps=80", "--config.num_periods=4")
    )
    proc = _run(["bash", "-c", f"ulimit -f 2 && exec {command}"])
    line = _one_error_line(proc)
    assert "File too large" in line or "cannot" in line, line
    for path, content in before.items():
        # metrics.jsonl is appended to; config.json and run.json are replaced (atomically) by
        # the resumed run's, which asks for more steps.
        if path.name not in ("metrics.jsonl", "config.json", "run.json"):
            assert path.read_bytes() == content, path
    assert metrics.read_json(tmp_path / "config.json")["num_steps"] == 80
    assert latest_checkpoint(tmp_path) == 40
    # With room on the disk again, the same command resumes and finishes.
    resumed = _run(_args(idx_dir, tmp_path, "--config.num_steps=80", "--config.num_periods=4"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_resuming_a_different_config_is_refused(tmp_path, idx_dir):
    assert _run(_args(idx_dir, tmp_path, "--config.num_steps=20")).returncode == 0
    line = _one_error_line(
        _run(_args(idx_dir, tmp_path, "--config.num_steps=20", "--config.optimizer.name=sgd"))
    )
    assert "holds a run of a different config (optimizer.name differ)" in line


def _label_11(d):
    split = data.Split(np.zeros((3, 784), np.uint8), np.array([1, 2, 11]))
    data.write_csv(d / "t.csv", split)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_label_11, "row 3 has label 11"),
        (lambda d: (d / "t.csv").write_text("label,p1\n1,2\n"), "remove the header row"),
        (lambda d: (d / "t.csv").write_text(""), "empty CSV file"),
        (lambda d: None, "file not found"),
    ],
)
def test_bad_csv_through_the_cli(tmp_path, idx_dir, make, message):
    make(tmp_path)
    extra = [
        "--config.data.source=csv",
        "--config.data.dir=",
        f"--config.data.train_file={tmp_path / 't.csv'}",
        f"--config.data.test_file={tmp_path / 't.csv'}",
    ]
    line = _one_error_line(_run(_args(idx_dir, tmp_path / "w", *extra)))
    assert message in line and "t.csv" in line


def test_bad_idx_through_the_cli(tmp_path, idx_dir):
    for f in idx_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-30])
    line = _one_error_line(_run(_args(tmp_path, tmp_path / "w")))
    assert "train-labels-idx1-ubyte.gz" in line


def test_validation_larger_than_training_set(tmp_path, idx_dir):
    line = _one_error_line(_run(_args(idx_dir, tmp_path, "--config.data.validation_size=100000")))
    assert "leaves no training data" in line


def test_tfds_without_the_extra_through_the_cli(tmp_path, idx_dir):
    try:
        import tensorflow_datasets  # noqa: F401

        pytest.skip("tensorflow-datasets is installed; this tests its absence")
    except ImportError:
        pass
    line = _one_error_line(_run(_args(idx_dir, tmp_path, "--config.data.source=tfds")))
    assert "pip install 'mnist-jax[tfds]'" in line


def test_divergence_through_the_cli(tmp_path, idx_dir):
    proc = _run(
        _args(
            idx_dir,
            tmp_path,
            "--config.optimizer.name=sgd",
            "--config.optimizer.learning_rate=1e30",
            "--config.optimizer.clip_norm=0",
            "--config.num_steps=60",
        )
    )
    line = _one_error_line(proc)
    assert "non-finite loss at step" in line
    assert metrics.read_json(tmp_path / "results.json")["diverged"]["step"] >= 0
    for f in ("results.json", "metrics.jsonl"):
        if (tmp_path / f).exists():
            assert (
                "NaN" not in (tmp_path / f).read_text()
                and "Infinity" not in (tmp_path / f).read_text()
            )


# ----------------------------------------------------------------------------- named inputs


@pytest.mark.parametrize("state", ["missing", "empty", "partial"])
def test_mnist_jax_data_dir_that_is_wrong_is_an_error_never_the_sample(tmp_path, idx_dir, state):
    named = tmp_path / "mnist"
    if state != "missing":
        named.mkdir()
    if state == "partial":
        shutil.copy(idx_dir / "train-images-idx3-ubyte.gz", named)
    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "mnist_jax.main", "--config=dnn", f"--workdir={workdir}"]
    proc = _run(args, timeout=120, env=dict(os.environ, MNIST_JAX_DATA_DIR=str(named)))
    line = _one_error_line(proc)
    assert str(named) in line and "$MNIST_JAX_DATA_DIR" in line, line
    assert "sample" not in proc.stderr.lower() and not workdir.exists()


@pytest.mark.parametrize("where", ["--config", "train_file", "idx file", "data.dir"])
def test_a_fifo_named_on_the_command_line_is_named_not_waited_on(tmp_path, idx_dir, where):
    fifo = make_not_file(tmp_path / "fifo", "fifo")
    data_dir = tmp_path / "data"
    shutil.copytree(idx_dir, data_dir)
    if where == "idx file":
        (data_dir / "t10k-labels-idx1-ubyte.gz").unlink()
        make_not_file(data_dir / "t10k-labels-idx1-ubyte.gz", "fifo")
    workdir = tmp_path / "run"
    flags = {
        "--config": [f"--config={fifo}"],
        "train_file": [f"--config.data.train_file={fifo}", f"--config.data.test_file={fifo}"],
        "idx file": [f"--config.data.dir={data_dir}"],
        "data.dir": [f"--config.data.dir={fifo}"],
    }[where]
    config = [] if where == "--config" else ["--config=dnn"]
    args = [sys.executable, "-m", "mnist_jax.main", *config, f"--workdir={workdir}", *flags]
    line = _one_error_line(_run(args, timeout=120))
    assert "is a FIFO, not a" in line and not workdir.exists(), line


@pytest.fixture(scope="module")
def finished(tmp_path_factory, idx_dir):
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train_results(small_config(idx_dir, num_steps=20, num_periods=1), workdir)
    return workdir


def _a_checkpoint_file(workdir):
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return next(p for p in sorted((workdir / "checkpoints" / str(step)).rglob("*")) if p.is_file())


@pytest.mark.parametrize("victim", ["config.json", "results.json", "metrics.jsonl", "checkpoint"])
def test_a_fifo_in_a_crafted_run_directory_is_named_not_waited_on(tmp_path, finished, victim):
    workdir = tmp_path / "crafted"
    shutil.copytree(finished, workdir)
    path = _a_checkpoint_file(workdir) if victim == "checkpoint" else workdir / victim
    path.unlink()
    make_not_file(path, "fifo")
    with no_hang(60), pytest.raises(UserError, match=f"{path}: is a FIFO, not a regular file"):
        api.load_run(workdir)
    if victim in ("config.json", "checkpoint"):  # And through the real command line.
        args = [sys.executable, "-m", "mnist_jax.main", f"--workdir={workdir}", "--mode=eval"]
        proc = _run(args, timeout=120)
        assert "is a FIFO, not a regular file" in _one_error_line(proc)


def test_show_config_into_a_closed_pipe_ends_quietly():
    """`--show_config | head -1`: the reader leaves early; exit 1, no traceback (Python's
    documented SIGPIPE practice)."""
    read, write = os.pipe()
    os.close(read)
    args = [sys.executable, "-m", "mnist_jax.main", "--config=dnn", "--show_config"]
    proc = subprocess.run(args, cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True,
                          timeout=120)  # fmt: skip
    os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr[-2000:]


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_mnist_jax_data_dir_is_an_error_not_unset(tmp_path, value):
    """A set variable names data; set to nothing it names none: an error naming it."""
    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "mnist_jax.main", "--config=dnn", f"--workdir={workdir}"]
    line = _one_error_line(_run(args, timeout=120, env=dict(os.environ, MNIST_JAX_DATA_DIR=value)))
    assert "$MNIST_JAX_DATA_DIR" in line and "names no directory" in line, line
    assert not workdir.exists()


@pytest.mark.parametrize(
    "body",
    [
        "import sys\nsys.exit(0)\n",
        "import sys\nsys.exit()\n",
        "from mnist_jax.config import get_config as base\nimport sys\n"
        "def get_config():\n    sys.exit(0)\n",
        "from mnist_jax.config import get_config as base\n"
        "def get_config():\n    raise SystemExit(3)\n",
    ],
)
def test_a_config_file_that_exits_is_one_error_line(tmp_path, body):
    """A config file that exits (even with status 0) at import or in get_config() is no
    config: one line naming the file, exit 1, nothing written."""
    config = tmp_path / "exits.py"
    config.write_text(body)
    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "mnist_jax.main", f"--config={config}", f"--workdir={workdir}"]
    line = _one_error_line(_run(args, timeout=120))
    assert str(config) in line and "sys.exit(" in line, line
    assert not workdir.exists()


# Control characters, a Unicode line separator, and text: what a path or value may hold.
_ODD_TEXT = st.text(st.sampled_from(["\n", "\r", "\x1b", "\x7f", "\u2028", "\x85", "a", "é", " "]),
                    min_size=1, max_size=6)  # fmt: skip


@settings(max_examples=4, deadline=None)
@given(text=_ODD_TEXT, nul=st.booleans())
def test_every_user_string_in_an_error_line_stays_one_escaped_line(
    tmp_path_factory, finished, text, nul
):
    """A path or value with newlines, carriage returns, escapes or NUL reaches the error line
    escaped: one line, no raw control character. Through the real commands: a missing data
    directory (main), a missing image (predict), and a crafted config.json value (eval; NUL
    cannot be passed in argv)."""
    base = tmp_path_factory.mktemp("odd")
    odd = str(base / f"x{text}y")
    crafted = base / "crafted"
    shutil.copytree(finished, crafted)
    saved = json.loads((crafted / "config.json").read_text())
    saved["data"]["dir"] = odd + ("\x00" if nul else "")
    (crafted / "config.json").write_text(json.dumps(saved))
    (crafted / "results.json").unlink()  # So that data.dir is read from config.json.
    commands = [
        ["mnist_jax.main", "--config=dnn", f"--workdir={base / 'run'}", f"--config.data.dir={odd}"],
        ["mnist_jax.predict", f"--workdir={finished}", odd + ".png"],
        ["mnist_jax.main", "--mode=eval", f"--workdir={crafted}"],
    ]
    for command in commands:
        proc = _run([sys.executable, "-m", *command], timeout=120)
        errors = [ln for ln in proc.stderr.split("\n") if ln.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        line = errors[0]
        assert not any(c in line for c in "\r\x1b\x7f\x00\u2028\x85"), repr(line)
        assert "x" in line and "y" in line, line  # The path is named, escaped.


# ----------------------------------------------------------------------------- no trace


@settings(max_examples=8, deadline=None)
@given(command=st.sampled_from(["run", "sweep"]), depth=st.integers(0, 2))
def test_a_refused_command_leaves_no_new_directory(tmp_path_factory, idx_dir, command, depth):
    """A command refused after it took its workdir's lock (a profile longer than the run):
    the directories it made, nested `depth` deep (0: the workdir existed, empty), and a
    sweep's members and mark are gone; an existing directory stays as it was."""
    from mnist_jax import sweep

    base = tmp_path_factory.mktemp("refused")
    workdir = base.joinpath(*[f"new{i}" for i in range(depth)], "w") if depth else base / "w"
    if not depth:
        workdir.mkdir()
    config = small_config(idx_dir, "linear", num_steps=10, profile_steps=1000)
    with pytest.raises(UserError, match="profile_steps=1000"):
        if command == "run":
            api.train(config, workdir, progress=False)
        else:
            sweep.run_sweep(config, workdir, ["seed=0,1"], progress=False)
    if depth:
        assert not (base / ("new0" if depth > 1 else "w")).exists()
    else:
        assert list(workdir.iterdir()) == []


def test_a_run_refused_for_its_devices_leaves_no_new_directory(tmp_path, idx_dir):
    """Batch 25 over 2 devices, through the command line."""
    workdir = tmp_path / "new" / "w"
    proc = _run(_args(idx_dir, workdir, "--config.batch_size=25", "--config.num_steps=10"),
                env=dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu"))  # fmt: skip
    assert "divisible" in _one_error_line(proc) or "devices" in _one_error_line(proc)
    assert not (tmp_path / "new").exists()


def _path_the_os_refuses(base, form):
    """A path the OS refuses by its form: a name over NAME_MAX, or one through a symlink loop."""
    if form == "long name":
        return base / ("a" * 300)
    (base / "loop1").symlink_to("loop2")
    (base / "loop2").symlink_to("loop1")
    return base / "loop1"


@settings(max_examples=6, deadline=None)
@given(
    where=st.sampled_from(["train", "eval", "plot", "export --out", "sweep member"]),
    form=st.sampled_from(["long name", "symlink loop"]),
)
def test_a_path_the_os_refuses_by_its_form_is_one_error_line(
    tmp_path_factory, idx_dir, finished, where, form
):
    """A workdir, --out or sweep member whose name is too long (ENAMETOOLONG) or runs through
    a symlink loop: one line naming the path, exit 1, nothing new written."""
    base = tmp_path_factory.mktemp("form")
    bad = _path_the_os_refuses(base, form)
    if where == "sweep member":  # The member's directory name comes from a long value.
        bad = base / "sweep"
        wide = "(" + ",".join(["2"] * 130) + ")" if form == "long name" else "(2,)"
        args = sweep_args(idx_dir, bad, f"--sweep=model.hidden_units={wide},(3,)")
        args[3] = "--config=configs/dnn.py"
        if form == "symlink loop":
            bad.mkdir()
            (bad / "hidden_units=2,").symlink_to("hidden_units=2,")
    else:
        args = {
            "train": main_args(idx_dir, bad, "--config.num_steps=4", "--config.num_periods=1"),
            "eval": [sys.executable, "-m", "mnist_jax.main", "--mode=eval", f"--workdir={bad}"],
            "plot": [sys.executable, "-m", "mnist_jax.plot", f"--workdir={bad}"],
            "export --out": [
                sys.executable,
                "-m",
                "mnist_jax.export",
                f"--workdir={finished}",
                f"--out={bad}",
            ],
        }[where]
    before = snapshot(base)
    line = _one_error_line(_run(args, timeout=120))
    assert str(bad)[:60] in line, line
    assert snapshot(base) == before


def test_a_signal_that_landed_in_a_finaliser_is_delivered_again_after_the_hook():
    """Two Ctrl-C quickly: the second may land in a finaliser, whose exception Python hands to
    the unraisable hook. The hook delivers the signal again once it has returned, so the
    KeyboardInterrupt reaches the program rather than dying in the hook with a traceback."""
    from types import SimpleNamespace

    from mnist_jax import cli

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    returned = False
    try:
        with pytest.raises(KeyboardInterrupt):
            cli._one_line_unraisable(SimpleNamespace(exc_value=KeyboardInterrupt()))
            returned = True
            time.sleep(10)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert returned
