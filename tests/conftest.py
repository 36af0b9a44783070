"""Shared fixtures: small real-MNIST data written in the formats the loaders read."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mnist_jax import config as config_lib, data, datasets

REPO = Path(__file__).resolve().parents[1]


# The files that take longest (measured with --durations on the 2-core CI machine), longest
# first. xdist hands whole files to its two workers in collection order (pyproject.toml turns off
# its reordering by test count), so these start first and the short files fill in at the end:
# otherwise a long file that sorts late (the notebook's) runs alone while the other worker idles.
LONGEST_FIRST = (
    "test_scale.py", "test_robustness.py", "test_benchmarks.py", "test_full_mnist.py",
    "test_export.py", "test_notebook.py", "test_model_state.py", "test_sweep.py", "test_api.py",
    "test_resume.py", "test_models.py", "test_zoo.py", "test_own_model.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the files of LONGEST_FIRST first, in its order; the rest keep theirs."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> str:
    """One JAX compilation cache for the whole session, shared by the xdist workers and every
    command-line subprocess: a program compiled once (the same config in many tests) is
    loaded, not compiled again. Set in this process too, once, for the API's runs."""
    from mnist_jax import api

    directory = tmp_path_factory.getbasetemp().parent / "jax-compilation-cache"
    directory.mkdir(exist_ok=True)
    return api.enable_compilation_cache(str(directory))


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory, compilation_cache):
    """No test downloads anything or reads the user's cache; full MNIST only where asked."""
    monkeypatch.setenv("MNIST_JAX_MIRRORS", "http://127.0.0.1:9/")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MNIST_JAX_COMPILATION_CACHE", compilation_cache)
    monkeypatch.delenv("MNIST_JAX_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def sample() -> data.Split:
    return data.load_sample()


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory, sample) -> Path:
    """1,200 train and 300 test digits from the real sample, as gzipped IDX files."""
    d = tmp_path_factory.mktemp("idx")
    order = np.random.default_rng(0).permutation(len(sample))
    train, test = order[:1200], order[1200:1500]
    for prefix, idx in (("train", train), ("t10k", test)):
        images = sample.images[idx].reshape(-1, 28, 28)
        data.write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
        data.write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", sample.labels[idx])
    return d


def small_config(idx_dir: Path, name: str = "dnn", **overrides):
    """A config file from configs/, shrunk to train in about a second on `idx_dir`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.source = "idx"
    c.data.dir = str(idx_dir)
    c.data.validation_size = 200.0
    c.num_steps, c.num_epochs, c.num_periods = 60, 0.0, 3
    c.batch_size = 20
    c.tensorboard = False
    c.plots = False
    for key, value in overrides.items():
        config_lib.set_field(c, key, value)
    config_lib.validate(c)
    return c


def main_args(idx_dir: Path, workdir: Path, *extra: str) -> list[str]:
    """The main command on the small IDX data with configs/dnn.py; later flags win."""
    return [
        sys.executable,
        "-m",
        "mnist_jax.main",
        "--config=configs/dnn.py",
        f"--workdir={workdir}",
        "--config.data.source=idx",
        f"--config.data.dir={idx_dir}",
        "--config.data.validation_size=200",
        *extra,
    ]


def sweep_args(idx_dir: Path, workdir: Path, *extra: str) -> list[str]:
    """The sweep command on the small IDX data with configs/linear.py; later flags win."""
    return [
        sys.executable,
        "-m",
        "mnist_jax.sweep",
        "--config=configs/linear.py",
        f"--workdir={workdir}",
        "--config.data.source=idx",
        f"--config.data.dir={idx_dir}",
        "--config.data.validation_size=200",
        "--config.batch_size=20",
        "--config.tensorboard=False",
        "--config.plots=False",
        *extra,
    ]


def file_bytes(directory: Path) -> dict[Path, bytes]:
    """Every file under `directory` with its content: to show that nothing changed."""
    return {p: p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


# Read before the autouse fixture hides it from the tests that must not see it.
_FULL_MNIST = os.environ.get("MNIST_JAX_DATA_DIR", "")


def full_mnist_dir() -> str | None:
    """$MNIST_JAX_DATA_DIR when it holds full MNIST (.ci/run sets it), else None."""
    return (
        _FULL_MNIST
        if _FULL_MNIST and datasets.has_files(datasets.get("mnist"), _FULL_MNIST)
        else None
    )


def train_results(config, workdir, **kwargs) -> dict:
    """Trains `config` in `workdir` through the Python API; returns results.json's content."""
    from mnist_jax import api

    return api.train(config, workdir, progress=False, **kwargs).results


