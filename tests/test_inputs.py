"""Every input a user names, whatever it is: a reader says what a path is (a FIFO, a socket, a
device, a directory) and never blocks on it; named data that is wrong is an error, never
replaced by other data. Real FIFOs (os.mkfifo), under a timeout so a regression fails."""

from __future__ import annotations

import gzip
import shutil

import pytest

from mnist_jax import data
from mnist_jax.errors import UserError

from conftest import NOT_FILES, make_not_file, no_hang

# ----------------------------------------------------------------------------- what a path is


def _readers():
    from mnist_jax import config as config_lib, images, predict, rundir

    return {
        "idx": lambda p: data.read_idx(p, data.IDX_IMAGES_MAGIC),
        "csv": data.read_csv,
        "predict csv": predict.read_rows,
        "image": images.load_image,
        "config file": config_lib.load,
        "json": rundir.read_json,
        "jsonl": rundir.read_jsonl,
        "idx directory": data.load_idx,
    }


@pytest.mark.parametrize(
    ("reader", "kind"),
    [
        (reader, kind)
        for reader in _readers()
        for kind in [*NOT_FILES, "missing"]
        if (reader, kind) != ("jsonl", "missing")  # No metrics.jsonl: an empty history.
    ],
)
def test_every_reader_says_what_a_path_is_and_never_blocks(tmp_path, reader, kind):
    path = tmp_path / "input.gz"
    if kind != "missing":
        make_not_file(path, kind)
    with no_hang(), pytest.raises(UserError) as e:
        _readers()[reader](path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    if reader == "idx directory":  # Here a directory is right and everything else wrong.
        words = {"missing": "does not exist", "broken link": NOT_FILES["broken link"]}
        assert words.get(kind, "not a directory") in message or kind == "directory", message
    elif kind == "missing":
        assert "not found" in message, message
    else:
        assert NOT_FILES[kind] in message, message
        assert "not found" not in message and "does not exist" not in message, message


# Every way to name data x every way it can be wrong. A good MNIST sits in the cache: named
# data that is wrong must be an error, never replaced by the cache's data nor the sample.
WAYS = {
    "data.dir, auto": ("auto", "dir"),
    "data.dir, mnist": ("mnist", "dir"),
    "data.dir, idx": ("idx", "dir"),
    "data.dir, tfds": ("tfds", "dir"),
    "env, auto": ("auto", "env"),
    "env, mnist": ("mnist", "env"),
}
STATES = ("missing", "empty", "partial", "a file", "fifo", "fifo inside", "corrupt inside")


def _named(tmp_path, idx_dir, state):
    d = tmp_path / "named"
    if state == "a file":
        d.write_text("not a directory")
    elif state == "fifo":
        make_not_file(d, "fifo")
    elif state != "missing":
        d.mkdir()
        if state != "empty":
            for f in idx_dir.iterdir():
                shutil.copy(f, d / f.name)
            victim = d / "t10k-images-idx3-ubyte.gz"
            victim.unlink()
            if state == "fifo inside":
                make_not_file(victim, "fifo")
            elif state == "corrupt inside":
                victim.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(12)) + b"junk")
    return d


@pytest.mark.parametrize(
    ("way", "state"),
    [
        (way, state)
        for way in WAYS
        for state in STATES  # A directory given to tfds is tfds's own to judge.
        if WAYS[way][0] != "tfds" or state in ("missing", "a file", "fifo")
    ],
)
def test_named_data_is_never_replaced(tmp_path, idx_dir, monkeypatch, caplog, way, state):
    from mnist_jax import config as config_lib

    source, how = WAYS[way]
    shutil.copytree(idx_dir, tmp_path / "cache" / "mnist_jax")  # Good data not named.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    named = _named(tmp_path, idx_dir, state)
    c = config_lib.get_config()
    c.data.source = source
    if how == "dir":
        c.data.dir = str(named)
    else:
        monkeypatch.setenv("MNIST_JAX_DATA_DIR", str(named))
    with no_hang(), pytest.raises(UserError) as e:
        data.load_train_test(c.data)
    assert str(named) in str(e.value)
    assert "sample" not in caplog.text.lower()
    if state.startswith("fifo"):
        assert "is a FIFO" in str(e.value)
    if state == "missing" and source != "mnist":  # Only source=mnist downloads into it.
        assert not named.exists()


@pytest.mark.parametrize("state", ["missing", "empty", "partial", "directory", "fifo"])
@pytest.mark.parametrize("which", ["train_file", "test_file"])
def test_named_csv_files_are_never_replaced(tmp_path, sample, which, state):
    from mnist_jax import config as config_lib

    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    data.write_csv(good, data.Split(sample.images[:20], sample.labels[:20]))
    if state == "empty":
        bad.write_bytes(b"")
    elif state == "partial":
        bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    elif state in NOT_FILES:
        make_not_file(bad, state)
    c = config_lib.get_config()
    c.data.train_file = c.data.test_file = str(good)
    c.data[which] = str(bad)
    with no_hang(), pytest.raises(UserError, match=str(bad)):
        data.load_train_test(c.data)


def _run_dir_readers():
    from mnist_jax import api, evaluate, plot

    return {
        "restore_model": evaluate.restore_model,
        "load_run": api.load_run,
        "plot": plot.plot_workdir,
        "compare": lambda w: plot.compare([w], w.parent / "cmp.png"),
    }


@pytest.mark.parametrize("kind", [*NOT_FILES, "missing"])
@pytest.mark.parametrize("reader", list(_run_dir_readers()))
def test_every_reader_of_a_run_directory_says_what_it_is(tmp_path, reader, kind):
    workdir = tmp_path / "run"
    if kind != "missing":
        make_not_file(workdir, kind)
    with no_hang(), pytest.raises(UserError) as e:
        _run_dir_readers()[reader](workdir)
    message = str(e.value)
    assert str(workdir) in message, message
    if kind == "directory":  # Right kind, but empty: not a run.
        assert "config.json" in message or "metrics.jsonl" in message, message
    elif kind == "missing":
        assert "does not exist" in message, message
    elif kind == "broken link":
        assert NOT_FILES[kind] in message, message
    else:
        assert NOT_FILES[kind].split(",")[0] + ", not a directory" in message, message
