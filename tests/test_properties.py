"""A systematic search of the input edges: every drawn config value and every drawn file
corruption either gives a valid result or exactly one `error:` line, exit 1, nothing written.

Config values go through `cli.split_config_args` (what `parse_flags` runs) in-process; a sample
of them, and of corrupt data, goes through the real `python -m mnist_jax.main`. Profiles: 'ci'
(default, derandomized) and 'dev' (HYPOTHESIS_PROFILE=dev, a longer search).
"""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, strategies as st

from mnist_jax import cli, config as config_lib, data
from mnist_jax.errors import UserError

from conftest import REPO, main_args, one_error_line

HOSTILE_NUMBERS = st.sampled_from(
    [
        "inf",
        "-inf",
        "nan",
        "-0.0",
        "0",
        "1e400",
        "1e-400",
        "1e-45",
        "3.5e38",
        "2147483648",
        "9223372036854775808",
        "-1",
        "1",
        "0.5",
        "1e9",
        "true",
        "false",
        "abc",
        "",
        "(1, 2)",
        "(0,)",
        "()",
        "None",
        "[3]",
        "1_000",
        "0x10",
    ]
)
FIELD_NAMES = st.sampled_from([f.name for f in config_lib.FIELDS])


def _outcome(*flags_: str):
    """The config the CLI would run, or the one-line message it would print."""
    try:
        return cli.split_config_args(["prog", "--config=linear", "--workdir=w", *flags_])[1]
    except UserError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message
        return message


@given(name=FIELD_NAMES, text=st.one_of(HOSTILE_NUMBERS, st.text(max_size=12)))
def test_any_value_of_any_field_is_a_valid_config_or_one_line(name, text):
    result = _outcome(f"--config.{name}={text}")
    if isinstance(result, str):
        return
    config_lib.validate(result)  # Whatever passed is valid, and representable:
    for f in config_lib.FIELDS:
        value = config_lib.field_value(result, f.name)
        if isinstance(value, float):
            assert math.isfinite(value) and abs(value) <= 3.4028235e38
        if isinstance(value, int) and not isinstance(value, bool):
            assert 0 <= value <= 2**31 - 1


@given(name=FIELD_NAMES, texts=st.lists(HOSTILE_NUMBERS, min_size=2, max_size=3))
def test_a_repeated_override_means_its_last_value(name, texts):
    repeated, last = (
        _outcome(*(f"--config.{name}={t}" for t in texts)),
        _outcome(f"--config.{name}={texts[-1]}"),
    )
    if isinstance(last, str):
        assert isinstance(repeated, str)
    else:
        assert not isinstance(repeated, str) and repeated == last


def _run(args, cwd=REPO):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "flag",
    [
        "--config.optimizer.learning_rate=inf",
        "--config.num_epochs=1e400",
        "--config.model.hidden_units=(64, 0)",
        "--config.seed=-1",
    ],
)
def test_bad_values_through_the_real_command(tmp_path, idx_dir, flag):
    workdir = tmp_path / "run"
    proc = _run(main_args(idx_dir, workdir, flag))
    one_error_line(proc.returncode, proc.stderr)
    assert not workdir.exists()  # Validated before anything is written.


# ----------------------------------------------------------------------------- data


def _check_split(split: data.Split) -> None:
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == (784,)
    assert len(split.images) == len(split.labels) and split.labels.max(initial=0) <= 9


def _corrupt(raw: bytes, how: str, at: float, byte: int) -> bytes:
    i = min(int(at * len(raw)), len(raw) - 1)
    if how == "truncate":
        return raw[:i]
    if how == "flip":
        return raw[:i] + bytes([byte]) + raw[i + 1 :]
    if how == "insert":
        return raw[:i] + bytes([byte]) + raw[i:]
    return raw[: i // 2] + raw[i:]  # "cut" a middle piece


CORRUPTION = dict(
    how=st.sampled_from(["truncate", "flip", "insert", "cut"]),
    at=st.floats(0, 1),
    byte=st.integers(0, 255),
)


@given(which=st.sampled_from(["images", "labels"]), header=st.booleans(), **CORRUPTION)
def test_any_idx_corruption_loads_validly_or_names_the_file(
    tmp_path_factory, idx_dir, which, header, how, at, byte
):
    d = tmp_path_factory.mktemp("idx")
    name = f"train-{which}-idx{3 if which == 'images' else 1}-ubyte"
    raw = gzip.decompress((idx_dir / f"{name}.gz").read_bytes())
    at = at * 0.05 if header else at  # Half the draws aim at the header.
    (d / name).write_bytes(_corrupt(raw, how, at, byte))
    other = name.replace(which, "labels" if which == "images" else "images").replace(
        "idx1", "idx3" if which == "images" else "idx1"
    )
    other = other.replace("labels-idx3", "labels-idx1").replace("images-idx1", "images-idx3")
    shutil.copy(idx_dir / f"{other}.gz", d / f"{other}.gz")
    images, labels = (d / name, d / f"{other}.gz")[:: 1 if which == "images" else -1]
    try:
        _check_split(data.load_idx_split(images, labels))
    except UserError as e:
        assert str(d) in str(e) and "\n" not in str(e)


@given(
    cell=st.one_of(HOSTILE_NUMBERS, st.text(max_size=6)),
    row=st.integers(0, 3),
    col=st.integers(0, 784),
    bom=st.booleans(),
    sep=st.sampled_from([",", "\t", ";", " "]),
)
def test_any_csv_edit_loads_validly_or_names_the_file_and_row(
    tmp_path_factory, sample, cell, row, col, bom, sep
):
    rows = [[str(sample.labels[i]), *map(str, sample.images[i])] for i in range(4)]
    rows[row][col] = cell
    text = "\n".join(sep.join(r) for r in rows)
    path = tmp_path_factory.mktemp("csv") / "train.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    try:
        _check_split(data.read_csv(path))
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e) and len(str(e)) < 400


@pytest.mark.parametrize("how", ["label42", "truncate"])
def test_corrupt_named_data_through_the_real_command(tmp_path, idx_dir, how):
    d = tmp_path / "data"
    shutil.copytree(idx_dir, d)
    labels_path = d / "train-labels-idx1-ubyte.gz"
    if how == "label42":
        labels = data.read_idx(labels_path, data.IDX_LABELS_MAGIC).copy()
        labels[0] = 42
        data.write_idx(labels_path, labels)
    else:
        images = d / "train-images-idx3-ubyte.gz"
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:5000]))
    workdir = tmp_path / "run"
    workdir.mkdir()
    keep = workdir / "notes.txt"
    keep.write_text("mine")
    args = main_args(idx_dir, workdir, "--config.data.source=auto", f"--config.data.dir={d}")
    proc = _run(args)
    line = one_error_line(proc.returncode, proc.stderr)
    assert str(d) in line
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]
    assert keep.read_text() == "mine"
