"""The Python API's inputs: what `Run.predict` takes, found by a search over arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from mnist_jax import api
from mnist_jax.errors import UserError

DTYPES = st.sampled_from(
    [np.uint8, np.int32, np.int64, np.float32, np.float64, np.bool_, np.complex64]
)
SHAPES = st.sampled_from([(784,), (28, 28), (0, 784), (3, 784), (2, 28, 28), (5,), (2, 783), ()])


@given(hnp.arrays(DTYPES, SHAPES, elements={"allow_nan": True, "allow_infinity": True}))
def test_predict_inputs_are_pixels_or_one_clear_error(x):
    try:
        out = api.as_pixels(x)
    except UserError as e:
        assert str(e).startswith("images:")
        return
    assert out.dtype == np.uint8 and out.ndim == 2 and out.shape[1] == 784
    assert x.dtype.kind in "uif" and np.all(np.isfinite(x))
    if x.size and x.dtype.kind == "f":  # [0, 1] floats are refused, not read as near-black;
        peaks = x.reshape(len(out), -1).max(axis=1)  # an all-black image is valid in both.
        assert np.all((peaks == 0) | (peaks > 1))


@given(
    black=st.integers(0, 3),
    scaled=st.sampled_from([None, 1.0, 0.5, 1e-6]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_all_black_float_images_are_valid_and_scaled_ones_are_named(black, scaled, dtype):
    batch = np.zeros((black + 2, 784), dtype)
    batch[0, :10] = 255  # One ordinary 0-255 image.
    if scaled is not None:
        batch[-1, 100] = scaled  # The last image is [0, 1] scaled.
    if scaled is None:
        out = api.as_pixels(batch)
        assert out.dtype == np.uint8 and not out[1:].any() and out[0, 0] == 255
    else:
        with pytest.raises(UserError, match=rf"image {len(batch) - 1} has floats in \[0, 1\]"):
            api.as_pixels(batch)
    assert not api.as_pixels(np.zeros((28, 28), dtype)).any()  # One black image.


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.full((2, 784), 0.5), r"floats in \[0, 1\]"),
        (np.full((2, 784), np.nan), "finite"),
        (np.zeros((2, 10)), "expected"),
        ("hello", "expected numbers"),
        (None, "expected numbers"),
    ],
)
def test_predict_refuses_what_it_cannot_read(images, message):
    with pytest.raises(UserError, match=message):
        api.as_pixels(images)


def test_predict_takes_one_image_in_either_shape():
    img = np.arange(784).reshape(28, 28) % 256
    assert np.array_equal(api.as_pixels(img), api.as_pixels(img.reshape(784)))
    assert api.as_pixels(np.zeros((0, 784), np.uint8)).shape == (0, 784)


# A child process that trains through the Python API and is interrupted at one moment per
# workdir, by a real signal sent to itself (at once, or from a timer while XLA runs), then
# trains the same workdir again. It prints one JSON line per moment.
_CHILD = r"""
import json, os, signal, sys, threading
sys.path.insert(0, sys.argv[1])
STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
before = {s: signal.getsignal(s) for s in STOP}
import jax
import mnist_jax as mj
from mnist_jax import checkpoint, group, metrics
from conftest import small_config
assert {s: signal.getsignal(s) for s in STOP} == before, "importing installed handlers"
jax_config = dict(jax.config.values)

def later(sig, delay):
    threading.Timer(delay, os.kill, (os.getpid(), sig)).start()

MOMENTS = {
    "compile": (group.Group, "compile", lambda: later(signal.SIGINT, 0.05)),
    "chunk": (metrics._Bar, "update", lambda: later(signal.SIGINT, 0.005)),
    "save": (checkpoint.Checkpointer, "save", lambda: os.kill(os.getpid(), signal.SIGINT)),
    "eval": (group.Group, "eval_split", lambda: os.kill(os.getpid(), signal.SIGINT)),
    "hangup": (metrics._Bar, "update", lambda: os.kill(os.getpid(), signal.SIGHUP)),
    "usr1": (checkpoint.Checkpointer, "save", lambda: os.kill(os.getpid(), signal.SIGUSR1)),
    "final": (metrics, "summarize", lambda: os.kill(os.getpid(), signal.SIGTERM)),
}
config = small_config(sys.argv[2], num_steps=200, num_periods=4, steps_per_call=10,
                      checkpoint_every_steps=50)
for moment, (owner, name, action) in MOMENTS.items():
    original = getattr(owner, name)
    armed = [True]
    def wrapped(*args, _original=original, _action=action, **kwargs):
        if armed[0]:
            armed[0] = False
            _action()
        return _original(*args, **kwargs)
    setattr(owner, name, wrapped)
    workdir = os.path.join(sys.argv[3], moment)
    try:
        mj.train(config, workdir, progress=False)
        stopped = "not stopped"
    except BaseException as e:
        stopped = f"{type(e).__name__}: {e}"
    finally:
        setattr(owner, name, original)
    same_after_stop = ({s: signal.getsignal(s) for s in STOP} == before,
                       dict(jax.config.values) == jax_config)
    run = mj.train(config, workdir, progress=False)
    print(json.dumps({
        "moment": moment, "stopped": stopped, "same_after_stop": same_after_stop,
        "same_after_resume": ({s: signal.getsignal(s) for s in STOP} == before,
                              dict(jax.config.values) == jax_config),
        "resumed_from_step": run.results.get("resumed_from_step"),
        "accuracy": run.test_accuracy,
    }), flush=True)
"""


def test_a_signal_at_any_moment_leaves_the_process_as_it_was(tmp_path, idx_dir):
    """Ctrl-C (and SIGHUP, SIGUSR1) while compiling, mid-chunk, while saving, while
    evaluating: the workdir is released (the next mj.train resumes it, in the same process),
    and the signal handlers and every jax.config value are as before. A SIGTERM after the last
    step lets the results be written first: the next mj.train finds the run finished."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(REPO / "tests"), str(idx_dir), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["moment"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(rows) == {"compile", "chunk", "save", "eval", "hangup", "usr1", "final"}
    assert rows["compile"]["stopped"].startswith("KeyboardInterrupt")
    for moment in ("chunk", "save", "eval"):
        assert rows[moment]["stopped"].startswith("Interrupted: stopped by SIGINT"), rows[moment]
    assert rows["hangup"]["stopped"].startswith("Interrupted: stopped by SIGHUP")
    assert rows["usr1"]["stopped"].startswith("Interrupted: stopped by SIGUSR1")
    assert rows["final"]["stopped"] == (
        "Interrupted: stopped by SIGTERM after the last step; results are written, plots skipped"
    )
    assert rows["final"]["resumed_from_step"] is None  # Finished by the stopped call.
    for r in rows.values():
        assert r["same_after_stop"] == [True, True], r
        assert r["same_after_resume"] == [True, True], r
        assert r["accuracy"] > 0.3
        if r["moment"] not in ("compile", "final"):  # Stopped after a checkpoint: resumed.
            assert r["resumed_from_step"], r
