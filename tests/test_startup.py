"""What a command loads and when it has finished: a run imports only what it uses, and every
file it writes is there, complete, when the command returns (its exit skips only the garbage
collector's last walk)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, latest_checkpoint, main_args, params_of

TORCH_INSTALLED = importlib.util.find_spec("torch") is not None


def imported_modules(stderr: str) -> list[str]:
    """The modules a `python -X importtime` process imported, in order."""
    return [m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", stderr, re.M)]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_a_run_without_plots_imports_neither_matplotlib_nor_torch(tmp_path, idx_dir):
    """TensorBoard's writer (tensorboardX) is loaded without PyTorch, and nothing before the
    plots loads matplotlib; the event file is written all the same."""
    python, *command = main_args(idx_dir, tmp_path / "run", "--config.num_steps=20",
                                 "--config.num_periods=2", "--config.plots=False")  # fmt: skip
    proc = run(python, "-X", "importtime", *command)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = imported_modules(proc.stderr)
    assert "tensorboardX" in modules and "jax" in modules  # The probe sees the imports.
    # A blocked `import torch` is listed as tried; a real one loads torch._C and the rest.
    assert not [m for m in modules if m.startswith(("matplotlib", "torch."))]
    (events,) = (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")
    assert b"validation/accuracy" in events.read_bytes()


def test_checking_a_runs_plot_targets_loads_no_matplotlib(tmp_path):
    """The check before training (`report.check_run_outputs`) refuses a bad target without
    loading matplotlib; a format other than PNG still asks matplotlib."""
    (tmp_path / "plots" / "loss.png").mkdir(parents=True)
    code = f"""
import sys
from mnist_jax import outputs, report
from mnist_jax.errors import UserError
try:
    report.check_run_outputs({str(tmp_path)!r})
except UserError as e:
    print("refused:", e)
print("matplotlib" in sys.modules)
outputs.check_target({str(tmp_path / "a.svg")!r})
print("matplotlib" in sys.modules)
"""
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    refused, before, after = proc.stdout.splitlines()
    assert refused.startswith("refused:") and "loss.png: it is a directory" in refused
    assert (before, after) == ("False", "True")


@pytest.mark.skipif(not TORCH_INSTALLED, reason="PyTorch is not installed here")
def test_tensorboard_is_loaded_without_torch_and_torch_still_imports_after():
    code = """
import sys
from mnist_jax import metrics
metrics.summary_writer_class()
print("torch" in sys.modules)
import torch
print(torch.zeros(2).sum().item())
"""
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "0.0"]


@pytest.mark.skipif(not TORCH_INSTALLED, reason="PyTorch is not installed here")
def test_torch_imported_before_is_left_to_tensorboardx():
    """A process that has PyTorch already (a notebook) gets tensorboardX as it comes."""
    code = """
import torch, tensorboardX.writer as w
from mnist_jax import metrics
print(metrics.summary_writer_class() is w.SummaryWriter, w.numpy_compatible is torch.Tensor)
"""
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]


def test_every_file_is_written_and_complete_when_the_command_returns(tmp_path, idx_dir):
    workdir = tmp_path / "run"
    proc = run(*main_args(idx_dir, workdir, "--config.num_steps=30", "--config.num_periods=2",
                          "--config.plots=True", "--config.tensorboard=True"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("test accuracy ")
    results = json.loads((workdir / "results.json").read_text())
    assert results["num_steps"] == 30 and results["timing"]["plots_s"] > 0
    assert latest_checkpoint(workdir) == 30
    assert params_of(workdir)  # The last checkpoint restores (digest checked).
    for name in ("loss", "confusion_matrix", "reliability", "first_layer_weights", "samples",
                 "mistakes"):  # fmt: skip
        assert (workdir / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plots/loss.png" in (workdir / "report.md").read_text()
    (events,) = (workdir / "tensorboard").glob("events.out.tfevents.*")
    assert b"test/final_accuracy" in events.read_bytes()  # Written at the end, then closed.
    assert not list(Path(workdir).rglob("*.tmp"))


def test_the_collector_is_off_while_python_m_loads_and_on_for_the_command():
    """`python -m mnist_jax.X` loads its modules with the garbage collector off; every command
    (`cli.run`) runs with it on."""
    code = """
import sys
sys.argv = ["-m"]  # As `python -m mnist_jax.X` sets it while the package loads.
import gc, mnist_jax
print(gc.isenabled())
from mnist_jax import cli
sys.argv = ["tool"]
cli.run(lambda argv, overrides: print(gc.isenabled()))
"""
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "True"]


def test_the_process_start_time_is_when_the_process_started():
    """results.json's wall time and start-up count from the process's start, to 10 ms (not
    from the whole second the machine booted in)."""
    code = "import time; t = time.time(); from mnist_jax import main\n"
    code += "print(t, main.process_start_time())"
    before = time.time()
    proc = run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first_line, start = map(float, proc.stdout.split())
    assert before - 0.02 <= start <= first_line
