"""Writing pictures and reports safely: checked before drawing, atomic, never outside the run.

Every target is checked before any figure is drawn (its directory exists and is writable, its
format is one matplotlib writes, it is not a directory). Files are written to a temporary file
in the same directory and renamed into place, so a reader never sees half a file and a symlink
at the target is replaced, never followed. With a `root` (the run directory), a target whose
directory leads outside the root (through a symlinked `plots/`, say) is refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mnist_jax.errors import UserError

TEXT_SUFFIXES = (".md", ".txt", ".csv", ".json")


def figure_formats() -> list[str]:
    """The file extensions matplotlib's Agg canvas writes (png, pdf, svg, jpg, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return sorted(FigureCanvasAgg.get_supported_filetypes())


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_target(path: str | Path, root: str | Path | None = None, text: bool = False) -> Path:
    """Returns `path` if a figure (or with `text`, a text file) can be written there, else
    raises a UserError saying why."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"cannot write {path}: it is a directory")
    suffix = path.suffix.lower()
    allowed = TEXT_SUFFIXES if text else tuple("." + f for f in figure_formats())
    if suffix not in allowed:
        raise UserError(
            f"cannot write {path}: format {suffix or '(none)'!r} is not supported; "
            f"use one of {', '.join(allowed)}"
        )
    parent = path.parent
    if root is not None:
        real_root = Path(root).resolve()
        real = parent.resolve()
        if not _inside(real, real_root):
            raise UserError(
                f"cannot write {path}: {parent} leads outside {root} (to {real}); "
                "remove that symlink"
            )
    base = _existing_ancestor(parent)
    if not base.is_dir():
        raise UserError(f"cannot write {path}: {base} is not a directory")
    if root is None and base != parent:
        raise UserError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {base} is not writable")
    return path


def make_dir(directory: str | Path, root: str | Path | None = None) -> Path:
    """Creates `directory` (checked like a target: inside `root`, writable)."""
    directory = Path(directory)
    check_target(directory / "x.png", root)
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
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as f:
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


def write_text(path: str | Path, text: str, root: str | Path | None = None) -> Path:
    """Checks `path`, then writes `text` to it atomically (UTF-8)."""
    check_target(path, root, text=True)
    return write_atomic(path, lambda f: f.write(text.encode()))


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Writes a matplotlib Figure atomically in the format its extension names."""
    path = Path(path)
    fmt = path.suffix[1:].lower()
    return write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
