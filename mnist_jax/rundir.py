"""The run directory: the one module through which a run's files are read and written.

Its files, their read-back and their writes are `runfiles.RunFiles`; `RunDir` adds what a
command checks before it writes and the lock. Guarantees: one process at a time per workdir
(an flock on the directory itself, released by the kernel when the holder dies, so a killed
run's lock is taken over safely; a sweep's shards share their sweep directory's lock and each
locks the members it trains); every path a command will write is checked (`check_outputs`)
before any is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ml_collections

from mnist_jax import config as config_lib, outputs
from mnist_jax.errors import UserError
from mnist_jax.inputs import kind_name
from mnist_jax.runfiles import (  # Re-exported: rundir.CONFIG and friends are the public names.
    CHECKPOINTS as CHECKPOINTS,
    CONFIG as CONFIG,
    CORRUPT as CORRUPT,
    EVAL_RESULTS as EVAL_RESULTS,
    HOLDER as HOLDER,
    MAX_JSON_BYTES as MAX_JSON_BYTES,
    METRICS as METRICS,
    RESULTS as RESULTS,
    RUN as RUN,
    SWEEP as SWEEP,
    TABLES_LOCK as TABLES_LOCK,
    TENSORBOARD as TENSORBOARD,
    RunFiles,
    read_json as read_json,
    read_jsonl as read_jsonl,
)

SWEEP_MARK = ".sweep"  # Written by a sweep before its first member: an interrupted sweep's mark.


class WorkdirLock:
    """The flock on a workdir and its holder file (who holds it, for a refusal message)."""

    def __init__(self, path: Path, active: bool):
        self.path, self.active = path, active
        self._fd: int | None = None
        self._claimed = False
        self._created: list[Path] = []  # Directories `lock` made (deepest first).

    def acquire(self, shared: bool = False) -> None:
        """Creates the workdir and takes its lock (see `RunDir.lock`)."""
        if not self.active or self._fd is not None:
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
        self._fd = fd

    def holder(self) -> str:
        """Who holds the lock, as its holder file says: 'pid P (host, since T)'."""
        holder = self.path / HOLDER
        try:
            text = holder.read_text()[:200].strip() if holder.is_file() else ""
        except (OSError, UnicodeDecodeError):
            text = ""
        return text if text.startswith("pid ") else "another process"

    def claim(self, write_text: Callable[[str, str], None]) -> None:
        """Writes the holder file with `write_text(name, text)`."""
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        write_text(HOLDER, f"pid {os.getpid()} ({socket.gethostname()}, since {since})\n")
        self._claimed = self.active

    def release(self) -> None:
        if self._fd is None:
            return
        if self._claimed and (self.path / HOLDER).is_file():  # Only ours: a refused command
            (self.path / HOLDER).unlink()  # leaves a killed holder's stale file alone.
        elif not self._claimed:  # Refused: a directory made for it goes again.
            self._remove_created()
        self._claimed = False
        os.close(self._fd)  # Closing the descriptor releases the flock.
        self._fd = None

    def _remove_created(self) -> None:
        """Removes the directories `acquire` made, if still empty and no other process holds
        this one (a sweep's shards share it): a refused command leaves no trace."""
        created, self._created = self._created, []
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return
        for path in created:
            with contextlib.suppress(OSError):  # Not empty (or gone): it stays.
                path.rmdir()


@contextlib.contextmanager
def _serialized(path: Path, active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise UserError(f"cannot lock {path}: {e.strerror}; remove it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class RunDir(RunFiles):
    """One run's directory: its files (`RunFiles`), the checks before writing, the lock."""

    def __init__(self, workdir: str | os.PathLike):
        super().__init__(workdir)
        self._lock = WorkdirLock(self.path, self.active)

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
        its figures (`report.check_run_outputs`)."""
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

    # -- the lock ------------------------------------------------------------------------------

    def lock(self, shared: bool = False) -> None:
        """Creates the workdir and takes its exclusive lock; a second process is refused.
        `shared` (a sweep's own directory): other shared holders may hold it too (the shards
        of one sweep), an exclusive one may not (a run, an eval), nor the reverse. The
        directories it creates go again at `unlock` if the command never went on (`claim`)."""
        self._lock.acquire(shared)

    def holder(self) -> str:
        return self._lock.holder()

    def claim(self) -> None:
        """Says who holds the lock, once the command is known to go on."""
        self._lock.claim(self.write_text)

    def unlock(self) -> None:
        self._lock.release()

    def serialized(self, name: str = TABLES_LOCK) -> contextlib.AbstractContextManager[None]:
        """Waits for, then holds, the exclusive lock of `workdir/name` (created): the holders
        of a shared lock take turns in what they read and rewrite together."""
        return _serialized(self.file(name), self.active)

    def __enter__(self) -> RunDir:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()


def _listed(names: list[str], what: str = "members", most: int = 4) -> str:
    if not names:
        return f"no {what} yet"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    shown = ", ".join(names[:most]) + more
    return f"{what} {shown}"


def is_sweep_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a sweep's directory, finished (sweep.json) or not (`SWEEP_MARK`)."""
    return any(os.path.lexists(Path(path) / name) for name in (SWEEP, SWEEP_MARK))
