"""Loaders: real data parses, and every malformed file is a UserError naming it."""

from __future__ import annotations

import gzip
import re
import struct

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import data, predict
from mnist_jax.errors import UserError

from conftest import full_mnist_dir


def test_sample_is_500_real_digits_per_class(sample):
    assert sample.images.shape == (5000, 784) and sample.images.dtype == np.uint8
    assert np.bincount(sample.labels).tolist() == [500] * 10
    assert 30 < sample.images.mean() < 37  # MNIST's mean pixel is about 33.


def test_idx_round_trip(tmp_path, sample):
    for name in ("imgs.idx", "imgs.idx.gz"):
        data.write_idx(tmp_path / name, sample.images[:7].reshape(7, 28, 28))
        back = data.read_idx(tmp_path / name, data.IDX_IMAGES_MAGIC)
        np.testing.assert_array_equal(back.reshape(7, 784), sample.images[:7])


def test_load_idx_dir(idx_dir):
    train, test = data.load_idx(idx_dir)
    assert (len(train), len(test)) == (1200, 300)
    assert train.images.shape == (1200, 784) and set(np.unique(train.labels)) == set(range(10))


def _write(path, payload, gz=False):
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (struct.pack(">IIII", 2049, 1, 28, 28) + bytes(784), "wrong IDX magic number 2049"),
        (struct.pack(">IIII", 2051, 2, 28, 28) + bytes(784), "truncated or corrupt"),
        (struct.pack(">IIII", 2051, 1, 28, 28) + bytes(785), "truncated or corrupt"),
        (b"\x00\x00", "too short"),
    ],
)
def test_bad_idx_images(tmp_path, payload, message):
    path = _write(tmp_path / "train-images-idx3-ubyte", payload)
    with pytest.raises(UserError, match=message) as e:
        data.read_idx(path, data.IDX_IMAGES_MAGIC)
    assert str(path) in str(e.value)


def test_idx_wrong_image_size_and_count_mismatch(tmp_path):
    imgs = _write(tmp_path / "i", struct.pack(">IIII", 2051, 2, 20, 20) + bytes(800))
    labels = _write(tmp_path / "l", struct.pack(">II", 2049, 2) + bytes(2))
    with pytest.raises(UserError, match="expected 28x28"):
        data.load_idx_split(imgs, labels)
    imgs = _write(tmp_path / "i", struct.pack(">IIII", 2051, 3, 28, 28) + bytes(3 * 784))
    with pytest.raises(UserError, match=r"has 3 images but .* has 2 labels"):
        data.load_idx_split(imgs, labels)
    bad_label = _write(tmp_path / "l", struct.pack(">II", 2049, 3) + bytes([1, 2, 12]))
    with pytest.raises(UserError, match="row 3 has label 12, expected 0-9"):
        data.load_idx_split(imgs, bad_label)


def test_gz_that_is_not_gzip(tmp_path):
    path = _write(tmp_path / "train-images-idx3-ubyte.gz", b"this is not gzip")
    with pytest.raises(UserError, match="not gzip"):
        data.read_idx(path, data.IDX_IMAGES_MAGIC)
    cut = gzip.compress(struct.pack(">IIII", 2051, 1, 28, 28) + bytes(784))[:-12]
    path = _write(tmp_path / "cut.gz", cut)
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        data.read_idx(path, data.IDX_IMAGES_MAGIC)


def test_data_dir_without_files(tmp_path):
    with pytest.raises(UserError, match="no train-images-idx3-ubyte"):
        data.load_idx(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        data.load_idx(tmp_path / "nope")


def test_csv_round_trip(tmp_path, sample):
    split = data.Split(sample.images[:50], sample.labels[:50])
    data.write_csv(tmp_path / "a.csv", split)
    back = data.read_csv(tmp_path / "a.csv")
    np.testing.assert_array_equal(back.images, split.images)
    np.testing.assert_array_equal(back.labels, split.labels)


def _csv_rows(n=3, cols=785):
    return [",".join(["1"] + ["0"] * (cols - 1)) for _ in range(n)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["label," + ",".join(f"pixel{i}" for i in range(784)), *_csv_rows()], "header row"),
        (_csv_rows(cols=784), "784 columns, expected 785"),
        (_csv_rows(cols=786), "786 columns, expected 785"),
        ([*_csv_rows(2), "1," + "0," * 783 + "x"], "row 3, column 785: 'x' is not a number"),
        (
            [*_csv_rows(2), "1," + "0," * 782 + "0"],
            "row 3 has 784 columns but the first row has 785",
        ),
        ([*_csv_rows(2), "10," + ",".join(["0"] * 784)], "row 3 has label 10"),
        ([*_csv_rows(2), "3," + ",".join(["0"] * 783 + ["256"])], "pixel value 256"),
        ([*_csv_rows(2), "3," + ",".join(["0"] * 783 + ["-1"])], "pixel value -1"),
        ([""], "empty CSV"),
    ],
)
def test_bad_csv(tmp_path, lines, message):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=message) as e:
        data.read_csv(path)
    assert str(path) in str(e.value)


