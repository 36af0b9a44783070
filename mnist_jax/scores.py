"""Every metric of an evaluation, computed from the sums `step.eval_sums` makes on device, in
one registry that every writer reads: metrics.jsonl and TensorBoard (the scalars, each period),
results.json and eval_results.json, report.md and the figures. A new metric is one row of
METRICS (plus, if it needs them, new sums in `step.eval_sums`).

- log_loss: mean softmax cross-entropy; accuracy: fraction whose top class is right.
- ece: expected calibration error. Each example's top-class probability (its confidence) falls
  in one of CALIBRATION_BINS equal-width bins of [0, 1] (the last bin includes 1);
  ECE = sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|, in [0, 1].
- per class c (test split): accuracy is the one-vs-rest accuracy (TP + TN) / n; precision is
  TP / (TP + FP), None when c is never predicted; recall is TP / (TP + FN), None when c has no
  examples (recall is what is often called a class's accuracy).
- confusion_matrix: counts[true, predicted]; calibration: the reliability diagram's bins, each
  with its example count, mean confidence and accuracy (None for an empty bin).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CALIBRATION_BINS = 15  # As in Guo et al. 2017, "On Calibration of Modern Neural Networks".
SCALAR, PER_CLASS, TABLE = "scalar", "per_class", "table"
Sums = dict[str, Any]  # step.eval_sums's output, on the host (numpy).


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: its name, kind (SCALAR: every split, every period; PER_CLASS: one value per
    class of the test split; TABLE: a structure of the test split), how it is computed from the
    sums, and how the report shows it."""

    name: str
    kind: str
    compute: Callable[[Sums], Any]
    label: str
    percent: bool = False  # Shown as a percentage (else to 4 decimals).


def count(sums: Sums) -> int:
    """Examples the sums cover."""
    return int(np.asarray(sums["confusion"]).sum())


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(a) / float(b) if b else None for a, b in zip(num, den, strict=True)]


def _mean(total: Any, sums: Sums) -> float:
    return float(total) / max(count(sums), 1)


def _ece(sums: Sums) -> float:
    gap = np.abs(np.asarray(sums["bin_correct"], np.float64) - sums["bin_confidence"])
    return float(gap.sum()) / max(count(sums), 1)


def _confusion(sums: Sums) -> np.ndarray:
    return np.asarray(sums["confusion"], np.int64)


def _one_vs_rest_accuracy(sums: Sums) -> list[float | None]:
    c = _confusion(sums)
    n, tp = c.sum(), np.diag(c)
    wrong = c.sum(0) - tp + c.sum(1) - tp  # FP + FN
    return [float(1 - w / n) if n else None for w in wrong]


def _calibration(sums: Sums) -> dict[str, Any]:
    counts = np.asarray(sums["bin_count"], np.int64)
    return {
        "bins": len(counts),
        "count": counts.tolist(),
        "confidence": _ratio(np.asarray(sums["bin_confidence"]), counts),
        "accuracy": _ratio(np.asarray(sums["bin_correct"]), counts),
    }


METRICS: tuple[Metric, ...] = (
    Metric("log_loss", SCALAR, lambda s: _mean(s["loss_sum"], s), "log-loss"),
    Metric("accuracy", SCALAR, lambda s: _mean(s["correct"], s), "accuracy", percent=True),
    Metric("ece", SCALAR, _ece, f"ECE ({CALIBRATION_BINS} bins)"),
    Metric("accuracy", PER_CLASS, _one_vs_rest_accuracy, "accuracy (1 vs rest)", percent=True),
    Metric("precision", PER_CLASS,
           lambda s: _ratio(np.diag(_confusion(s)), _confusion(s).sum(0)), "precision", True),
    Metric("recall", PER_CLASS,
           lambda s: _ratio(np.diag(_confusion(s)), _confusion(s).sum(1)), "recall", True),
    Metric("confusion_matrix", TABLE, lambda s: _confusion(s).tolist(), "confusion matrix"),
    Metric("calibration", TABLE, _calibration, "reliability"),
)  # fmt: skip


def of_kind(kind: str) -> tuple[Metric, ...]:
    return tuple(m for m in METRICS if m.kind == kind)


def scalars(sums: Sums) -> dict[str, Any]:
    """A split's scalar metrics and its `size`: a metrics.jsonl row's values, results.json's
    `final[split]`."""
    return {**{m.name: m.compute(sums) for m in of_kind(SCALAR)}, "size": count(sums)}


def details(sums: Sums, class_names: Sequence[str]) -> dict[str, Any]:
    """The test split's per-class metrics and tables, keyed as results.json has them:
    `class_names`, `per_class` ({metric: one value per class}), `confusion_matrix`,
    `calibration`."""
    out: dict[str, Any] = {"class_names": list(class_names)}
    out["per_class"] = {m.name: m.compute(sums) for m in of_kind(PER_CLASS)}
    out.update({m.name: m.compute(sums) for m in of_kind(TABLE)})
    return out


def rescored(sums: Sums, class_names: Sequence[str]) -> dict[str, Any]:
    """What a scoring of a test split adds to results: {"final": {"test": ...}, details...}."""
    return {"final": {"test": scalars(sums)}, **details(sums, class_names)}


def zero_sums(num_classes: int, bins: int = CALIBRATION_BINS) -> Sums:
    """The sums of no examples: what `step.eval_sums` starts from (numpy: its shapes)."""
    return {
        "loss_sum": np.float32(0),
        "correct": np.int32(0),
        "confusion": np.zeros((num_classes, num_classes), np.int32),
        "bin_count": np.zeros(bins, np.int32),
        "bin_confidence": np.zeros(bins, np.float32),
        "bin_correct": np.zeros(bins, np.int32),
    }
