"""report.md: one readable page per run, embedding the plots and the numbers that matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from mnist_jax import config as config_lib, outputs, scores

REPORT_FILE = "report.md"
_SECTIONS = (
    ("loss", "Curves"),
    ("confusion_matrix", "Confusion matrix (test set)"),
    ("reliability", "Calibration (test set)"),
    ("first_layer_weights", "First-layer weights"),
    ("samples", "Test examples"),
    ("mistakes", None),  # Under "Test examples" too.
)
PLOTS_DIR = "plots"
FIGURES = tuple(name for name, _ in _SECTIONS)  # A run's plots/<name>.png.


def check_run_outputs(workdir: str | Path) -> None:
    """Refuses (one line) plots/ or report.md targets that cannot be written, before a run
    (here, not in plot.py: checking imports no matplotlib)."""
    workdir = Path(workdir)
    if not workdir.exists():
        return
    for name in FIGURES:
        outputs.check_target(workdir / PLOTS_DIR / f"{name}.png", workdir)
    outputs.check_target(workdir / REPORT_FILE, workdir, text=True)


def write_report(
    workdir: str | Path,
    config: ml_collections.ConfigDict,
    results: dict[str, Any],
    figures: list[str] | None = None,
    scored: str = "",
) -> Path:
    """Writes <workdir>/report.md atomically, embedding plots/<name>.png for each name in
    `figures` (default: all a run gets). `scored`: the data the pictures were made on,
    when other than the run's own."""
    workdir = Path(workdir)
    text = report_markdown(workdir.name, config, results, figures, scored)
    return outputs.write_text(workdir / REPORT_FILE, text, workdir)


def report_markdown(
    name: str,
    config: ml_collections.ConfigDict,
    results: dict[str, Any],
    figures: list[str] | None = None,
    scored: str = "",
) -> str:
    """The report's Markdown text (pure: nothing is read or written)."""
    figures = [s for s, _ in _SECTIONS] if figures is None else figures
    defaults = config_lib.flatten(config_lib.to_dict(config_lib.get_config()))
    ours = config_lib.flatten(config_lib.to_dict(config))
    changed = [k for k in sorted(ours) if ours[k] != defaults.get(k)]
    r = results
    model = config.model.name
    if model == "mlp":
        model += f" {tuple(config.model.hidden_units)}"
    lines = [f"# Run report: {name}", ""]
    data = f"**{r['dataset']}** from " if r.get("dataset") else ""
    lines.append(f"- data: {data}**{r.get('data_source', '?')}** ({r.get('data_location', '')})")
    if r.get("class_names"):
        lines.append(f"- classes: {len(r['class_names'])} ({_clip(', '.join(r['class_names']))})")
    lines.append(f"- model: {model}, {_fmt(r.get('num_params'), ',')} parameters")
    lines.append(f"- steps: {_fmt(r.get('num_steps'), ',')} of batch {config.batch_size}")
    wall = f"- wall time: {_fmt(r.get('wall_time_s'), '.1f')} s"
    wall += f" (compile {_fmt(r.get('compile_time_s'), '.2f')} s)"
    if r.get("train_examples_per_sec"):
        wall += f", {_fmt(r['train_examples_per_sec'], ',')} training examples/s"
    lines.append(wall)
    if r.get("devices"):
        lines.append(
            f"- devices: {len(r['devices'])} x {r['devices'][0]}"
            f" in {r.get('num_processes', 1)} process(es)"
        )
    lines += ["", "## Final metrics", "", *_final_table(r.get("final") or {})]
    lines += _per_class_table(r)
    lines += ["", "## Config (fields that differ from the defaults)", ""]
    if changed:
        lines += ["| field | value | default |", "|---|---|---|"]
        lines += [f"| `{k}` | `{ours[k]}` | `{defaults.get(k)}` |" for k in changed]
    else:
        lines.append("All defaults.")
    for stem, heading in _SECTIONS:
        if stem in figures:
            lines += ["", f"## {heading}"] if heading else []
            lines += ["", f"![{stem.replace('_', ' ')}](plots/{stem}.png)"]
    if scored:
        lines += ["", f"Pictures made on {scored}."]
    return "\n".join(lines) + "\n"


def _final_table(final: dict[str, Any]) -> list[str]:
    """One row per split, one column per scalar metric of the registry."""
    metrics = scores.of_kind(scores.SCALAR)
    lines = ["| split | examples | " + " | ".join(m.label for m in metrics) + " |"]
    lines.append("|---" * (len(metrics) + 2) + "|")
    for split, values in final.items():
        cells = [_value(values.get(m.name), m.percent) for m in metrics]
        lines.append(f"| {split} | {_fmt(values.get('size'), ',')} | " + " | ".join(cells) + " |")
    return lines


def _per_class_table(r: dict[str, Any]) -> list[str]:
    """The test split's per-class metrics of the registry, one row per class."""
    per_class, names = r.get("per_class"), r.get("class_names")
    if not per_class or not names:
        return []
    metrics = [m for m in scores.of_kind(scores.PER_CLASS) if m.name in per_class]
    matrix = r.get("confusion_matrix")
    counts = [sum(row) for row in matrix] if matrix else [None] * len(names)
    lines = ["", "## Per class (test set)", ""]
    lines.append("| class | examples | " + " | ".join(m.label for m in metrics) + " |")
    lines.append("|---" * (len(metrics) + 2) + "|")
    for k, name in enumerate(names):
        cells = [_value(per_class[m.name][k], m.percent) for m in metrics]
        lines.append(f"| {name} | {_fmt(counts[k], ',')} | " + " | ".join(cells) + " |")
    return lines


def _value(x: Any, percent: bool) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if percent else f"{x:.4f}"


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(x: Any, spec: str) -> str:
    """A number formatted, or n/a when missing or not finite (None in results.json)."""
    return "n/a" if x is None else format(x, spec)
