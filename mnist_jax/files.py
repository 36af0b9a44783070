"""Reading the dataset files: IDX (optionally gzipped) and the notebook CSV layout, one reader
per format (`read_rows` also reads predict's unlabelled rows); written atomically.

Every problem with a file is one `UserError` that names the file, the row (counted from 1) and
what was expected, so a user fixes it without reading a traceback.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np

from mnist_jax import outputs
from mnist_jax.errors import UserError
from mnist_jax.inputs import CHUNK, check_file, open_data, read_file

NUM_PIXELS = 28 * 28
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
# The four original files and the SHA-256 of each .gz as distributed.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    ),
}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 pixels (n, 784) and int32 labels (n,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Split:
        return Split(self.images[rows], self.labels[rows])


# ----------------------------------------------------------------------------- limits

# What any one input may make us allocate. A header is checked before the data it promises
# is read, and no more than it promises is read: a small gzip file cannot inflate into
# gigabytes before it is refused.
MAX_EXAMPLES = 1_000_000  # Per IDX file (MNIST: 60,000; EMNIST byclass: 697,932).
MAX_CSV_BYTES = 256 << 20  # CSV text, after gunzip (MNIST's 60,000-row train CSV: 110 MB).
IDX_SHAPES = {IDX_IMAGES_MAGIC: (28, 28), IDX_LABELS_MAGIC: ()}  # One example's shape.


# ----------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Parses one uint8 IDX file (optionally gzipped). The header is read and checked first
    (magic number, an MNIST-like shape, at most MAX_EXAMPLES), then exactly the bytes it
    promises; fewer, or any byte after them, is an error."""
    path = Path(path)
    with open_data(path) as (stream, size):
        ndim = magic & 0xFF
        head = stream.read(4 + 4 * ndim)
        dims = _idx_dims(path, head, magic)
        expected = math.prod(dims)
        if size is not None and size - len(head) != expected:
            _idx_size_error(path, dims, size - len(head))
        body = np.empty(expected, np.uint8)  # Pages are only touched as bytes arrive.
        got = 0
        while got < expected:
            n = stream.readinto(memoryview(body)[got : got + CHUNK])
            if not n:
                _idx_size_error(path, dims, got)
            got += n
        if stream.read(1):
            _idx_size_error(path, dims, f"more than {expected}")
    return body.reshape(dims)


def _idx_dims(path: Path, head: bytes, magic: int) -> tuple[int, ...]:
    """The shape an IDX header promises, checked against `magic`'s example shape."""
    if head[:1].isdigit():
        raise UserError(
            f"{path}: looks like a CSV file, expected an IDX file (use data.source=csv)"
        )
    ndim = magic & 0xFF
    if len(head) < 4 + 4 * ndim:
        raise UserError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    (found,) = struct.unpack(">I", head[:4])
    if found != magic:
        raise UserError(
            f"{path}: wrong IDX magic number {found} (expected {magic}: "
            f"{'images' if magic == IDX_IMAGES_MAGIC else 'labels'} file)"
        )
    dims = struct.unpack(f">{ndim}I", head[4:])
    shape = IDX_SHAPES.get(magic)
    if shape is not None and dims[1:] != shape:
        raise UserError(f"{path}: images are {dims[1:]}, expected 28x28")
    limit = MAX_EXAMPLES * math.prod(shape if shape is not None else (NUM_PIXELS,))
    if dims[0] > MAX_EXAMPLES or math.prod(dims) > limit:
        raise UserError(
            f"{path}: header promises {dims[0]:,} examples of shape {dims[1:]}; "
            f"at most {MAX_EXAMPLES:,} are read"
        )
    return dims


