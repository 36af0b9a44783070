"""Readers and writers of a run that another process is training: pure readers (predict,
`mj.load_run`) read a consistent snapshot while the trainer saves and rotates checkpoints away
under them; writers (plot, eval) are refused in one line naming the trainer's pid."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mnist_jax import api, data, evaluate, plot
from mnist_jax.errors import UserError

from conftest import REPO, main_args, one_error_line

READ_SECONDS = 6.0


@pytest.fixture
def live_run(tmp_path, idx_dir):
    """A trainer saving a checkpoint every 2 steps and keeping one (the newest): each save
    deletes the one before it."""
    workdir = tmp_path / "live"
    proc = subprocess.Popen(
        [*main_args(idx_dir, workdir), "--config.num_steps=1000000", "--config.num_periods=1",
         "--config.checkpoint_every_steps=2", "--config.checkpoints_to_keep=1",
         "--config.batch_size=20", "--config.model.hidden_units=(16,)",
         "--config.tensorboard=False", "--config.plots=False"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 180
    while not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "the trainer saved no checkpoint"
        time.sleep(0.1)
    yield workdir, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def _steps(workdir) -> set[int]:
    return {int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()}


def test_readers_see_a_snapshot_and_writers_are_refused(live_run, idx_dir, tmp_path):
    workdir, proc = live_run
    png = tmp_path / "digit.png"
    Image.fromarray(data.load_idx(idx_dir)[1].images[0].reshape(28, 28)).save(png)
    # Writers: refused at once, naming the trainer.
    for args in (["mnist_jax.plot", f"--workdir={workdir}"],
                 ["mnist_jax.main", f"--workdir={workdir}", "--mode=eval"]):  # fmt: skip
        refused = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                                 text=True, timeout=300)  # fmt: skip
        line = one_error_line(refused.returncode, refused.stderr)
        assert f"workdir {workdir} is in use by pid {proc.pid} (" in line, line
    with pytest.raises(UserError, match=rf"is in use by pid {proc.pid} \("):
        plot.plot_workdir(workdir)
    assert not (workdir / "plots").exists() and not (workdir / "report.md").exists()
    # Pure readers: every read succeeds while checkpoints come and go.
    seen, reads, end = set(), 0, time.time() + READ_SECONDS
    while time.time() < end:
        seen |= _steps(workdir)
        model, params, _ = evaluate.restore_model(workdir)
        assert evaluate.predict_probs(model, params, np.zeros((1, 784), np.uint8)).shape == (1, 10)
        run = api.load_run(workdir)
        assert "not finished" in run.summary()
        reads += 1
    predicted = subprocess.run(
        [sys.executable, "-m", "mnist_jax.predict", f"--workdir={workdir}", str(png)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert proc.poll() is None, "the trainer stopped while it was read"
    assert reads >= 3 and len(seen) > 1, (reads, sorted(seen))  # Rotated under the reads.
