"""What a run reports while it trains: metrics.jsonl rows, TensorBoard, the progress bar.

A metrics.jsonl row is {"step", "split", <every scalar of `scores.METRICS`: "log_loss",
"accuracy", "ece">, "size", "time_s", ...}:
`split` is "train" (a fixed subset of `config.eval_train_examples` training examples, `size`
of them) or "validation"; `time_s` is seconds since the command started. Only process 0
writes (`RunDir.active`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mnist_jax import config as config_lib, models, scores
from mnist_jax.rundir import METRICS as METRICS_FILE, RunDir, read_json, read_jsonl

__all__ = ["METRICS_FILE", "MetricWriter", "read_json", "read_jsonl"]  # read_* live in rundir.


def finite(x: float) -> float | None:
    """NaN and inf become None (JSON null): a result file never holds a non-number."""
    x = float(x)
    return x if math.isfinite(x) else None


class MetricWriter:
    """Appends one row per split per evaluation to metrics.jsonl and mirrors the scalars to
    TensorBoard (tensorboardX: no TensorFlow needed); at the end, the test metrics and the
    config as hyperparameters (TensorBoard's HParams view). `time_s` counts from `t0` (the
    command's start; default: now)."""

    def __init__(
        self,
        rundir: RunDir,
        tensorboard: bool = True,
        start_step: int = 0,
        t0: float | None = None,
    ):
        self.rundir = rundir
        self.t0 = time.time() if t0 is None else t0
        self._tb = None
        if rundir.active and tensorboard:
            SummaryWriter = summary_writer_class()
            # On resume, TensorBoard drops the events logged after the restored step.
            purge = start_step or None
            self._tb = SummaryWriter(str(rundir.file("tensorboard")), purge_step=purge)

    def write(self, step: int, split: str, **values: float) -> None:
        """Logs one evaluation of `split` at `step`."""
        row: dict[str, Any] = {"step": int(step), "split": split}
        row.update({k: finite(v) for k, v in values.items()})
        row["time_s"] = round(time.time() - self.t0, 3)
        self.rundir.append_metrics([row])
        if self._tb is not None:
            for k, v in values.items():
                if k != "size" and math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def final(self, config: ml_collections.ConfigDict, results: dict[str, Any]) -> None:
        """Test metrics and the config as hparams, at the end of a run."""
        if self._tb is None:
            return
        step = results["num_steps"]
        hparam_scores = {}
        for split, m in results["final"].items():
            for k in (metric.name for metric in scores.of_kind(scores.SCALAR)):
                if m.get(k) is None or not math.isfinite(m[k]):
                    continue
                self._tb.add_scalar(f"{split}/final_{k}", m[k], step)
                hparam_scores[f"hparam/{split}_{k}"] = m[k]
        flat = config_lib.flatten(config_lib.to_dict(config))
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()
        }
        # add_hparams would open a second event file; write its three summaries into ours.
        from tensorboardX.summary import hparams as hparams_summaries

        writer = self._tb._get_file_writer()
        for summary in hparams_summaries(hparams, hparam_scores):
            writer.add_summary(summary, step)
        for k, v in hparam_scores.items():
            self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch when PyTorch is not imported
    yet: tensorboardX imports torch wherever it is installed, only to accept torch tensors
    (which a run never logs), and that costs 1-2 s at import and as long again at exit.
    `import torch` fails for the length of the import (another thread importing torch at that
    moment would fail too) and works again after it."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError.
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


class _Bar:
    """tqdm's auto bar (terminal or Jupyter) with period lines written above it; without a
    terminal or notebook, period lines go to the log and no bar is drawn."""

    def __init__(self, total: int, initial: int, members: int, enabled: bool | None):
        if enabled is None:
            enabled = sys.stderr.isatty() or _in_notebook()
        from tqdm import tqdm

        if enabled and _in_notebook():
            try:  # Jupyter's widget bar when ipywidgets is there, else the text bar.
                import ipywidgets  # noqa: F401
                from tqdm.notebook import tqdm
            except ImportError:
                pass
        unit = "step" if members == 1 else f"step x{members}"
        self._tqdm = tqdm(total=total, initial=initial, unit=unit, disable=not enabled,
                          dynamic_ncols=True, leave=True)  # fmt: skip
        self.enabled = enabled

    def update(self, n: int) -> None:
        self._tqdm.update(n)

    def set_postfix_str(self, text: str) -> None:
        self._tqdm.set_postfix_str(text, refresh=False)

    def log(self, line: str) -> None:
        if self.enabled:
            self._tqdm.write(line, file=sys.stderr)
        else:
            logging.info("%s", line)

    def close(self) -> None:
        self._tqdm.close()


def progress_bar(total: int, initial: int, members: int, enabled: bool | None) -> _Bar:
    """A progress bar over a run's steps (None: on where a person is watching)."""
    return _Bar(total, initial, members, enabled)


def _in_notebook() -> bool:
    if "IPython" not in sys.modules:  # A notebook's kernel has it loaded; importing it is slow.
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return type(shell).__name__ == "ZMQInteractiveShell"


def diverged_record(step: int) -> dict[str, Any]:
    """What results.json says of a run that stopped on a non-finite loss."""
    return {"step": step, "message": f"non-finite loss at step {step}"}


def dataset_name(data_config, source: str) -> str | None:
    """The set a run read: data.name for IDX files, tfds's name, None for CSV and the sample."""
    if source in ("mnist", "idx"):
        return data_config.get("name", "mnist")
    return data_config.tfds_name if source == "tfds" else None


def summarize(config, dataset, plan, state, final, timing: Any, steps: int) -> dict[str, Any]:
    """The run summary written to results.json; `final` holds each split's evaluation sums."""
    from importlib.metadata import version

    rate = steps * config.batch_size / timing.train_s if timing.train_s else None
    return {
        "final": {name: scores.scalars(sums) for name, sums in final.items() if sums},
        **scores.details(final["test"], dataset.class_names),
        "dataset": dataset_name(config.data, dataset.source),
        "class_counts": np.bincount(dataset.test.labels, minlength=dataset.num_classes).tolist(),
        "data_source": dataset.source,
        "data_location": dataset.location,
        "data_sizes": {
            "train": len(dataset.train),
            "validation": len(dataset.validation),
            "test": len(dataset.test),
        },
        "num_classes": dataset.num_classes,
        "num_params": models.count_params(state.params),
        "num_steps": plan.num_steps,
        "timing": timing.as_dict(),
        "wall_time_s": round(timing.wall_s, 3),
        "compile_time_s": round(timing.compile_s, 3),
        "train_examples_per_sec": round(rate) if rate else None,
        "devices": [str(d) for d in jax.devices()],
        "num_processes": jax.process_count(),
        "versions": {p: version(p) for p in ("jax", "flax", "optax", "orbax-checkpoint")},
    }
