"""What a run writes about itself: metrics.jsonl, TensorBoard scalars, JSON summaries.

Only process 0 writes (`jax.process_index() == 0`); other processes get a writer that does
nothing, so that callers need no `if` of their own.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mnist_jax.errors import UserError

METRICS_FILE = "metrics.jsonl"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replaces a file's text atomically (temp file + rename): a reader never sees half a
    file, and a failed write (full disk) leaves the previous version in place."""
    path = Path(path)
    f = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)
    except OSError as e:
        if f is not None:
            Path(f.name).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically; NaN and inf are refused, never written."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    write_text_atomic(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file; an unreadable one is a UserError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable JSON ({e})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl, skipping a last line cut short by a crash."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x)}")


def finite(x: float) -> float | None:
    """NaN and inf become None (JSON null): a result file never holds a non-number."""
    x = float(x)
    return x if math.isfinite(x) else None


class MetricWriter:
    """Appends one JSON object per evaluation to metrics.jsonl and mirrors scalars to
    TensorBoard (tensorboardX: no TensorFlow needed)."""

    def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = Path(workdir) / METRICS_FILE
        self._tb = None
        if self.active and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after `step` (by a run that died before its next checkpoint), so
        that a resumed run's dump reads as if it had never stopped."""
        if not self.active or not self.path.exists():
            return
        rows = [r for r in read_jsonl(self.path) if r["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, step: int, split: str, **values: float) -> None:
        """Logs one evaluation of `split` at `step`."""
        if not self.active:
            return
        row = {"step": int(step), "split": split}
        row.update({k: finite(v) for k, v in values.items()})
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None
        if self._tb is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