# Appended to a script run by plain JAX: it fails if mnist_jax or Flax was imported.
NOT_IMPORTED = """
loaded = [m for m in sys.modules if m.split(".")[0] in ("mnist_jax", "flax")]
assert not loaded, loaded
"""


def trees_equal(a, b) -> bool:
    """Two pytrees of arrays have the same structure and every leaf the same bits."""
    import jax

    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def params_of(workdir):
    """The variables (params and any model state) of a run directory's latest checkpoint."""
    from mnist_jax import evaluate

    return evaluate.restore_model(workdir)[1]


def same_params(a, b) -> bool:
    """The latest checkpoints of two run directories hold the same parameters, to the bit."""
    return trees_equal(params_of(a), params_of(b))


def saved_state(workdir: Path) -> dict:
    """The latest checkpoint of a run directory as saved (digest checked):
    read without a model, so it serves runs of any module."""
    from mnist_jax import checkpoint

    with checkpoint.Checkpointer(Path(workdir) / "checkpoints", create=False) as c:
        return c.restore(None)


def bn_net(**fields):
    """A small Linen module with state and randomness: Dense -> BatchNorm (running averages
    unless training) -> relu -> dropout -> Dense, by the models' contract."""
    import flax.linen as nn

    class BNNet(nn.Module):
        num_classes: int = 10
        units: int = 32
        dropout_rate: float = 0.2

        @nn.compact
        def __call__(self, x, *, train: bool = False):
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(self.units)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
            return nn.Dense(self.num_classes)(x)

    return BNNet(**fields)


def latest_checkpoint(workdir: Path) -> int | None:
    """The newest checkpoint step in a run directory (None: none)."""
    from mnist_jax import checkpoint

    with checkpoint.Checkpointer(Path(workdir) / "checkpoints") as c:
        return c.latest_step()


# Fields of a metrics.jsonl row that depend on the clock; every other field reproduces to the
# bit (batch_loss too: it is summed on device, step after step, whatever the chunking).
UNTIMED = ("examples_per_sec", "time_s")


def metric_rows(workdir: Path) -> list[dict]:
    """The metric dump without its clock-dependent fields."""
    from mnist_jax.rundir import read_jsonl

    return [{k: v for k, v in r.items() if k not in UNTIMED}
            for r in read_jsonl(Path(workdir) / "metrics.jsonl")]  # fmt: skip


# Hypothesis: 'ci' (the default) keeps the property search cheap and repeatable; 'dev' searches
# longer: HYPOTHESIS_PROFILE=dev pytest tests/test_properties.py
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def one_error_line(returncode: int, stderr: str) -> str:
    """The CLI contract for a bad input: exit 1, exactly one `error:` line, no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert returncode == 1, stderr[-2000:]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


def snapshot(workdir: Path) -> dict:
    """Every path under `workdir` with its bytes (links by their target, directories and
    FIFOs by their kind and mode): equal snapshots mean nothing there changed."""
    import stat

    out = {}
    for p in sorted(Path(workdir).rglob("*")):
        mode = p.lstat().st_mode
        if p.is_symlink():
            out[p] = ("link", os.readlink(p))
        elif stat.S_ISREG(mode):
            out[p] = (p.read_bytes(), stat.S_IMODE(mode))
        else:
            out[p] = (stat.S_IFMT(mode), stat.S_IMODE(mode))
    return out


# ----------------------------------------------------------------------------- not files

# Things a path can be instead of a regular file, and the words a message must use for each.
NOT_FILES = {
    "fifo": "is a FIFO, not a regular file",
    "directory": "is a directory",
    "socket": "is a socket",
    "device": "is a character device",
    "broken link": "is a broken symbolic link",
}


def make_not_file(path: Path, kind: str) -> Path:
    """Puts a real `kind` (a key of NOT_FILES) at `path`: os.mkfifo, a Unix socket, a link
    to /dev/null (a character device), a link to nowhere."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/null")
    elif kind == "broken link":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "socket":  # Bound under a short name (sun_path is ~108 bytes), then moved.
        short = Path(tempfile.mkdtemp(dir="/tmp")) / "s"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(short))
        os.rename(short, path)
        short.parent.rmdir()
    else:
        raise ValueError(kind)
    return path


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fails the test, instead of hanging the suite, when the body blocks for `seconds`
    (SIGALRM interrupts a blocking open() of a FIFO)."""

    def _alarm(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s (waiting on a FIFO?)")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
