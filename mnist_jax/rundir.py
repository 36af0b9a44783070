"""The run directory: the one module that reads and writes a run's files.

    <workdir>/config.json      the resolved config (written once the command is known to go on)
    <workdir>/run.json         what the steps were computed over: the resolved step count the
                               learning-rate schedule spans, and the data's fingerprint
    <workdir>/metrics.jsonl    one row per split per evaluation (see metrics.py)
    <workdir>/results.json     the final summary, or {"diverged": ...}
    <workdir>/eval_results.json  --mode=eval's scores
    <workdir>/checkpoints/     orbax checkpoints (checkpoint.py)
    <workdir>/plots/, report.md, tensorboard/

Guarantees: one process at a time per workdir (an flock on the directory itself, released by
the kernel when the holder dies, so a killed run's lock is taken over safely; a sweep's
shards share their sweep directory's lock and each locks the members it trains); every path a
command will write is checked (`check_outputs`) before any is written; what is read back
(config.json with the config's own validator, results.json with `results.check`, metrics.jsonl
row by row) is validated like any input, one UserError naming the file; JSON files are replaced
atomically; nothing is written through a symlink that leads outside the workdir; on resume
`metrics.jsonl` is trimmed to exactly the restored step, and a malformed line in it is an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mnist_jax import config as config_lib, outputs, results as results_lib
from mnist_jax.errors import UserError
from mnist_jax.inputs import kind_name, read_file

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
SWEEP_MARK = ".sweep"  # Written by a sweep before its first member: an interrupted sweep's mark.


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


class RunDir:
    """One run's directory. Only process 0 writes (`active`); the others read."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir)
        self.active = jax.process_index() == 0
        self._lock_fd: int | None = None
        self._claimed = False
        self._created: list[Path] = []  # Directories `lock` made (deepest first).

    # -- paths -----------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """`workdir/name`, refused if a symlink makes it lead outside the workdir."""
        path = self.path / name
        root = self.path.resolve()
        target = path.resolve()
        if target != root and root not in target.parents:
            raise UserError(f"{path} is a link to {target}, outside the workdir; remove it")
        return path

    @property
    def checkpoints(self) -> Path:
        return self.file(CHECKPOINTS)

    # -- checks before anything is written ----------------------------------------------------

    def check_writable(self) -> None:
        """Refuses a workdir that cannot be created or written, without creating anything."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise UserError(f"workdir {p} is {kind_name(p.stat().st_mode)}, not a directory")
        existing = next((q for q in [p, *p.parents] if q.exists()), None)
        if existing is None or not existing.is_dir():
            raise UserError(f"workdir {p} cannot be created: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"workdir {p} is not writable ({existing}: permission denied)")
        ckpt = p / CHECKPOINTS
        if ckpt.exists() and not ckpt.is_dir():
            raise UserError(f"{ckpt} is not a directory; move it away to keep checkpoints there")
        for name in (CONFIG, RESULTS, METRICS, EVAL_RESULTS, RUN):
            if (p / name).exists() or (p / name).is_symlink():
                self.file(name)

    def check_outputs(
        self,
        config: ml_collections.ConfigDict | None = None,
        files: tuple[str, ...] = (),
        dirs: tuple[str, ...] = (),
    ) -> None:
        """Refuses, before anything is written, any path a command will write that cannot be:
        a directory or FIFO where a file goes, a file where a directory goes, a link out of
        the workdir, a read-only file or directory. With `config`: every path a run writes but
        its figures (`plot.check_run_outputs`)."""
        if config is not None:
            files += (CONFIG, RUN, RESULTS, METRICS, HOLDER)
            dirs += (CHECKPOINTS, CORRUPT) + ((TENSORBOARD,) if config.tensorboard else ())
        self.check_writable()
        for name in files:
            outputs.check_file(self.file(name), self.path)
            if self.file(name).is_symlink() and name == METRICS:
                raise UserError(f"{self.path / name} is a link: rows are appended to a file, "
                                "never through a link; remove it")  # fmt: skip
        for name in dirs:
            outputs.check_dir(self.file(name), self.path)

    def check_kind(self, kind: str) -> None:
        """A single run's directory is not a sweep's (finished or interrupted), nor a member's
        of a sweep (`kind` "member" is the sweep's own check), nor a directory that holds runs;
        a sweep's is not a run's (their files would mix)."""
        members = self.sweep_members()
        if kind in ("run", "member") and members is not None:
            raise UserError(f"{self.path} holds a sweep ({_listed(members)}); train a single "
                            "run in another --workdir")  # fmt: skip
        if kind == "run" and is_sweep_dir(self.path.parent):
            raise UserError(
                f"{self.path} is a member of the sweep {self.path.parent}; rerun the "
                "sweep's command to train it, or train a single run in another --workdir"
            )
        runs = self.runs_held() if kind == "run" else []
        if runs:
            raise UserError(f"{self.path} holds runs in subdirectories ({_listed(runs, 'runs')})"
                            "; train a single run in another --workdir")  # fmt: skip
        if kind == "sweep" and (self.path / CONFIG).exists():
            raise UserError(f"{self.path} holds a single run; sweep into another --workdir")

    def sweep_members(self) -> list[str] | None:
        """The member directories of a sweep held here, or None if this is no sweep's
        directory: a sweep writes `SWEEP_MARK` before its first member, so an interrupted
        sweep is one too, and a plain directory of runs is not."""
        return self.runs_held() if is_sweep_dir(self.path) else None

    def runs_held(self) -> list[str]:
        """The subdirectories that hold a run (a config.json)."""
        if not self.path.is_dir() or (self.path / CONFIG).exists():
            return []
        try:
            return sorted(p.name for p in self.path.iterdir() if (p / CONFIG).is_file())
        except OSError as e:
            raise UserError(f"workdir {self.path} cannot be read: {e.strerror}") from None

    def describe(self) -> str:
        """What the directory holds, for a message: why there is nothing to read."""
        members = self.sweep_members()
        if members is not None:
            first = self.path / members[0] if members else self.path / "MEMBER"
            return (f"{self.path} is a sweep directory ({_listed(members)}); "
                    f"pass one member's directory, e.g. --workdir={first}")  # fmt: skip
        runs = self.runs_held()
        if runs:
            return (f"{self.path} is a directory of runs ({_listed(runs, 'runs')}), not a run: "
                    f"pass one run's directory, e.g. --workdir={self.path / runs[0]}")  # fmt: skip
        if not (self.path / CONFIG).exists():
            return f"{self.path} holds no config.json: not a mnist-jax run directory"
        diverged = (self.results() or {}).get("diverged")
        if diverged:
            return (f"{self.path} is a run that diverged at step {diverged['step']} (see its "
                    "results.json); lower the learning rate and train again")  # fmt: skip
        return ""

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

    def check_config(self, config: ml_collections.ConfigDict, allow_change: bool) -> list[str]:
        """Refuses to continue a run of a different config (naming the fields), unless
        `allow_change`; returns the fields that differ."""
        old = self.saved_config()
        if old is None:
            return []
        fields = config_lib.differing_fields(config_lib.to_dict(old), config_lib.to_dict(config))
        changed = [f for f in fields if f not in config_lib.RESUMABLE_FIELDS]
        if changed and not allow_change:
            raise UserError(
                f"{self.path} holds a run of a different config ({', '.join(changed)} differ); "
                "use a new --workdir, or pass --allow_config_change to resume it anyway"
            )
        return changed

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

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(METRICS))

    # -- the lock ------------------------------------------------------------------------------

    def lock(self, shared: bool = False) -> None:
        """Creates the workdir and takes its exclusive lock; a second process is refused.
        `shared` (a sweep's own directory): other shared holders may hold it too (the shards
        of one sweep), an exclusive one may not (a run, an eval), nor the reverse. The
        directories it creates go again at `unlock` if the command never went on (`claim`)."""
        if not self.active or self._lock_fd is not None:
            return
        missing = [p for p in (self.path, *self.path.parents) if not os.path.lexists(p)]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._created = missing
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise UserError(f"workdir {self.path} cannot be created: {e.strerror}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(
                f"workdir {self.path} is in use by {self.holder()}; wait for it or use "
                "another --workdir"
            ) from None
        self._lock_fd = fd

    def holder(self) -> str:
        """Who holds the lock, as its holder file says: 'pid P (host, since T)'."""
        holder = self.path / HOLDER
        try:
            text = holder.read_text()[:200].strip() if holder.is_file() else ""
        except (OSError, UnicodeDecodeError):
            text = ""
        return text if text.startswith("pid ") else "another process"

    def claim(self) -> None:
        """Says who holds the lock, once the command is known to go on."""
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        self.write_text(HOLDER, f"pid {os.getpid()} ({socket.gethostname()}, since {since})\n")
        self._claimed = self.active

    def unlock(self) -> None:
        if self._lock_fd is None:
            return
        if self._claimed and (self.path / HOLDER).is_file():  # Only ours: a refused command
            (self.path / HOLDER).unlink()  # leaves a killed holder's stale file alone.
        elif not self._claimed:  # Refused: a directory made for it goes again.
            self._remove_created()
        self._claimed = False
        os.close(self._lock_fd)  # Closing the descriptor releases the flock.
        self._lock_fd = None

    def _remove_created(self) -> None:
        """Removes the directories `lock` made, if still empty and no other process holds
        this one (a sweep's shards share it): a refused command leaves no trace."""
        created, self._created = self._created, []
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        for path in created:
            with contextlib.suppress(OSError):  # Not empty (or gone): it stays.
                path.rmdir()

    @contextlib.contextmanager
    def serialized(self, name: str = TABLES_LOCK) -> Iterator[None]:
        """Waits for, then holds, the exclusive lock of `workdir/name` (created): the holders
        of a shared lock take turns in what they read and rewrite together."""
        if not self.active:
            yield
            return
        path = self.file(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock {path}: {e.strerror}; remove it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def __enter__(self) -> RunDir:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    # -- writing -------------------------------------------------------------------------------

    def write_text(self, name: str, text: str) -> None:
        """Replaces `name` atomically (temp file + rename: a reader never sees half a file, a
        failed write leaves the old one, and a symlink is replaced, never followed)."""
        if not self.active:
            return
        path = self.file(name)
        write_text_atomic(path, text)

    def write_json(self, name: str, obj: Any) -> None:
        """Writes JSON atomically; NaN and inf are refused, never written."""
        text = json.dumps(obj, indent=2, default=_json_default, allow_nan=False)
        self.write_text(name, text + "\n")

    def set_aside_checkpoints(self, steps: list[int]) -> None:
        """Moves checkpoints that failed to restore to corrupt_checkpoints/ (kept for a look,
        out of the way of the steps that will be saved again)."""
        if not self.active or not steps:
            return
        aside = self.file("corrupt_checkpoints")
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self.checkpoints / str(step), target)
            logging.warning("moved the corrupt checkpoint %d to %s", step, target)

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        self.write_json(CONFIG, config_lib.to_dict(config))

    def write_run_record(self, record: dict[str, Any]) -> None:
        self.write_json(RUN, record)

    def update_results(self, update: dict[str, Any]) -> None:
        self.write_json(RESULTS, {**(self.results() or {}), **update})

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


def _listed(names: list[str], what: str = "members", most: int = 4) -> str:
    if not names:
        return f"no {what} yet"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    shown = ", ".join(names[:most]) + more
    return f"{what} {shown}"


def is_sweep_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a sweep's directory, finished (sweep.json) or not (`SWEEP_MARK`)."""
    return any(os.path.lexists(Path(path) / name) for name in (SWEEP, SWEEP_MARK))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replaces a file's text atomically, with the umask's mode; a failure is a UserError."""
    outputs.write_atomic(path, lambda f: f.write(text.encode()))
