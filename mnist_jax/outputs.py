"""Writing pictures and reports safely: checked before drawing, atomic, never outside the run.

Every target is checked before any figure is drawn (its directory exists and is writable, its
format is one matplotlib writes, it is not a directory, a FIFO or a read-only file). Files are
written to a temporary file in the same directory and renamed into place, so a reader never sees
half a file and a symlink at the target is replaced, never followed. With a `root` (the run
directory), a target whose directory leads outside the root (through a symlinked `plots/`, say)
is refused (`check_inside`, the one such guard: run files use it too). A temporary file left
by a writer killed mid-write (kill -9) carries its pid and is removed by the next write of the
same file. `write_atomic` is the package's one atomic writer.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mnist_jax.errors import UserError

TEXT_SUFFIXES = (".md", ".txt", ".csv", ".json")


def figure_formats() -> list[str]:
    """The file extensions matplotlib's Agg canvas writes (png, pdf, svg, jpg, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # On use: slow to import.

    return sorted(FigureCanvasAgg.get_supported_filetypes())


def check_inside(path: str | Path, root: str | Path, what: str = "") -> None:
    """The one "stay inside the workdir" guard: refuses `path` when, its links followed, it
    leads outside `root`."""
    try:
        real, real_root = Path(path).resolve(), Path(root).resolve()
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop.
        raise UserError(f"{path}: too many levels of symbolic links") from None
    if real != real_root and real_root not in real.parents:
        raise UserError(
            f"{what + ': ' if what else ''}{path} leads outside the workdir {root} (to {real}); "
            "remove that symlink"
        )


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_target(path: str | Path, root: str | Path | None = None, text: bool = False) -> Path:
    """Returns `path` if a figure (or with `text`, a text file) can be written there, else
    raises a UserError saying why."""
    refuse_directory_name(path)
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"cannot write {path}: it is a directory")
    suffix = path.suffix.lower()
    if text or suffix != ".png":  # PNG is Agg's own format: known without importing matplotlib.
        allowed = TEXT_SUFFIXES if text else tuple("." + f for f in figure_formats())
        if suffix not in allowed:
            raise UserError(
                f"cannot write {path}: format {suffix or '(none)'!r} is not supported; "
                f"use one of {', '.join(allowed)}"
            )
    return check_file(path, root)


def refuse_directory_name(path: str | os.PathLike) -> None:
    """A file name that ends in a slash names a directory (Path() would drop the slash)."""
    if str(path).endswith(("/", os.sep)):
        raise UserError(f"cannot write {path}: a name ending in '/' is a directory; give a file")


def check_file(path: str | Path, root: str | Path | None = None) -> Path:
    """Returns `path` if a file can be replaced there atomically: not a directory, FIFO or
    other special file, not a read-only file, in a writable directory (inside `root`)."""
    refuse_directory_name(path)
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise UserError(f"cannot write {path}: it is a directory")
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UserError(f"cannot write {path}: it is not a regular file (a FIFO or device?)")
    if mode is not None and stat.S_ISREG(mode) and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {path}: it is read-only")
    _check_directory(path.parent, root, f"cannot write {path}")
    return path


def check_dir(directory: str | Path, root: str | Path | None = None) -> Path:
    """Returns `directory` if files can be created in it (or it can be made): not a file or
    a link out of `root`, writable."""
    directory = Path(directory)
    if directory.is_symlink() and not directory.exists():
        raise UserError(f"cannot write into {directory}: it is a dangling link; remove it")
    if directory.exists() and not directory.is_dir():
        raise UserError(f"cannot write into {directory}: it is not a directory")
    _check_directory(directory, root, f"cannot write into {directory}")
    return directory


def _check_directory(parent: Path, root: str | Path | None, what: str) -> None:
    if root is not None:
        check_inside(parent, root, what)
    base = _existing_ancestor(parent)
    if not base.is_dir():
        raise UserError(f"{what}: {base} is not a directory")
    if root is None and base != parent:
        raise UserError(f"{what}: directory {parent} does not exist")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {base} is not writable")


def make_dir(directory: str | Path, root: str | Path | None = None) -> Path:
    """Creates `directory` (checked like a target: inside `root`, writable)."""
    directory = Path(directory)
    check_dir(directory, root)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {directory}: {e.strerror}") from None
    return directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls `write(file)` on a temporary file beside `path`, then renames it to `path`."""
    path = Path(path)
    _remove_dead_temporaries(path)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
            delete=False,
        ) as f:  # fmt: skip
            tmp = Path(f.name)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # Replaces a symlink at `path` itself, never its target.
    except BaseException as e:  # OSError, a writer's ValueError, or a signal: no temp left.
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise UserError(f"cannot write {path}: {why}"[:300]) from None
    return path


def _remove_dead_temporaries(path: Path) -> None:
    """Removes `.<name>.<pid>.*.tmp` files beside `path` whose writer process is gone."""
    prefix = f".{path.name}."
    for tmp in glob.glob(glob.escape(str(path.parent / prefix)) + "*.tmp"):
        pid = Path(tmp).name[len(prefix) :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            Path(tmp).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # Another user's process: alive.
        return True
    return True


def write_text(path: str | Path, text: str, root: str | Path | None = None) -> Path:
    """Checks `path`, then writes `text` to it atomically (UTF-8)."""
    check_target(path, root, text=True)
    return write_atomic(path, lambda f: f.write(text.encode()))


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Writes a matplotlib Figure atomically in the format its extension names."""
    path = Path(path)
    fmt = path.suffix[1:].lower()
    return write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