def test_missing_csv(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        data.read_csv(tmp_path / "nope.csv")


def test_validation_split_is_deterministic_and_disjoint(sample):
    key = jax.random.PRNGKey(3)
    a_train, a_val = data.split_validation(sample, 500, key)
    _, b_val = data.split_validation(sample, 0.1, key)
    assert (len(a_train), len(a_val)) == (4500, 500)
    np.testing.assert_array_equal(a_val.labels, b_val.labels)
    c_train, _ = data.split_validation(sample, 500, jax.random.PRNGKey(4))
    assert not np.array_equal(a_train.labels, c_train.labels)
    with pytest.raises(UserError, match="leaves no training data"):
        data.split_validation(sample, 5000, key)


def test_download_offline_fails_fast_with_advice(tmp_path):
    import time

    t = time.time()
    with pytest.raises(UserError, match="put the four MNIST IDX files in"):
        data.download_mnist(tmp_path, mirrors=("http://127.0.0.1:9/",))
    assert time.time() - t < 5
    assert list(tmp_path.iterdir()) == []  # Nothing half-written is left behind.


def test_auto_falls_back_to_sample_and_says_so(tmp_path, caplog):
    from conftest import small_config

    c = small_config(tmp_path)
    c.data.source, c.data.dir = "auto", ""
    train, test, source, _ = data.load_train_test(c.data)
    assert source == "sample" and len(train) + len(test) == 5000


def test_tfds_without_extra_is_a_clear_error():
    try:
        import tensorflow_datasets  # noqa: F401

        pytest.skip("tensorflow-datasets is installed; this tests its absence")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"pip install 'mnist-jax\[tfds\]'"):
        data.load_tfds("mnist")


