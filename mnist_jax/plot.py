"""The classic notebooks' pictures, from any run directory, without a display.

python -m mnist_jax.plot --workdir=runs/dnn                 # PNGs into runs/dnn/plots/ + report.md
python -m mnist_jax.plot --compare runs/a runs/b --out=cmp.png   # overlay several runs' curves
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.

import jax
import matplotlib.pyplot as plt
import numpy as np
from absl import flags

from mnist_jax import (
    cli,
    config as config_lib,
    data as data_lib,
    evaluate,
    metrics,
)
from mnist_jax.errors import UserError

PLOTS_DIR = "plots"
GRID = 25  # Digits shown in samples.png and mistakes.png.


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Train and validation log-loss (left) and accuracy (right) against step."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-"), ("validation", "--")):
        pts = [(r["step"], r["log_loss"], r["accuracy"]) for r in rows if r["split"] == split]
        if not pts:
            continue
        steps, loss, acc = zip(*pts, strict=True)
        ax_loss.plot(steps, loss, style, marker="o", ms=3, label=split)
        ax_acc.plot(steps, 100 * np.asarray(acc, float), style, marker="o", ms=3, label=split)
    ax_loss.set(xlabel="step", ylabel="log-loss", title="Log-loss vs step")
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="Accuracy vs step")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, path: Path) -> Path:
    """Row-normalised confusion matrix: each row is one true digit and sums to 1."""
    confusion = np.asarray(confusion, float)
    normed = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    n = len(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(normed, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            color = "white" if normed[i, j] > 0.5 else "black"
            ax.text(j, i, f"{normed[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xlabel="predicted label",
        ylabel="true label",
        title="Confusion matrix (rows normalised)",
    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def first_layer_kernel(params: Any) -> np.ndarray:
    """The first Dense layer's kernel, (784, hidden units) or (784, classes) for linear."""
    return np.asarray(params[sorted(params)[0]]["kernel"])


def _show_weights(ax, column: np.ndarray) -> None:
    """One unit's 784 input weights as a 28x28 image, symmetric colours around zero."""
    w = column.reshape(28, 28)
    lim = np.abs(w).max() or 1.0
    ax.imshow(w, cmap="coolwarm", vmin=-lim, vmax=lim)


def plot_first_layer(kernel: np.ndarray, path: Path, title: str, max_units: int = 100) -> Path:
    """Each column of the first layer's kernel (784, units) as a 28x28 image."""
    kernel = np.asarray(kernel)[:, :max_units]
    units = kernel.shape[1]
    cols = int(np.ceil(np.sqrt(units)))
    rows = int(np.ceil(units / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < units:
            _show_weights(ax, kernel[:, k])
            if units <= 10:
                ax.set_title(str(k), fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_digits(images, labels, preds, probs, path: Path, title: str) -> Path:
    """A grid of digits titled 'true t / pred p (prob)', wrong ones in red."""
    n = len(images)
    cols = 5
    rows = max(int(np.ceil(n / cols)), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k].reshape(28, 28), cmap="gray_r")
            color = "black" if labels[k] == preds[k] else "red"
            ax.set_title(
                f"true {labels[k]} / pred {preds[k]} ({probs[k]:.2f})", fontsize=8, color=color
            )
    fig.suptitle(title)
    return _save(fig, path)


def plot_workdir(workdir: str | Path) -> list[Path]:
    """Writes every picture of one run into <workdir>/plots/, then report.md."""
    workdir = Path(workdir)
    rows = metrics.read_jsonl(workdir / metrics.METRICS_FILE)
    if not rows:
        raise UserError(f"{workdir} has no metrics.jsonl rows: train first")
    results = metrics.read_json(workdir / "results.json")
    if "final" not in results:
        raise UserError(f"{workdir}/results.json has no final metrics (run unfinished?)")
    model, params, config = evaluate.restore_model(workdir)
    out = workdir / PLOTS_DIR
    out.mkdir(exist_ok=True)
    written = [
        plot_curves(rows, out / "loss.png", title=workdir.name),
        plot_confusion(np.asarray(results["confusion_matrix"]), out / "confusion_matrix.png"),
    ]
    first = first_layer_kernel(params)
    what = "per class" if config.model.name == "linear" else "per hidden unit"
    written.append(
        plot_first_layer(first, out / "first_layer_weights.png", f"First-layer weights, {what}")
    )
    used = data_lib.data_config_used(
        config.data, results["data_source"], results.get("data_location", "")
    )
    _, test, _, _ = data_lib.load_train_test(used)
    probs = evaluate.predict_probs(model, params, test.images)
    preds = probs.argmax(1)
    conf = probs.max(1)
    pick = np.asarray(jax.random.choice(jax.random.PRNGKey(0), len(test), (GRID,), replace=False))
    written.append(
        plot_digits(
            test.images[pick],
            test.labels[pick],
            preds[pick],
            conf[pick],
            out / "samples.png",
            "Random test digits",
        )
    )
    wrong = np.flatnonzero(preds != test.labels)
    worst = wrong[np.argsort(-conf[wrong])][:GRID]
    written.append(
        plot_digits(
            test.images[worst],
            test.labels[worst],
            preds[worst],
            conf[worst],
            out / "mistakes.png",
            f"The {len(worst)} most confidently wrong of {len(wrong)} mistakes",
        )
    )
    from mnist_jax import report

    written.append(report.write_report(workdir, config, results))
    return written


def compare(workdirs: list[str | Path], out: str | Path) -> Path:
    """Overlays the validation curves of several runs, labelled by their differing fields."""
    workdirs = [Path(w) for w in workdirs]
    configs = [config_lib.flatten(metrics.read_json(w / "config.json")) for w in workdirs]
    keys = sorted({k for c in configs for k in c if len({str(d.get(k)) for d in configs}) > 1})
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for w, c in zip(workdirs, configs, strict=True):
        rows = [
            r for r in metrics.read_jsonl(w / metrics.METRICS_FILE) if r["split"] == "validation"
        ]
        if not rows:
            rows = [
                r for r in metrics.read_jsonl(w / metrics.METRICS_FILE) if r["split"] == "train"
            ]
        label = ", ".join(f"{k}={c.get(k)}" for k in keys) or w.name
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["log_loss"] for r in rows], marker="o", ms=3, label=label)
        ax_acc.plot(steps, [100 * r["accuracy"] for r in rows], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="step", ylabel="validation log-loss")
    ax_acc.set(xlabel="step", ylabel="validation accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Runs compared")
    return _save(fig, Path(out))


