"""A run directory's files: their names, their validated read-back and their atomic writes.

    <workdir>/config.json      the resolved config (written once the command is known to go on)
    <workdir>/run.json         what the steps were computed over: the resolved step count the
                               learning-rate schedule spans, and the data's fingerprint
    <workdir>/metrics.jsonl    one row per split per evaluation (see metrics.py)
    <workdir>/results.json     the final summary, or {"diverged": ...}
    <workdir>/eval_results.json  --mode=eval's scores
    <workdir>/checkpoints/     orbax checkpoints (checkpoint.py)
    <workdir>/plots/, report.md, tensorboard/

What is read back (config.json with the config's own validator, results.json with
`results.check`, metrics.jsonl row by row) is validated like any input, one UserError naming
the file; JSON files are replaced atomically (`outputs.write_atomic`); nothing is read or
written through a symlink that leads outside the workdir; on resume `metrics.jsonl` is trimmed
to exactly the restored step, and a malformed line in it is an error. `rundir.RunDir` adds the
checks before a command writes and the lock.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mnist_jax import config as config_lib, outputs, results as results_lib
from mnist_jax.errors import UserError
from mnist_jax.inputs import read_file

CONFIG, RESULTS, EVAL_RESULTS, METRICS = (
    "config.json",
    "results.json",
    "eval_results.json",
    "metrics.jsonl",
)
RUN = "run.json"
CHECKPOINTS, CORRUPT, TENSORBOARD, SWEEP = (
    "checkpoints",
    "corrupt_checkpoints",
    "tensorboard",
    "sweep.json",
)
MAX_JSON_BYTES = 64 << 20  # The most a run's JSON file may hold (a long run's metrics: ~1 MB).
HOLDER = ".holder"  # Who holds the lock (pid, host, since): for the refusal message.
TABLES_LOCK = ".tables.lock"  # Taken in turn by a sweep's shards to write its tables.


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x)}")


def read_json(path: str | os.PathLike, kind: type = dict) -> Any:
    """Reads a JSON file; an unreadable one, or one not holding a `kind`, is a UserError."""
    try:
        obj = json.loads(read_file(path, MAX_JSON_BYTES, gunzip=False))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable JSON ({e})") from None
    if kind is not None and not isinstance(obj, kind):
        expected = "object" if kind is dict else kind.__name__
        raise UserError(f"{path}: expected a JSON {expected}, found {type(obj).__name__}")
    return obj


def read_jsonl(path: str | os.PathLike, strict: bool = True) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl. A last line cut short by a crash (no newline) is dropped; any
    other malformed line is a UserError naming its line number (or skipped if not `strict`)."""
    path = Path(path)
    if not os.path.lexists(path):  # A broken link is named by read_file, not skipped.
        return []
    try:
        text = read_file(path, MAX_JSON_BYTES, gunzip=False).decode()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if number == len(lines):  # The unterminated last line of a killed writer.
                break
            if strict:
                raise UserError(
                    f"{path}: line {number} is malformed JSON ({e}); fix or delete that line"
                ) from None
            continue
        if not _is_metrics_row(row):
            if strict:
                raise UserError(f"{path}: line {number} is not a metrics row ({line[:80]})")
            continue
        rows.append(row)
    return rows


def _is_metrics_row(row: Any) -> bool:
    def number(x: Any) -> bool:
        return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))

    return (
        isinstance(row, dict)
        and isinstance(row.get("step"), int)
        and not isinstance(row.get("step"), bool)
        and row["step"] >= 0
        and row.get("split") in ("train", "validation", "test")
        and all(number(row.get(k)) for k in ("log_loss", "accuracy"))
    )