@pytest.mark.skipif(full_mnist_dir() is None, reason="needs full MNIST: set MNIST_JAX_DATA_DIR")
def test_full_mnist_class_counts():
    train, test = data.load_idx(full_mnist_dir())
    assert np.bincount(train.labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert np.bincount(test.labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert abs(train.images.mean() - 33.318) < 1e-3


@pytest.mark.skipif(full_mnist_dir() is None, reason="needs full MNIST: set MNIST_JAX_DATA_DIR")
def test_tfds_builds_mnist_offline_from_the_idx_files(tmp_path):
    """With the optional extra, tfds builds MNIST from the original files (its manual_dir)
    without a network, and yields the same digits as the IDX loader (tfds keeps its own
    order). Needs `pip install '.[tfds]'` (TensorFlow, 1.4 GB): skipped without it."""
    pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
    train, test = data.load_tfds("mnist", full_mnist_dir(), tfds_dir=str(tmp_path))
    idx_train, idx_test = data.load_idx(full_mnist_dir())
    for ours, theirs in ((train, idx_train), (test, idx_test)):
        assert ours.images.shape == theirs.images.shape
        key = lambda s: np.lexsort(np.c_[s.images, s.labels].T)  # noqa: E731
        np.testing.assert_array_equal(ours.images[key(ours)], theirs.images[key(theirs)])
        np.testing.assert_array_equal(ours.labels[key(ours)], theirs.labels[key(theirs)])


def test_tfds_offline_without_files_fails_fast(tmp_path):
    """tfds would retry its download for minutes; we fail within seconds instead."""
    pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
    import time

    t = time.time()
    with pytest.raises(UserError, match="offline"):
        data.load_tfds("mnist", tfds_dir=str(tmp_path))
    assert time.time() - t < 30


def _csv_text(sample, rows=3, sep=","):
    return "\n".join(
        sep.join(str(v) for v in [sample.labels[i], *sample.images[i]]) for i in range(rows)
    )


def test_csv_with_a_utf8_bom_reads(tmp_path, sample):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _csv_text(sample).encode())
    np.testing.assert_array_equal(data.read_csv(path).labels, sample.labels[:3])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda s: _csv_text(s, sep="\t").encode(), "separated by tabs; expected commas"),
        (lambda s: _csv_text(s, sep=";").encode(), "separated by semicolons; expected commas"),
        (lambda s: _csv_text(s).encode("utf-16"), "is UTF-16 text"),
        (lambda s: b"1,2\xff,3\n", "is not UTF-8 text (byte 0xff at offset 3)"),
        (lambda s: b"label,p1\n" + _csv_text(s).encode(), "row 1 starts with 'label'"),
    ],
)
def test_csv_encodings_and_separators_are_diagnosed(tmp_path, sample, payload, message):
    path = tmp_path / "x.csv"
    path.write_bytes(payload(sample))
    with pytest.raises(UserError) as e:
        data.read_csv(path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert len(str(e.value)) < 300  # Never the whole 2.7 KB line.


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        data.read_csv(tmp_path)
    with pytest.raises(UserError, match="is a directory"):
        data.read_idx(tmp_path, data.IDX_LABELS_MAGIC)


def test_named_bad_data_is_an_error_never_the_sample(tmp_path, idx_dir):
    import shutil

    from mnist_jax import config as config_lib

    bad = tmp_path / "bad"
    shutil.copytree(idx_dir, bad)
    labels = data.read_idx(bad / "train-labels-idx1-ubyte.gz", data.IDX_LABELS_MAGIC).copy()
    labels[4] = 42
    data.write_idx(bad / "train-labels-idx1-ubyte.gz", labels)
    c = config_lib.get_config()
    c.data.dir = str(bad)  # source stays auto
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte.gz: row 5 has label 42"):
        data.load_train_test(c.data)
    c.data.dir = str(tmp_path / "missing")
    with pytest.raises(UserError, match="does not exist"):
        data.load_train_test(c.data)


def test_validation_split_last_holds_out_the_last_rows():
    key = jax.random.PRNGKey(0)
    train, val = data.validation_indices(20_000, 5000, key, "last")
    np.testing.assert_array_equal(train, np.arange(15_000))
    np.testing.assert_array_equal(val, np.arange(15_000, 20_000))
    _, val_r = data.validation_indices(20_000, 5000, key)
    assert len(val_r) == 5000 and not np.array_equal(np.sort(val_r), val)


def test_load_idx_split_takes_the_label_range_and_counts_classes_from_0(tmp_path):
    imgs = _write(tmp_path / "i", struct.pack(">IIII", 2051, 3, 28, 28) + bytes(3 * 784))
    labels = _write(tmp_path / "l", struct.pack(">II", 2049, 3) + bytes([1, 26, 13]))
    split = data.load_idx_split(imgs, labels, num_classes=26, first_label=1)
    assert split.labels.tolist() == [0, 25, 12] and split.labels.dtype == np.int32
    with pytest.raises(UserError, match="row 2 has label 26, expected 0-9"):
        data.load_idx_split(imgs, labels)
    zero = _write(tmp_path / "z", struct.pack(">II", 2049, 3) + bytes([1, 0, 2]))
    with pytest.raises(UserError, match="row 2 has label 0, expected 1-26"):
        data.load_idx_split(imgs, zero, num_classes=26, first_label=1)


@settings(max_examples=60, deadline=None)
@given(
    cell=st.one_of(
        st.sampled_from(["inf", "nan", "-1", "256", "2.5", "x", "", "1e400"]),
        st.integers(-3, 300).map(str),
    ),
    row=st.integers(0, 2),
    col=st.integers(0, 784),
)
def test_training_and_predict_csv_rows_are_read_alike(tmp_path_factory, sample, cell, row, col):
    """One CSV reader: a labelled file reads the same for training and for predict, and an
    unlabelled one gives predict the same pixels, or both name the same problem."""
    rows = [[str(sample.labels[i]), *map(str, sample.images[i])] for i in range(3)]
    rows[row][col] = cell
    folder = tmp_path_factory.mktemp("csv")
    labelled, unlabelled = folder / "l.csv", folder / "u.csv"
    labelled.write_text("\n".join(",".join(r) for r in rows) + "\n")
    unlabelled.write_text("\n".join(",".join(r[1:]) for r in rows) + "\n")

    def outcome(read, path):
        try:
            pixels, labels = read(path)
            return pixels.tolist(), None if labels is None else labels.tolist()
        except UserError as e:
            return str(e).removeprefix(f"{path}: ")

    def row_of(message: str) -> str:
        return re.match(r"row \d+", message).group()

    train = outcome(lambda p: (data.read_csv(p).images, data.read_csv(p).labels), labelled)
    assert outcome(predict.read_rows, labelled) == train
    if col > 0:  # A pixel: the same pixels, or the same row and problem, without labels.
        pixels_only = outcome(predict.read_rows, unlabelled)
        if isinstance(train, tuple):
            assert pixels_only == (train[0], None)
        else:
            assert isinstance(pixels_only, str) and row_of(pixels_only) == row_of(train)
