"""The MNIST family by name: every set stored in MNIST's IDX format, in one table.

`config.data.name` picks a row: which four original files to read from `config.data.dir`
(gzipped or not, under the set's own names), the class names the model, confusion matrix,
figures, report, results.json and predict output show, how the stored images are turned into
upright 28x28 images, the distributed sizes, and where a verified download comes from.

EMNIST stores each image transposed (rows are the written columns) and labels its letters
1-26; `load` transposes every image back and shifts labels so that classes count from 0.
`emnist_letters` classes are case-merged as EMNIST defines them: class 0 is "A/a" ... 25 "Z/z".
`emnist_balanced` and `emnist_bymerge` have 47 classes: 0-9, A-Z (where the lowercase letter
looks like its capital, C I J K L M O P S U V W X Y Z, the capital stands for both) and the 11
lowercase letters that differ (a b d e f g h n q r t); `emnist_byclass` has 62: 0-9, A-Z, a-z.

Downloads: MNIST, Fashion-MNIST and KMNIST publish one file per split, each listed here with the
SHA-256 of its .gz (checked against several independent copies of the published sums). EMNIST
is distributed only as one 562 MB zip of every split (NIST's gzip.zip) without per-file
checksums we could verify, so it has no download here: unzip it and point data.dir at its
gzip/ folder.
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import numpy as np

from mnist_jax.errors import UserError
from mnist_jax.files import MNIST_FILES, Split, load_idx_split, locate_idx_file
from mnist_jax.inputs import check_dir

DIGITS = tuple(string.digits)
# Roles of the four files, in the order of `Family.files`.
ROLES = ("train images", "train labels", "test images", "test labels")


@dataclasses.dataclass(frozen=True)
class Family:
    """One set of the MNIST family: its files, classes, transform, sizes and download."""

    name: str
    title: str
    files: tuple[str, str, str, str]  # Stems (no .gz) of train images/labels, test images/labels.
    class_names: tuple[str, ...]
    sizes: tuple[int, int]  # Training and test examples as distributed.
    transposed: bool = False  # Images stored transposed (EMNIST): transposed back on load.
    first_label: int = 0  # The stored label of class 0 (EMNIST letters: 1).
    mirrors: tuple[str, ...] = ()  # URL prefixes of a verified download; () = no download.
    sha256: tuple[str, ...] = ()  # SHA-256 of each file's .gz as distributed, `files` order.

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def downloads(self) -> dict[str, str]:
        """{file name (.gz): SHA-256} of a verified download; empty when there is none."""
        if not self.sha256:
            return {}
        return {f"{s}.gz": h for s, h in zip(self.files, self.sha256, strict=True)}


MNIST_STEMS = tuple(name.removesuffix(".gz") for name in MNIST_FILES)


def _emnist(split: str, classes: tuple[str, ...], sizes: tuple[int, int], first: int = 0):
    stems = tuple(
        f"emnist-{split}-{part}-{kind}-ubyte"
        for part in ("train", "test")
        for kind in ("images-idx3", "labels-idx1")
    )
    return Family(f"emnist_{split}", f"EMNIST {split.capitalize()}", stems, classes, sizes,
                  transposed=True, first_label=first)  # fmt: skip


_UPPER, _LOWER = tuple(string.ascii_uppercase), tuple(string.ascii_lowercase)
_MERGED = DIGITS + _UPPER + tuple("abdefghnqrt")

FAMILY: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "mnist",
            "MNIST",
            MNIST_STEMS,
            DIGITS,
            (60_000, 10_000),
            mirrors=(
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
            ),
            sha256=tuple(MNIST_FILES.values()),
        ),
        Family(
            "fashion_mnist",
            "Fashion-MNIST",
            MNIST_STEMS,
            (
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            (60_000, 10_000),
            mirrors=(
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/"
                "fashion/",
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            ),
            sha256=(
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        ),
        Family(
            "kmnist",
            "Kuzushiji-MNIST",
            MNIST_STEMS,
            ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),  # Hiragana, romanised.
            (60_000, 10_000),
            mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            sha256=(
                "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
                "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
                "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
            ),
        ),
        _emnist("mnist", DIGITS, (60_000, 10_000)),
        _emnist("digits", DIGITS, (240_000, 40_000)),
        _emnist(
            "letters",
            tuple(f"{u}/{lo}" for u, lo in zip(_UPPER, _LOWER, strict=True)),
            (124_800, 20_800),
            first=1,
        ),
        _emnist("balanced", _MERGED, (112_800, 18_800)),
        _emnist("bymerge", _MERGED, (697_932, 116_323)),
        _emnist("byclass", DIGITS + _UPPER + _LOWER, (697_932, 116_323)),
    )
}
NAMES = tuple(FAMILY)


def get(name: str) -> Family:
    """The table row of `name`; an unknown name is a UserError listing the known ones."""
    if name not in FAMILY:
        raise UserError(f"unknown data.name {name!r}; choose one of {', '.join(NAMES)}")
    return FAMILY[name]


def _present(family: Family, directory: Path) -> list[Path | None]:
    """Each of the four files found in `directory` (None where missing)."""
    return [locate_idx_file(directory, stem) for stem in family.files]


def has_files(family: Family, directory: str | Path) -> bool:
    """Whether `directory` holds all four of the set's files."""
    return Path(directory).is_dir() and None not in _present(family, Path(directory))


def find_files(family: Family, directory: str | Path, roles: tuple[int, ...] = (0, 1, 2, 3)):
    """The paths of the files in `roles` (indices into ROLES); a UserError naming every missing
    one, and the set(s) whose files the directory holds instead."""
    directory = check_dir(Path(directory).expanduser())
    found = _present(family, directory)
    missing = [family.files[r] for r in roles if found[r] is None]
    if missing:
        others = [f.name for f in FAMILY.values() if f.files != family.files
                  and has_files(f, directory)]  # fmt: skip
        hint = f"; it holds {' or '.join(others)}: set --config.data.name" if others else ""
        raise UserError(
            f"{directory}: no {', '.join(m + '[.gz]' for m in missing)} found (expected the "
            f"original {family.title} IDX files for data.name={family.name}){hint}"
        )
    return [found[r] for r in roles]


def load_split(family: Family, images: Path, labels: Path) -> Split:
    """One images/labels pair, cross-checked, labels shifted to start at 0, images upright."""
    split = load_idx_split(images, labels, family.num_classes, family.first_label)
    if not family.transposed:
        return split
    upright = split.images.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(len(split), -1)
    return Split(np.ascontiguousarray(upright), split.labels)


def load(name: str, directory: str | Path) -> tuple[Split, Split]:
    """(train, test) of set `name` from the original files in `directory`."""
    family = get(name)
    ti, tl, si, sl = find_files(family, directory)
    return load_split(family, ti, tl), load_split(family, si, sl)


def load_test(name: str, directory: str | Path) -> Split:
    """The test split alone (evaluation reads no training file)."""
    family = get(name)
    images, labels = find_files(family, directory, (2, 3))
    return load_split(family, images, labels)


def class_names(data_config) -> tuple[str, ...]:
    """The class names of `config.data`: its `data.name` set's; for tfds those of the table's
    set named `data.tfds_name` (digits if none); digits for CSV files and the sample."""
    if data_config.source == "tfds":
        family = FAMILY.get(data_config.tfds_name)
        return family.class_names if family else DIGITS
    if data_config.source in ("csv", "sample"):
        return DIGITS
    return get(data_config.get("name", "mnist")).class_names
