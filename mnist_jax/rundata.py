"""A reader of a finished run (eval, plot, `Run.test_split`) scores the run's own data, or says
that it is not there.

- The data set (`data.name`) is the run's own: a model's class i is its data set's class i, so
  scoring another set of the same size would relabel the classes. It is refused, even asked.
- Without data fields given, the data found must be the data the run trained on: run.json's
  fingerprint (sizes and a SHA-256 of every pixel and label) is checked when the run has one.
- A relative data path comes from a run written before paths were recorded absolute: it is
  read against the current directory only when run.json's fingerprint confirms it; without a
  fingerprint it is refused, naming the field (give the data's absolute path).
Data named explicitly (`--config.data.dir=...`, any of `WHERE_FIELDS`) is scored unchecked.
"""

from __future__ import annotations

import os
from typing import Any

from mnist_jax import data as data_lib
from mnist_jax.errors import UserError
from mnist_jax.rundir import RunDir

PATH_FIELDS = ("dir", "train_file", "test_file")
WHERE_FIELDS = (*PATH_FIELDS, "source", "tfds_name")  # Given: other data, asked for by name.


def check_own_data(rundir: RunDir, data_config: Any, saved: Any, given: dict[str, Any]) -> None:
    """Refuses, in one line, data that is not the run's own (see the module's docstring).
    `data_config` is what the reader will load, `saved` the run's config.data, `given` the
    data fields the user gave."""
    name, own = given.get("name", saved.get("name", "mnist")), saved.get("name", "mnist")
    if name != own:
        raise UserError(
            f"data.name={name}: {rundir.path} was trained on {own}, and its class i is {own}'s "
            f"class i; scoring {name} would relabel the classes. Train a run on {name} instead"
        )
    if any(field in given for field in WHERE_FIELDS):
        return  # Other data, asked for by name.
    record = rundir.run_record()
    relative = [f for f in PATH_FIELDS if data_config.get(f) and not _absolute(data_config[f])]
    if record is None:
        if relative:
            field = relative[0]
            raise UserError(
                f"{rundir.path}: config.json's data.{field}={data_config[field]!r} is relative "
                "(a run from before data paths were recorded absolute) and the run has no "
                f"run.json fingerprint to confirm which data it means; give --config.data."
                f"{field}=ABSOLUTE_PATH to score that data"
            )
        return
    where = f" (data.{', '.join(relative)} relative, read from {os.getcwd()})" if relative else ""
    try:
        train, test, source, location = data_lib.load_train_test(data_config)
    except UserError as e:
        raise UserError(f"{e}{where}") from None
    found = data_lib.fingerprint(train, test, source)
    if _key(found) != _key(record["data"]):
        raise UserError(
            f"the data at {location}{where} is not the data {rundir.path} trained on (run.json: "
            f"{_describe(record['data'])}; found {_describe(found)}); restore the run's data, "
            "or give --config.data.dir (or the data fields) to score other data"
        )


def _absolute(path: Any) -> bool:
    return os.path.isabs(os.path.expanduser(str(path)))


def _key(d: dict[str, Any]) -> tuple:
    return tuple(d.get(k) for k in ("train", "test", "sha256"))


def _describe(d: dict[str, Any]) -> str:
    return f"{d.get('train')} train and {d.get('test')} test, sha256 {str(d.get('sha256'))[:12]}"