def plot_sweep(rows: list[dict[str, Any]], workdir: Path, fields: list[str]) -> list[Path]:
    """sweep.png: validation accuracy against each swept field, and the best members' curves;
    first_layer_by_steps.png when num_steps was swept (weights after 10, 100, 1000 steps)."""
    fig, axes = plt.subplots(1, len(fields) + 1, figsize=(4.5 * (len(fields) + 1), 4))
    axes = np.atleast_1d(axes)
    ok = [r for r in rows if r["validation_accuracy"] is not None]
    for ax, field in zip(axes, fields, strict=False):
        values = [r[field] for r in ok]
        numeric = all(isinstance(v, (int, float)) for v in values)
        x = values if numeric else [str(v) for v in values]
        ax.scatter(x, [100 * r["validation_accuracy"] for r in ok], alpha=0.7)
        if numeric and min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_xscale("log")
        ax.set(xlabel=field, ylabel="validation accuracy (%)")
        ax.grid(alpha=0.3)
    for r in ok[:3]:
        curve = [
            row
            for row in metrics.read_jsonl(workdir / r["member"] / metrics.METRICS_FILE)
            if row["split"] == "validation"
        ]
        axes[-1].plot([c["step"] for c in curve], [c["log_loss"] for c in curve], label=r["member"])
    axes[-1].set(xlabel="step", ylabel="validation log-loss", title="Best members")
    axes[-1].legend(fontsize=7)
    axes[-1].grid(alpha=0.3)
    fig.tight_layout()
    written = [_save(fig, workdir / "sweep.png")]
    if "num_steps" in fields and ok:
        best = ok[0]
        same = [r for r in ok if all(r[f] == best[f] for f in fields if f != "num_steps")]
        same.sort(key=lambda r: r["num_steps"])
        fig, axes = plt.subplots(len(same), 10, figsize=(12, 1.4 * len(same)), squeeze=False)
        for row_axes, r in zip(axes, same, strict=True):
            _, params, _ = evaluate.restore_model(workdir / r["member"])
            kernel = first_layer_kernel(params)
            for k, ax in enumerate(row_axes):
                _show_weights(ax, kernel[:, k])
                ax.set_xticks([])
                ax.set_yticks([])
            row_axes[0].set_ylabel(f"{r['num_steps']} steps", fontsize=9)
        fig.suptitle(f"First-layer weights after each num_steps ({best['member']} otherwise)")
        written.append(_save(fig, workdir / "first_layer_by_steps.png"))
    return written


def main(argv: list[str]) -> None:
    """The command line (flags defined under __main__: main.py imports this module too)."""
    f = flags.FLAGS
    workdirs = list(f.compare or []) + argv[1:]  # --compare a b: b arrives as an argument.
    if f.compare:
        print(compare(workdirs, f.out))
    elif f.workdir:
        for path in plot_workdir(f.workdir):
            print(path)
    else:
        raise UserError("pass --workdir=RUN or --compare RUN RUN ...")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Run directory to plot.")
    flags.DEFINE_multi_string("compare", None, "Run directories to overlay (repeatable).")
    flags.DEFINE_string("out", "compare.png", "Output file of --compare.")
    cli.run(main)


def save_run_outputs(run: Any, probs: np.ndarray) -> list[Path]:
    """plots/ and report.md of a run just trained (interim: re-reads the workdir)."""
    del probs
    return plot_workdir(run.workdir)
