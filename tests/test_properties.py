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
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from mnist_jax import cli, config as config_lib, data, files, sweep
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


@given(name=FIELD_NAMES, text=st.one_of(HOSTILE_NUMBERS, st.text(max_size=12)))
def test_a_value_means_the_same_in_a_config_flag_and_a_sweep(name, text):
    """One value parser: `--sweep FIELD=TEXT` makes the config `--config.FIELD=TEXT` makes,
    or both refuse it (a comma separates sweep values, and a sweep's value is stripped)."""
    assume(name != "sweep" and text.strip() == text != "" and "," not in text)
    assume(not text.startswith(("'", '"')))  # A quoted string is the sweep list's syntax.
    flag = _outcome(f"--config.{name}={text}")
    try:
        (member,) = sweep.members(_outcome(), [f"{name}={text}"])
        swept = member.config
    except UserError as e:
        swept = str(e)
    assert isinstance(flag, str) == isinstance(swept, str), (flag, swept)
    if not isinstance(flag, str):
        assert config_lib.field_value(swept, name) == config_lib.field_value(flag, name)


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


# ----------------------------------------------------------------------------- headers, bombs

MAGIC = {"images": data.IDX_IMAGES_MAGIC, "labels": data.IDX_LABELS_MAGIC}
COUNTS = st.one_of(
    st.integers(0, 4),
    st.sampled_from([files.MAX_EXAMPLES, files.MAX_EXAMPLES + 1, 2**31, 2**32 - 1]),
)
SIDES = st.sampled_from([28, 0, 1, 27, 29, 2**16, 2**32 - 1])
TRAILING = st.sampled_from([b"", b"\x00", b"junk", gzip.compress(bytes(4096))])


@given(
    which=st.sampled_from(["images", "labels"]),
    magic=st.sampled_from([2051, 2049, 2050, 0x0D030000, 0x32303531]),
    count=COUNTS,
    h=SIDES,
    w=SIDES,
    short=st.sampled_from([0, 0, 1, 784]),
    trailing=TRAILING,
    gz=st.booleans(),
)
def test_any_idx_header_is_checked_before_its_data(
    tmp_path_factory, which, magic, count, h, w, short, trailing, gz
):
    """Whatever a header promises, reading costs at most what it promises of a sane MNIST
    shape: it loads exactly as promised, or it is one UserError naming the file."""
    dims = (count, h, w) if which == "images" else (count,)
    promised = math.prod(dims)
    body = bytes(max(0, min(promised, 4 * 784) - short))
    raw = struct.pack(f">I{len(dims)}I", magic, *dims) + body + trailing
    path = tmp_path_factory.mktemp("idx") / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(raw, 1) if gz else raw)
    try:
        array = data.read_idx(path, MAGIC[which])
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    data_bytes = body + trailing  # What follows the header, exactly as promised.
    assert magic == MAGIC[which] and dims[1:] in ((28, 28), ()) and len(data_bytes) == promised
    assert array.shape == dims and array.tobytes() == data_bytes


_RSS_SCRIPT = """
import resource, sys
from mnist_jax import files
from mnist_jax.errors import UserError
files.MAX_CSV_BYTES = 8 << 20  # The cap is what bounds a CSV, whatever its value.
read = {"csv": files.read_csv, "idx": lambda p: files.read_idx(p, int(sys.argv[3]))}
try:
    read[sys.argv[2]](sys.argv[1])
    print("loaded")
except UserError as e:
    print("error:", e)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _peak_rss_mb(path, reader, magic=0) -> tuple[str, int]:
    """(outcome, peak RSS in MB) of reading `path` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), reader, str(magic)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome, rss = proc.stdout.strip().splitlines()
    return outcome, int(rss)


def _gzip_bomb(path, head: bytes, zeros: int, unit: bytes = b"\x00") -> int:
    """`head` then `zeros` bytes of `unit` repeated, gzipped as a stream; returns the size."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = unit * ((16 << 20) // len(unit))
    with open(path, "wb") as f:
        f.write(z.compress(head))
        for _ in range(zeros // len(block)):
            f.write(z.compress(block))
        f.write(z.flush())
    return path.stat().st_size


def test_a_gzip_bomb_is_refused_within_a_bounded_memory(tmp_path):
    """256 MiB of inflated data behind a ~0.3 MB file: refused, and the process never grows
    by more than a read chunk beyond the promised bytes (the old reader inflated it all)."""
    small = tmp_path / "small.gz"
    files.write_idx(small, np.zeros((10, 28, 28), np.uint8))
    _, baseline = _peak_rss_mb(small, "idx", data.IDX_IMAGES_MAGIC)
    bombs = {
        "images": (struct.pack(">IIII", 2051, 10, 28, 28) + bytes(7840), b"\x00", 2051),
        "labels": (struct.pack(">II", 2049, 10) + bytes(10), b"\x00", 2049),
        "huge count": (struct.pack(">IIII", 2051, 2**32 - 1, 28, 28), b"\x00", 2051),
        "csv": (b"", b"0," * 784 + b"0\n", 0),
    }
    for name, (head, unit, magic) in bombs.items():
        path = tmp_path / f"{name}.gz"
        size = _gzip_bomb(path, head, 256 << 20, unit)
        assert size < 2 << 20
        outcome, peak = _peak_rss_mb(path, "csv" if name == "csv" else "idx", magic)
        assert outcome.startswith("error:") and str(path) in outcome, outcome
        assert peak - baseline < 64, (name, outcome, peak, baseline)


@pytest.mark.parametrize("what", ["csv", "predict csv", "json", "idx"])
def test_an_oversize_file_is_refused_before_it_is_read(tmp_path, what):
    """A (sparse) file over its cap is refused from its size alone, in no time and memory."""
    from mnist_jax import predict, rundir

    cap, read = {
        "csv": (files.MAX_CSV_BYTES, data.read_csv),
        "predict csv": (files.MAX_CSV_BYTES, predict.read_rows),
        "json": (rundir.MAX_JSON_BYTES, rundir.read_json),
        "idx": (0, lambda p: data.read_idx(p, data.IDX_LABELS_MAGIC)),
    }[what]
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.write(struct.pack(">II", 2049, 10) if what == "idx" else b"1,2\n")
        f.truncate(cap + (1 << 30))  # A gigabyte more than allowed, all of it a hole.
    with pytest.raises(UserError) as e:
        read(path)
    assert str(path) in str(e.value)
    assert ("larger than" if what != "idx" else "file holds 1073741") in str(e.value)