class RunFiles:
    """One run's files. Only process 0 writes (`active`); the others read."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir)
        self.active = jax.process_index() == 0

    def file(self, name: str) -> Path:
        """`workdir/name`, refused if a symlink makes it lead outside the workdir."""
        path = self.path / name
        outputs.check_inside(path, self.path)
        return path

    @property
    def checkpoints(self) -> Path:
        return self.file(CHECKPOINTS)

    # -- reading back ----------------------------------------------------------------------

    def saved_config(self) -> ml_collections.ConfigDict | None:
        """The config.json of an earlier command in this workdir, or None; checked with the
        validator of a config given on the command line."""
        path = self.file(CONFIG)
        if not path.exists() and not path.is_symlink():
            return None
        config = config_lib.from_dict(read_json(path), where=str(path))
        try:
            config_lib.validate(config)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        return config

    def run_record(self) -> dict[str, Any] | None:
        """run.json of the latest command that trained here (None: none, or an older run)."""
        path = self.file(RUN)
        if not path.exists():
            return None
        record = read_json(path)
        data = record.get("data", {})
        ok = isinstance(data, dict) and all(
            isinstance(data.get(k), t) for k, t in (("source", str), ("sha256", str))
        )
        ok = ok and all(type(data.get(k)) is int for k in ("train", "test"))
        steps = record.get("num_steps")
        if not ok or type(steps) is not int or steps < 0:
            raise UserError(f"{path}: not a run record (num_steps and data's source, train, test "
                            "and sha256); fix it, or delete it to resume unchecked")  # fmt: skip
        return record

    def results(self, name: str = RESULTS) -> dict[str, Any] | None:
        """results.json (checked: `results.check`), or None when there is none."""
        path = self.file(name)
        if not path.exists() and not path.is_symlink():
            return None
        return results_lib.check(read_json(path), str(path))

    def finished(self) -> dict[str, Any] | None:
        """results.json of a run that finished (has final metrics), else None."""
        results = self.results()
        final = (results or {}).get("final")
        return results if isinstance(final, dict) and isinstance(final.get("test"), dict) else None

    def metrics(self, strict: bool = True) -> list[dict[str, Any]]:
        """metrics.jsonl's rows (`read_jsonl`)."""
        return read_jsonl(self.file(METRICS), strict)

    # -- writing -------------------------------------------------------------------------------

    def write_text(self, name: str, text: str) -> None:
        """Replaces `name` atomically (`outputs.write_atomic`: a reader never sees half a file,
        a failed write leaves the old one, and a symlink is replaced, never followed)."""
        if self.active:
            outputs.write_atomic(self.file(name), lambda f: f.write(text.encode()))

    def write_json(self, name: str, obj: Any) -> None:
        """Writes JSON atomically; NaN and inf are refused, never written."""
        text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False)
        self.write_text(name, text + "\n")

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        self.write_json(CONFIG, config_lib.to_dict(config))

    def write_run_record(self, record: dict[str, Any]) -> None:
        self.write_json(RUN, record)

    def update_results(self, update: dict[str, Any]) -> None:
        self.write_json(RESULTS, {**(self.results() or {}), **update})

    def set_aside_checkpoints(self, steps: list[int]) -> None:
        """Moves checkpoints that failed to restore to corrupt_checkpoints/ (kept for a look,
        out of the way of the steps that will be saved again)."""
        if not self.active or not steps:
            return
        aside = self.file(CORRUPT)
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self.checkpoints / str(step), target)  # A move of a directory.
            logging.warning("moved the corrupt checkpoint %d to %s", step, target)

    def trim_metrics(self, step: int) -> None:
        """Drops metric rows logged after `step` (0: no checkpoint), so that a resumed run's
        dump reads as if it had never stopped."""
        path = self.file(METRICS)
        if not self.active or not path.exists():
            return
        rows = [r for r in read_jsonl(path) if r["step"] <= step]
        self.write_text(METRICS, "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Appends rows to metrics.jsonl (O_NOFOLLOW: never through a symlink)."""
        if not self.active or not rows:
            return
        path = self.file(METRICS)
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "a") as f:
                f.write(text)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None
