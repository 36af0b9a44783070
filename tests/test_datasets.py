"""The MNIST family by name: each set is read from its own original IDX file names, gzipped
or not, with its classes, label range and orientation; nothing is ever downloaded unasked."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from mnist_jax import config as config_lib, data, datasets, evaluate
from mnist_jax.errors import UserError

from conftest import REPO, one_error_line, small_config, train_results

NAMES = datasets.NAMES


def family_files(directory: Path, name: str, n_train: int = 40, n_test: int = 20,
                 gz: bool = True, seed: int = 0) -> tuple[data.Split, data.Split]:  # fmt: skip
    """Writes set `name`'s four files under their original names, stored the way the set
    stores them (EMNIST: transposed, letters labelled from 1); returns the upright splits."""
    family = datasets.get(name)
    rng = np.random.default_rng(seed)
    splits = []
    for part, n in ((0, n_train), (2, n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % family.num_classes
        stored = images.transpose(0, 2, 1) if family.transposed else images
        suffix = ".gz" if gz else ""
        data.write_idx(directory / (family.files[part] + suffix), stored)
        data.write_idx(directory / (family.files[part + 1] + suffix), labels + family.first_label)
        splits.append(data.Split(images.reshape(n, 784), labels.astype(np.int32)))
    return splits[0], splits[1]


def data_config(directory: Path, name: str, source: str = "idx"):
    c = config_lib.get_config()
    c.data.source, c.data.dir, c.data.name = source, str(directory), name
    config_lib.validate(c)
    return c.data


# ----------------------------------------------------------------------------- the table


def test_the_table_is_one_consistent_row_per_set():
    assert set(NAMES) >= {"mnist", "fashion_mnist", "kmnist", "emnist_digits",
                          "emnist_letters", "emnist_balanced"}  # fmt: skip
    for f in datasets.FAMILY.values():
        assert len(set(f.files)) == 4 and len(set(f.class_names)) == f.num_classes
        assert all(n > 0 for n in f.sizes)
        # A download exists exactly where every file has a SHA-256 and there is a mirror.
        assert bool(f.mirrors) == bool(f.sha256)
        assert all(re.fullmatch("[0-9a-f]{64}", h) for h in f.sha256) and len(f.sha256) in (0, 4)
    assert datasets.get("emnist_letters").class_names[:2] == ("A/a", "B/b")
    assert datasets.get("emnist_balanced").num_classes == 47
    assert datasets.get("emnist_byclass").num_classes == 62
    assert not datasets.get("emnist_digits").downloads  # No verified per-file checksums.
    assert datasets.get("mnist").downloads == data.MNIST_FILES
    assert config_lib.get_config().data.name == "mnist"


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("gz", [True, False])
def test_every_set_reads_from_its_own_file_names(tmp_path, name, gz):
    train, test = family_files(tmp_path, name, gz=gz)
    got_train, got_test, source, where = data.load_train_test(data_config(tmp_path, name))
    for got, want in ((got_train, train), (got_test, test)):
        np.testing.assert_array_equal(got.images, want.images)  # Upright: EMNIST transposed back.
        np.testing.assert_array_equal(got.labels, want.labels)  # Classes count from 0.
    assert (source, where) == ("idx", str(tmp_path))
    np.testing.assert_array_equal(data.load_test(data_config(tmp_path, name))[0].images,
                                  test.images)  # fmt: skip
    assert data.class_names(data_config(tmp_path, name)) == datasets.get(name).class_names


def test_letters_outside_1_to_26_are_errors(tmp_path):
    family_files(tmp_path, "emnist_letters")
    path = tmp_path / "emnist-letters-test-labels-idx1-ubyte.gz"
    for bad in (0, 27):
        labels = data.read_idx(path, data.IDX_LABELS_MAGIC).copy()
        labels[2] = bad
        data.write_idx(path, labels)
        with pytest.raises(UserError, match=f"row 3 has label {bad}, expected 1-26"):
            data.load_train_test(data_config(tmp_path, "emnist_letters"))


def test_a_directory_of_another_set_says_which_set_it_holds(tmp_path):
    family_files(tmp_path, "emnist_digits")
    with pytest.raises(UserError) as e:
        data.load_train_test(data_config(tmp_path, "emnist_letters"))
    message = str(e.value)
    assert "no emnist-letters-train-images-idx3-ubyte[.gz]" in message
    assert "it holds emnist_digits: set --config.data.name" in message
    mnist_named = tmp_path / "mnist_named"
    mnist_named.mkdir()
    family_files(mnist_named, "kmnist")  # The names cannot tell MNIST, Fashion, KMNIST apart.
    with pytest.raises(UserError, match="it holds mnist or fashion_mnist or kmnist: set"):
        data.load_train_test(data_config(mnist_named, "emnist_mnist"))


# Per file: how it is there. Names of another set, or none at all, are "missing".
STATES = ("gz", "raw", "missing", "other_name", "wrong_magic", "truncated", "bad_label")


def _write_state(directory: Path, family: datasets.Family, role: int, state: str, rng) -> None:
    stem, is_labels = family.files[role], role % 2 == 1
    n = 6
    array = (np.arange(n, dtype=np.uint8) % family.num_classes + family.first_label
             if is_labels else rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))  # fmt: skip
    if state == "missing":
        return
    if state == "other_name":  # The file under another set's name for it (EMNIST's, MNIST's).
        other = "emnist_digits" if stem in datasets.MNIST_STEMS else "mnist"
        data.write_idx(directory / (datasets.get(other).files[role] + ".gz"), array)
        return
    path = directory / (stem + (".gz" if state != "raw" else ""))
    if state == "bad_label" and is_labels:
        array = array.copy()
        array[-1] = family.first_label + family.num_classes
    data.write_idx(path, array)
    if state in ("gz", "raw"):
        return
    raw = gzip.decompress(path.read_bytes())
    if state == "wrong_magic":
        raw = (2049 if not is_labels else 2051).to_bytes(4, "big") + raw[4:]
    if state == "truncated" or (state == "bad_label" and not is_labels):
        raw = raw[:-3]
    path.write_bytes(gzip.compress(raw))


@given(
    name=st.sampled_from(NAMES),
    states=st.lists(st.sampled_from(STATES), min_size=4, max_size=4),
    source=st.sampled_from(["idx", "auto", "mnist"]),
)
def test_any_mix_of_missing_misnamed_and_broken_files(tmp_path_factory, name, states, source):
    """Loads iff all four files are good; else one UserError naming every missing file, or
    the path of the first broken one in reading order. Never a download, never another set."""
    d = tmp_path_factory.mktemp("set")
    family = datasets.get(name)
    rng = np.random.default_rng(0)
    for role, state in enumerate(states):
        _write_state(d, family, role, state, rng)
    missing = [family.files[r] for r, s in enumerate(states) if s in ("missing", "other_name")]
    broken = [r for r, s in enumerate(states) if s not in ("gz", "raw", "missing", "other_name")]
    cfg = data_config(d, name, source)
    if not missing and not broken:
        train, test, _, _ = data.load_train_test(cfg)
        assert (len(train), len(test)) == (6, 6)
        return
    with pytest.raises(UserError) as e:
        data.load_train_test(cfg)
    message = str(e.value)
    if missing:
        assert all(f"{stem}[.gz]" in message for stem in missing), message
        assert f"data.name={name}" in message
    else:
        first = family.files[broken[0]]
        assert re.search(rf"{re.escape(str(d))}/{re.escape(first)}(\.gz)?: ", message), message


# ----------------------------------------------------------------------------- no downloads


def test_a_named_set_is_never_downloaded_unasked_nor_replaced_by_the_sample(monkeypatch, idx_dir):
    c = config_lib.get_config()
    c.data.name = "fashion_mnist"  # source auto, no dir, empty cache.
    with pytest.raises(UserError, match=r"full Fashion-MNIST not found in .*data.source=mnist"):
        data.load_train_test(c.data)
    # $MNIST_JAX_DATA_DIR holds MNIST under the same file names: never read as Fashion-MNIST.
    monkeypatch.setenv("MNIST_JAX_DATA_DIR", str(idx_dir))
    with pytest.raises(UserError, match="full Fashion-MNIST not found"):
        data.load_train_test(c.data)
    c.data.source = "mnist"  # Asked for: downloaded with checksums (offline here: fails fast).
    with pytest.raises(UserError, match=r"could not download train-images-idx3-ubyte\.gz"):
        data.load_train_test(c.data)
    c.data.name = "emnist_letters"  # No verified download: an error before any connection.
    with pytest.raises(UserError, match="EMNIST Letters has no verified download"):
        data.load_train_test(c.data)


@pytest.mark.parametrize("source", ["csv", "sample", "tfds"])
def test_a_name_the_source_does_not_read_is_an_error(source):
    c = config_lib.get_config()
    c.data.source, c.data.name = source, "kmnist"
    if source == "csv":
        c.data.train_file = c.data.test_file = "x.csv"
    with pytest.raises(UserError, match=r"config\.data\.name=kmnist is read only by data\.source"):
        config_lib.validate(c)


# ----------------------------------------------------------------------------- end to end


def test_the_classes_flow_into_model_results_report_and_predict(tmp_path):
    """emnist_letters: 26 classes in the model, confusion matrix, per-class metrics, figures,
    report and the predict command's output."""
    d = tmp_path / "letters"
    d.mkdir()
    _, test = family_files(d, "emnist_letters", n_train=400, n_test=52)
    c = small_config(d, "dnn", plots=True)
    c.data.name = "emnist_letters"
    workdir = tmp_path / "run"
    results = train_results(c, workdir)
    names = list(datasets.get("emnist_letters").class_names)
    assert results["class_names"] == names and results["num_classes"] == 26
    assert np.asarray(results["confusion_matrix"]).shape == (26, 26)
    assert all(len(v) == 26 for v in results["per_class"].values())
    report = (workdir / "report.md").read_text()
    assert "| Z/z |" in report and "emnist_letters" in report
    csv = tmp_path / "rows.csv"
    np.savetxt(csv, np.c_[test.labels[:3], test.images[:3]], fmt="%d", delimiter=",")
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_jax.predict", f"--workdir={workdir}", f"--csv={csv}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = proc.stdout.splitlines()[0]
    assert re.match(r"row 1: [A-Z]/[a-z] \(label A/a\)  A/a:[0-9.]+ B/b:", first), first
    assert json.loads((workdir / "config.json").read_text())["data"]["name"] == "emnist_letters"
    evaluated = evaluate.evaluate_workdir(workdir)  # --mode=eval: the run's own set by name.
    assert evaluated["class_names"] == names and len(evaluated["per_class"]["recall"]) == 26
    other = tmp_path / "kmnist"
    other.mkdir()
    family_files(other, "kmnist")  # Another data set: never scored by this run's model.
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_jax.plot", f"--workdir={workdir}",
         "--config.data.name=kmnist", f"--config.data.dir={other}"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    line = one_error_line(proc.returncode, proc.stderr)
    assert "data.name=kmnist" in line and "was trained on emnist_letters" in line


def test_a_wrong_name_on_the_command_line_is_one_error_line(tmp_path):
    family_files(tmp_path, "kmnist")
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_jax.main", "--config=configs/dnn.py",
         f"--workdir={tmp_path / 'run'}", "--config.data.source=idx",
         f"--config.data.dir={tmp_path}", "--config.data.name=emnist_leters"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    line = one_error_line(proc.returncode, proc.stderr)
    assert "config.data.name='emnist_leters': choose one of mnist, fashion_mnist" in line
    assert not (tmp_path / "run").exists()