def _idx_size_error(path: Path, dims: tuple[int, ...], held: int | str) -> None:
    raise UserError(
        f"{path}: header promises {math.prod(dims)} bytes of data for shape {dims}, "
        f"file holds {held} (truncated or corrupt)"
    )


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file (gzipped if the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x800 | array.ndim
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    payload = gzip.compress(raw) if str(path).endswith(".gz") else raw
    outputs.write_atomic(path, lambda f: f.write(payload))


def locate_idx_file(directory: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in `directory` (also the dotted `train-images.idx3-ubyte`), None if
    absent; a candidate that is there but not a regular file (a FIFO, a directory) is an error."""
    names = [stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")]
    for name in names:
        if os.path.lexists(directory / name):
            check_file(directory / name)
            return directory / name
    return None


def load_idx_split(
    images_path: Path, labels_path: Path, num_classes: int = 10, first_label: int = 0
) -> Split:
    """Loads and cross-checks one images/labels pair of IDX files; stored labels run from
    `first_label` to `first_label + num_classes - 1` and are returned counted from 0."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)  # read_idx checked the 28x28 shape.
    if len(images) != len(labels):
        raise UserError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if not len(labels):
        raise UserError(f"{labels_path}: holds no examples")
    last = first_label + num_classes - 1
    bad = np.flatnonzero((labels < first_label) | (labels > last))
    if bad.size:
        raise UserError(
            f"{labels_path}: row {bad[0] + 1} has label {labels[bad[0]]}, "
            f"expected {first_label}-{last}"
        )
    return Split(
        images.reshape(len(images), NUM_PIXELS), labels.astype(np.int32) - np.int32(first_label)
    )


# ----------------------------------------------------------------------------- CSV


def read_csv(path: str | os.PathLike, label_column: int = 0) -> Split:
    """Reads the notebook CSV layout: no header, one label (0-9) and 784 pixels (0-255) per row,
    comma-separated UTF-8 (a byte-order mark is fine). Rows in messages count from 1."""
    if not path:
        raise UserError("csv source needs --config.data.train_file and --config.data.test_file")
    pixels, labels = read_rows(path, label_column=label_column, unlabelled=False)
    return Split(pixels, labels)


def read_rows(
    path: str | os.PathLike,
    num_classes: int = 10,
    label_column: int = 0,
    unlabelled: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The one CSV reader: (pixels uint8 (n, 784), labels int32 (n,) or None) of rows of a
    label (0 to num_classes - 1) and 784 pixels, or with `unlabelled` of 784 pixels alone."""
    path = Path(path)
    lines = _csv_lines(path, read_file(path, MAX_CSV_BYTES))
    try:
        rows = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        raise UserError(f"{path}: {_first_bad_row(lines)}") from None
    row_of = np.flatnonzero([bool(line.strip()) for line in lines]) + 1  # File rows, 1-based.
    if rows.shape[1] == NUM_PIXELS and unlabelled:
        pixels, labels = rows, None
    elif rows.shape[1] == NUM_PIXELS + 1:
        labels = rows[:, label_column]
        pixels = np.delete(rows, label_column % rows.shape[1], axis=1)
        top = num_classes - 1
        bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0) | (labels > top))
        if bad.size:
            raise UserError(
                f"{path}: row {row_of[bad[0]]} has label {labels[bad[0]]:g}, expected 0-{top}"
            )
    else:
        expected = f"{NUM_PIXELS + 1} (a label and 784 pixels)"
        raise UserError(f"{path}: row {row_of[0]} has {rows.shape[1]} columns, expected "
                        + (f"784 pixels or {expected}" if unlabelled else expected))  # fmt: skip
    bad_px = np.argwhere((pixels != np.round(pixels)) | (pixels < 0) | (pixels > 255))
    if bad_px.size:
        r, c = bad_px[0]
        raise UserError(
            f"{path}: row {row_of[r]} has pixel value {pixels[r, c]:g}, expected integers 0-255"
        )
    return pixels.astype(np.uint8), None if labels is None else labels.astype(np.int32)


def _csv_lines(path: Path, raw: bytes) -> list[str]:
    """The file's lines, after diagnosing encodings, separators and a header row."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(
            f"{path}: is UTF-16 text; save it as UTF-8 (expected a comma-separated CSV)"
        )
    try:
        text = raw.decode("utf-8-sig")  # Strips a UTF-8 byte-order mark.
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "expected a comma-separated CSV of numbers"
        ) from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise UserError(f"{path}: empty CSV file")
    if "," not in first:
        for sep, name in (("\t", "tabs"), (";", "semicolons"), (" ", "spaces")):
            if sep in first.strip():
                raise UserError(f"{path}: columns are separated by {name}; expected commas")
    head = first.split(",")[0].strip()
    try:
        float(head)
    except ValueError:
        raise UserError(
            f"{path}: row {lines.index(first) + 1} starts with {_clip(head)!r}, not a number: "
            "remove the header row (expected label,pixel1,...,pixel784 with no header)"
        ) from None
    return lines


def _first_bad_row(lines: list[str]) -> str:
    """Why numpy could not parse `lines`: the first row with a wrong column count or a value
    that is not a number (numpy's own messages count rows inconsistently)."""
    width = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cells = line.split(",")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            return f"row {number} has {len(cells)} columns but the first row has {width}"
        for col, cell in enumerate(cells, 1):
            try:
                float(cell)
            except ValueError:
                return f"row {number}, column {col}: {_clip(cell.strip())!r} is not a number"
    return "cannot parse as a CSV of numbers"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def write_csv(path: str | os.PathLike, split: Split) -> None:
    """Writes a split in the notebook CSV layout (label first), e.g. for tests and exports."""
    table = np.concatenate([split.labels[:, None].astype(np.int64), split.images], axis=1)
    outputs.write_atomic(path, lambda f: np.savetxt(f, table, fmt="%d", delimiter=","))
