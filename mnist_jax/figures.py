"""The classic notebooks' pictures as matplotlib Figures: pure functions of in-memory data.

Nothing here reads or writes files, and no pyplot state is used (Figure objects only), so the
figures are safe under Agg, show inline in a notebook, and are freed when dropped.
`plot.py` writes them; `run_figures` is the set a run gets.
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mnist_jax.report import FIGURES  # noqa: F401  (re-exported: the names of a run's figures)

GRID = 25  # Digits shown in samples.png and mistakes.png.
_VALUES_UP_TO = 20  # Classes up to which the confusion matrix prints its values.
_SPLITS = (("train", "-"), ("validation", "--"), ("test", ":"))


def curves_figure(history: list[dict[str, Any]], title: str = "") -> Figure:
    """Log-loss (left) and accuracy (right) against step for each split in `history`."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in _SPLITS:
        pts = [(r["step"], r["log_loss"], r["accuracy"]) for r in history if r["split"] == split]
        pts = [
            tuple(np.nan if v is None else v for v in p) for p in sorted(pts, key=lambda p: p[0])
        ]
        if not pts:
            continue
        steps, loss, acc = (np.asarray(v, float) for v in zip(*pts, strict=True))
        ax_loss.plot(steps, loss, style, marker="o", ms=3, label=split)
        ax_acc.plot(steps, 100 * acc, style, marker="o", ms=3, label=split)
    ax_loss.set(xlabel="step", ylabel="log-loss", title="Log-loss vs step")
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="Accuracy vs step")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def confusion_figure(counts: np.ndarray, title: str = "", class_names=None) -> Figure:
    """Row-normalised confusion matrix: each row is one true class and sums to 1; its values
    are printed for up to _VALUES_UP_TO classes."""
    counts = np.asarray(counts, float)
    normed = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(counts)
    names = list(class_names) if class_names is not None else [str(k) for k in range(n)]
    side = 7 if n <= _VALUES_UP_TO else min(7 + 0.12 * n, 14)
    fig = Figure(figsize=(side, side - 1), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(normed, cmap="Blues", vmin=0, vmax=1)
    for i in range(n if n <= _VALUES_UP_TO else 0):
        for j in range(n):
            color = "white" if normed[i, j] > 0.5 else "black"
            ax.text(j, i, f"{normed[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    size = 8 if n <= 26 else 6
    ax.set_xticks(range(n), names, rotation=90 if max(map(len, names), default=0) > 2 else 0,
                  fontsize=size)  # fmt: skip
    ax.set_yticks(range(n), names, fontsize=size)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title or "Confusion matrix (rows normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def reliability_figure(calibration: dict[str, Any], ece: float | None, title: str = "") -> Figure:
    """The reliability diagram: a bar of each confidence bin's accuracy, a hatched gap from it
    to the bin's mean confidence (a red tick), the diagonal where a calibrated model lies, and
    below it how many examples fall in each bin."""
    bins = int(calibration["bins"])
    edges = np.linspace(0, 1, bins + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / bins
    acc = np.array([np.nan if a is None else a for a in calibration["accuracy"]], float)
    conf = np.array([np.nan if c is None else c for c in calibration["confidence"]], float)
    fig = Figure(figsize=(6, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.bar(centers, np.nan_to_num(acc), width, edgecolor="black", label="accuracy in bin")
    # The gap: hatched, unfilled, between accuracy and mean confidence (above the bar when
    # overconfident, inside it when underconfident), so the bar always shows the accuracy.
    top.bar(centers, np.nan_to_num(np.abs(conf - acc)), width,
            bottom=np.nan_to_num(np.fmin(acc, conf)), fill=False, hatch="//",
            edgecolor="red", lw=0.8, label="gap: accuracy vs mean confidence")  # fmt: skip
    top.plot(centers, conf, "r_", ms=14, mew=2, label="mean confidence in bin")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy in bin")
    top.legend(loc="upper left", fontsize=8)
    ece_text = "n/a" if ece is None else f"{ece:.4f}"
    top.set_title(title or f"Reliability diagram\nECE {ece_text} ({bins} bins)", fontsize=10)
    bottom.bar(centers, calibration["count"], width, color="grey", edgecolor="black")
    bottom.set(xlabel="confidence (top-class probability)", ylabel="examples")
    bottom.set_yscale("symlog")
    # Counts as plain numbers (1000, not 10^3): no TeX-style labels, whose parser takes a few
    # tenths of a second to build.
    bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    return fig


def first_layer_kernel(params: Any) -> np.ndarray | None:
    """The first layer's kernel: (784, units) for Dense, (h, w, 1, filters) for Conv. For a
    model of one's own, the first such kernel in the parameter tree (a layer named like ours,
    Dense_0, counts only if it takes the image); None if there is none."""
    named = [params[n] for n in ("Conv_0", "Dense_0", "Classifier") if n in params]
    for tree in (*named, params):
        kernel = next(_image_kernels(tree), None)
        if kernel is not None:
            return kernel
    return None


def _image_kernels(tree: Any):
    """Kernels that take the image itself, (784, units) or (h, w, 1, filters), in tree order."""
    for key, value in tree.items():
        if hasattr(value, "items"):
            yield from _image_kernels(value)
        elif key == "kernel" and (
            (np.shape(value)[:1] == (28 * 28,) and np.ndim(value) == 2)
            or (np.ndim(value) == 4 and np.shape(value)[2] == 1)
        ):
            yield np.asarray(value)


def _unit_images(kernel: np.ndarray, max_units: int) -> np.ndarray:
    """(units, h, w): each unit's input weights as an image, scaled to [-1, 1] by its own
    largest magnitude (colours symmetric around zero)."""
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim == 4:  # Conv (h, w, in, out): the first input channel's filters.
        tiles = np.moveaxis(kernel[:, :, 0, :max_units], -1, 0)
    else:
        side = round(np.sqrt(kernel.shape[0]))
        tiles = kernel[:, :max_units].T.reshape(-1, side, side)
    lim = np.abs(tiles).max(axis=(1, 2), keepdims=True)
    return tiles / np.where(lim > 0, lim, 1)


def _mosaic(tiles: np.ndarray, cols: int) -> np.ndarray:
    """Tiles (n, h, w) in a grid with one-pixel NaN gaps (drawn as the background)."""
    n, h, w = tiles.shape
    rows = max(int(np.ceil(n / cols)), 1)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tiles[k]
    return out


def weights_axes(ax, kernel: np.ndarray, max_units: int = 100, cols: int | None = None) -> None:
    """Draws the first layer's units as one mosaic image on `ax` (one image: fast to draw)."""
    tiles = _unit_images(kernel, max_units)
    cols = cols or int(np.ceil(np.sqrt(len(tiles))))
    ax.imshow(_mosaic(tiles, cols), cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if len(tiles) <= 10:
        h, w = tiles.shape[1:]
        for k in range(len(tiles)):
            r, c = divmod(k, cols)
            ax.text(c * (w + 1) + w / 2, r * (h + 1) - 0.7, str(k), ha="center", fontsize=8)


def first_layer_figure(kernel: np.ndarray, title: str, max_units: int = 100) -> Figure:
    """Each first-layer unit's input weights as an image (up to `max_units` of them)."""
    units = min(np.asarray(kernel).shape[-1], max_units)
    cols = int(np.ceil(np.sqrt(units)))
    rows = int(np.ceil(units / cols))
    fig = Figure(figsize=(max(1.1 * cols, 4), 1.1 * rows + 0.6), layout="constrained")
    weights_axes(fig.subplots(), kernel, max_units, cols)
    fig.suptitle(title)
    return fig


def digits_figure(images, labels, preds, probs, title: str, cols: int = 5, names=None) -> Figure:
    """A grid of images titled 'true t / pred p (prob)' (class `names`, default the class
    numbers), wrong ones in red."""
    name = (lambda k: str(k)) if names is None else (lambda k: names[k])
    n = len(images)
    rows = max(int(np.ceil(n / cols)), 1)
    fig = Figure(figsize=(2 * cols, 2.2 * rows + 0.4), layout="constrained")
    ax = fig.subplots()
    tiles = np.asarray(images, np.float32).reshape(-1, 28, 28)
    ax.imshow(_mosaic(tiles, cols) if n else np.zeros((28, 28)), cmap="gray_r", vmin=0, vmax=255)
    ax.set_axis_off()
    for k in range(n):
        r, c = divmod(k, cols)
        color = "black" if labels[k] == preds[k] else "red"
        small = len(name(labels[k])) + len(name(preds[k])) > 6
        text = f"true {name(labels[k])} / pred {name(preds[k])} ({probs[k]:.2f})"
        ax.text(c * 29 + 14, r * 29 - 0.8, text, ha="center", fontsize=6 if small else 8,
                color=color)  # fmt: skip
    fig.suptitle(title)
    return fig


def run_figures(
    history: list[dict[str, Any]],
    results: dict[str, Any],
    first_layer_kernel: np.ndarray | None,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    title: str = "",
    model_name: str = "",
) -> dict[str, Figure]:
    """Every picture of one run, keyed by file stem (see FIGURES); nothing is read or written.

    `history` is metrics.jsonl's rows, `results` results.json's content (its confusion matrix,
    calibration bins and class names; without them those two figures are left out),
    `test_probs` the model's class probabilities for `test_images`."""
    probs = np.asarray(test_probs)
    labels = np.asarray(test_labels)
    preds, conf = probs.argmax(1), probs.max(1)
    names = results.get("class_names") or [str(k) for k in range(probs.shape[1])]
    figs = {"loss": curves_figure(history, title), **_scored_figures(results, len(labels))}
    if first_layer_kernel is not None:
        what = "per class" if model_name == "linear" else "per unit"
        figs["first_layer_weights"] = first_layer_figure(
            first_layer_kernel, f"First-layer weights, {what}"
        )
    rng = np.random.default_rng(0)
    pick = rng.choice(len(labels), min(GRID, len(labels)), replace=False)
    figs["samples"] = digits_figure(test_images[pick], labels[pick], preds[pick], conf[pick],
                                    "Random test examples", names=names)  # fmt: skip
    wrong = np.flatnonzero(preds != labels)
    worst = wrong[np.argsort(-conf[wrong], kind="stable")][:GRID]
    figs["mistakes"] = digits_figure(
        test_images[worst],
        labels[worst],
        preds[worst],
        conf[worst],
        f"The {len(worst)} most confidently wrong of {len(wrong)} mistakes",
        names=names,
    )
    return figs


def _scored_figures(results: dict[str, Any], n: int) -> dict[str, Figure]:
    """The confusion matrix and reliability diagram of results' test scores (in FIGURES
    order), each where results hold its data."""
    scored = results.get("data_source", "")
    on = f"{n:,} test examples" + (f" ({scored})" if scored else "")
    figs = {}
    if "confusion_matrix" in results:
        figs["confusion_matrix"] = confusion_figure(
            results["confusion_matrix"], f"Confusion matrix, {on}, rows normalised",
            results.get("class_names"),
        )  # fmt: skip
    if "calibration" in results:
        ece = ((results.get("final") or {}).get("test") or {}).get("ece")
        bins = results["calibration"]["bins"]
        ece_text = "n/a" if ece is None else f"{ece:.4f}"
        figs["reliability"] = reliability_figure(
            results["calibration"], ece, f"Reliability diagram, {on}\nECE {ece_text} ({bins} bins)"
        )
    return figs


def close(figs: dict[str, Figure] | Figure) -> None:
    """Releases figures' memory (they are not in pyplot's registry: dropping them suffices)."""
    for fig in figs.values() if isinstance(figs, dict) else [figs]:
        fig.clear()


def wrap_label(text: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=True)) or text


def _show(v: Any) -> str:
    if isinstance(v, list):
        v = tuple(v)
    return "''" if v == "" else str(v)


def run_labels(names: list[str], configs: list[dict[str, Any]]) -> list[str]:
    """'name: field=value, ...' per run, naming the flattened config fields that differ."""
    keys = sorted({k for c in configs for k in c if len({_show(d.get(k)) for d in configs}) > 1})
    return [
        ": ".join([n, ", ".join(f"{k}={_show(c.get(k))}" for k in keys)]) if keys else n
        for n, c in zip(names, configs, strict=True)
    ]


def compare_figure(runs: list[tuple[str, list[dict[str, Any]]]], title: str = "") -> Figure:
    """Validation curves (train where a run has none) of several runs; the legend sits below
    the axes so it never covers a curve, however long the labels."""
    labels = [wrap_label(label, 110) for label, _ in runs]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    # The figure grows with the legend (8-point lines) so the axes keep their 4 inches.
    fig = Figure(figsize=(12, 4.5 + 0.17 * legend_lines), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for label, (_, history) in zip(labels, runs, strict=True):
        rows = [r for r in history if r["split"] == "validation"] or [
            r for r in history if r["split"] == "train"
        ]
        steps = [r["step"] for r in rows]
        (line,) = ax_loss.plot(steps, [r["log_loss"] for r in rows], marker="o", ms=3)
        acc = [np.nan if r["accuracy"] is None else 100 * r["accuracy"] for r in rows]
        ax_acc.plot(steps, acc, marker="o", ms=3, color=line.get_color())
        line.set_label(label)
    ax_loss.set(xlabel="step", ylabel="validation log-loss")
    ax_acc.set(xlabel="step", ylabel="validation accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, ncols=1, frameon=False)
    fig.suptitle(title or "Runs compared")
    return fig


def log_spaced(values: list[Any]) -> bool:
    """True for positive numbers spread over a decade or more, or evenly spaced in log rather
    than linearly (0.001, 0.01, 0.1; 32, 64, 128): those are read on a log axis."""
    if not values or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        return False
    v = np.unique(np.asarray(values, float))
    if len(v) < 2 or v[0] <= 0:
        return False
    if v[-1] / v[0] >= 10:
        return True
    if len(v) < 3:
        return False
    lin, log = np.diff(v), np.diff(np.log(v))
    return bool(np.std(log) / np.mean(log) < np.std(lin) / np.mean(lin))


def sweep_figure(
    rows: list[dict[str, Any]], fields: list[str], curves: dict[str, list[dict[str, Any]]]
) -> Figure:
    """Validation accuracy against each swept field, and the best members' validation curves
    (`curves`: member name -> its metrics rows)."""
    fig = Figure(figsize=(4.5 * (len(fields) + 1), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(fields) + 1))
    ok = [r for r in rows if r.get("validation_accuracy") is not None]
    for ax, field in zip(axes, fields, strict=False):
        values = [r[field] for r in ok]
        numeric = all(isinstance(v, (int, float)) for v in values)
        x = values if numeric else [_show(v) for v in values]
        ax.scatter(x, [100 * r["validation_accuracy"] for r in ok], alpha=0.7)
        if log_spaced(values):
            ax.set_xscale("log")
        ax.set(xlabel=field, ylabel="validation accuracy (%)")
        ax.grid(alpha=0.3)
    for r in ok[:3]:
        curve = [c for c in curves.get(r["member"], []) if c["split"] == "validation"]
        axes[-1].plot([c["step"] for c in curve], [c["log_loss"] for c in curve], label=r["member"])
    axes[-1].set(xlabel="step", ylabel="validation log-loss", title="Best members")
    if axes[-1].lines:
        axes[-1].legend(fontsize=7)
    axes[-1].grid(alpha=0.3)
    return fig


def weights_by_steps_figure(kernels: list[tuple[int, np.ndarray]], title: str) -> Figure:
    """One row of ten first-layer units per (num_steps, kernel): weights after 10/100/1000."""
    fig = Figure(figsize=(12, 1.4 * len(kernels) + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(kernels), 1))
    for ax, (steps, kernel) in zip(axes, kernels, strict=True):
        weights_axes(ax, kernel, max_units=10, cols=10)
        ax.set_axis_on()
        ax.set(xticks=[], yticks=[])
        ax.set_ylabel(f"{steps} steps", fontsize=9)
    fig.suptitle(title)
    return fig
