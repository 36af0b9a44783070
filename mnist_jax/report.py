"""report.md: one readable page per run, embedding the plots and the numbers that matter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from mnist_jax import config as config_lib


def write_report(
    workdir: str | Path, config: ml_collections.ConfigDict, results: dict[str, Any]
) -> Path:
    """Writes <workdir>/report.md (the plots must already be in <workdir>/plots/)."""
    workdir = Path(workdir)
    defaults = config_lib.flatten(config_lib.to_dict(config_lib.get_config()))
    ours = config_lib.flatten(config_lib.to_dict(config))
    changed = [k for k in sorted(ours) if ours[k] != defaults.get(k)]
    lines = [
        f"# Run report: {workdir.name}",
        "",
        f"- data: **{results['data_source']}** ({results.get('data_location', '')})",
        f"- model: {config.model.name}"
        + (f" {tuple(config.model.hidden_units)}" if config.model.name == "mlp" else "")
        + f", {results['num_params']:,} parameters",
        f"- steps: {results['num_steps']:,} of batch {config.batch_size}",
        f"- wall time: {results['wall_time_s']:.1f} s (compile {results['compile_time_s']:.2f} s)"
        + (
            f", {results['train_examples_per_sec']:,} training examples/s"
            if results.get("train_examples_per_sec")
            else ""
        ),
        f"- devices: {len(results['devices'])} x {results['devices'][0]}"
        f" in {results.get('num_processes', 1)} process(es)",
        "",
        "## Final metrics",
        "",
        "| split | examples | log-loss | accuracy |",
        "|---|---|---|---|",
    ]
    for split, m in results["final"].items():
        lines.append(
            f"| {split} | {m['size']:,} | {m['log_loss']:.4f} | {100 * m['accuracy']:.2f}% |"
        )
    lines += ["", "## Config (fields that differ from the defaults)", ""]
    if changed:
        lines += ["| field | value | default |", "|---|---|---|"]
        lines += [f"| `{k}` | `{ours[k]}` | `{defaults.get(k)}` |" for k in changed]
    else:
        lines.append("All defaults.")
    lines += [
        "",
        "## Curves",
        "",
        "![loss](plots/loss.png)",
        "",
        "## Confusion matrix (test set)",
        "",
        "![confusion matrix](plots/confusion_matrix.png)",
        "",
        "## First-layer weights",
        "",
        "![first layer](plots/first_layer_weights.png)",
        "",
        "## Test digits",
        "",
        "![samples](plots/samples.png)",
        "",
        "![mistakes](plots/mistakes.png)",
        "",
    ]
    path = workdir / "report.md"
    path.write_text("\n".join(lines))
    return path
