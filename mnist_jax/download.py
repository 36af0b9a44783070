"""Full MNIST-family sets on disk: where they are looked for, and their verified download.

A directory the user names (config.data.dir, or $MNIST_JAX_DATA_DIR for MNIST) is read and
never replaced; with nothing named, the cache dir is searched and filled. Every downloaded file
is verified against the SHA-256 in `datasets.py` before it is renamed into place
(`outputs.write_atomic`).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from absl import logging

from mnist_jax import datasets, outputs
from mnist_jax.errors import UserError
from mnist_jax.files import Split

DOWNLOAD_TIMEOUT_S = 10.0


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
            outputs.write_atomic(target, lambda f, b=payload: f.write(b))
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


def check_online(url: str) -> None:
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
