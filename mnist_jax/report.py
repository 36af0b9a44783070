"""report.md: one readable page per run, embedding the plots and the numbers that matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from mnist_jax import config as config_lib, outputs

REPORT_FILE = "report.md"
_SECTIONS = (
    ("loss", "Curves"),
    ("confusion_matrix", "Confusion matrix (test set)"),
    ("first_layer_weights", "First-layer weights"),
    ("samples", "Test digits"),
    ("mistakes", None),  # Under "Test digits" too.
)


def write_report(
    workdir: str | Path,
    config: ml_collections.ConfigDict,
    results: dict[str, Any],
    figures: list[str] | None = None,
    scored: str = "",
) -> Path:
    """Writes <workdir>/report.md atomically, embedding plots/<name>.png for each name in
    `figures` (default: all five a run gets). `scored`: the data the pictures were made on,
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
    lines.append(f"- data: **{r.get('data_source', '?')}** ({r.get('data_location', '')})")
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
    lines += ["", "## Final metrics", "", "| split | examples | log-loss | accuracy |"]
    lines.append("|---|---|---|---|")
    for split, m in (r.get("final") or {}).items():
        acc = m.get("accuracy")
        acc = "n/a" if acc is None else f"{100 * acc:.2f}%"
        lines.append(
            f"| {split} | {_fmt(m.get('size'), ',')} | {_fmt(m.get('log_loss'), '.4f')} | {acc} |"
        )
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


def _fmt(x: Any, spec: str) -> str:
    """A number formatted, or n/a when missing or not finite (None in results.json)."""
    return "n/a" if x is None else format(x, spec)
