"""Time to a result: each shipped config's whole command, from process start to exit.

    python benchmarks/time_to_accuracy.py                      # every config, best of 3
    python benchmarks/time_to_accuracy.py --configs=dnn,linear --repeats=1
    python benchmarks/time_to_accuracy.py --quick              # CI: one tiny run, checks it works
    python benchmarks/time_to_accuracy.py --configs=dnn --config.num_steps=2000  # flags pass on

Runs `python -m mnist_jax.main --config=configs/X.py --workdir=FRESH_DIR` as a subprocess for
each config in configs/ (sweep presets excluded), on full MNIST when $MNIST_JAX_DATA_DIR holds
it (`--config.data.source=idx --config.data.dir=...`), else on the 5,000-digit sample. Keeps
the repeat with the least wall time and reports it: the whole command's wall time, when the
validation accuracy first reached the target (seconds since process start, from the `time_s`
of metrics.jsonl rows; the step too), the final test accuracy, and the split of the wall time
from results.json's `timing` (startup, data, compile, train, eval, plots). Fields a run does
not write are reported as null. Prints one JSON line per config, then a markdown table.
Nothing about speed is asserted; a failing run is reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TIMING_FIELDS = ("startup_s", "data_s", "compile_s", "train_s", "eval_s", "plots_s", "wall_s")
# Accuracy each config is built to reach; the others are held to --target's default.
DEFAULT_TARGETS = {
    "linear": 0.92,
    "fast_cnn": 0.99,
    "cnn": 0.992,
    "lenet5": 0.9905,
    "best_cnn": 0.996,
}


def shipped_configs() -> list[str]:
    """Names of configs/*.py that train one run (files that define a `sweep` are presets)."""
    from mnist_jax import config as config_lib

    names = config_lib.list_configs()
    return [n for n in names if not config_lib.load_file(config_lib.resolve(n)).get("sweep")]


def data_flags(quick: bool) -> tuple[list[str], str]:
    """Flags that pick full MNIST from $MNIST_JAX_DATA_DIR when it is set, else the sample."""
    directory = os.environ.get("MNIST_JAX_DATA_DIR", "")
    if directory and not quick:
        return ["--config.data.source=idx", f"--config.data.dir={directory}"], "mnist"
    return ["--config.data.source=sample"], "sample"


def run_once(name: str, workdir: Path, extra: list[str]) -> dict[str, Any]:
    """One whole command in a fresh workdir: its wall time and what it wrote."""
    command = [
        sys.executable,
        "-m",
        "mnist_jax.main",
        f"--config={REPO / 'configs' / f'{name}.py'}",
        f"--workdir={workdir}",
        *extra,
    ]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"wall_s": wall, "returncode": proc.returncode, "stderr": proc.stderr[-2000:]}
    results = _read_json(workdir / "results.json")
    rows = []
    if (workdir / "metrics.jsonl").exists():
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "returncode": 0, "results": results, "rows": rows}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def summarize(name: str, runs: list[dict[str, Any]], target: float, source: str) -> dict[str, Any]:
    """The best (least wall time) successful run, as one report row."""
    row: dict[str, Any] = {"config": name, "data": source, "repeats": len(runs), "target": target}
    row["wall_s_all"] = [round(r["wall_s"], 2) for r in runs]
    failed = [r for r in runs if r["returncode"] != 0]
    if failed:
        row.update(error=f"exit status {failed[0]['returncode']}", stderr=failed[0]["stderr"])
        return row
    best = min(runs, key=lambda r: r["wall_s"])
    results, rows = best["results"], best["rows"]
    row["wall_s"] = round(best["wall_s"], 2)
    crossed = next(
        (
            r
            for r in rows
            if r.get("split") == "validation" and (r.get("accuracy") or 0.0) >= target
        ),
        None,
    )
    row["step_to_target"] = crossed["step"] if crossed else None
    row["time_to_target_s"] = _round(crossed.get("time_s")) if crossed else None
    final = results.get("final", {})
    row["test_accuracy"] = final.get("test", {}).get("accuracy")
    row["validation_accuracy"] = final.get("validation", {}).get("accuracy")
    row["num_steps"] = results.get("num_steps")
    timing = results.get("timing") or {}
    row["split"] = {k: _round(timing.get(k)) for k in TIMING_FIELDS}
    return row


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


def _cell(x: Any, fmt: str = "{}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| config | data | wall s | target | to target s (step) | test acc "
        "| startup | data | compile | train | eval | plots |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['data']} | failed: {r['error']} |")
            continue
        s = r["split"]
        to_target = f"{_cell(r['time_to_target_s'])} ({_cell(r['step_to_target'])})"
        acc = _cell(r["test_accuracy"] and 100 * r["test_accuracy"], "{:.2f}%")
        parts = [
            r["config"],
            r["data"],
            _cell(r["wall_s"], "{:.1f}"),
            _cell(r["target"]),
            to_target,
            acc,
            *(_cell(s[k], "{:.2f}") for k in TIMING_FIELDS[:-1]),
        ]
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def parse_targets(spec: str) -> dict[str, float]:
    """'dnn=0.98,linear=0.92' -> {'dnn': 0.98, 'linear': 0.92}."""
    out = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        out[name] = float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="", help="comma-separated names (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=None, help="for every config")
    parser.add_argument("--targets", default="", help="per config, e.g. dnn=0.98,linear=0.92")
    parser.add_argument("--quick", action="store_true", help="one tiny run on the sample")
    parser.add_argument("--scratch", default=None, help="where the workdirs go (default: tmp)")
    args, overrides = parser.parse_known_args()
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (only --config.X=Y pass through)")

    names = [n for n in args.configs.split(",") if n] or shipped_configs()
    extra, source = data_flags(args.quick)
    repeats = args.repeats
    if args.quick:
        names, repeats = names[:1] if args.configs else ["linear"], 1
        extra += ["--config.num_steps=20", "--config.num_epochs=0", "--config.num_periods=2"]
    extra += overrides  # --config.X=Y flags, given to every run.
    targets = parse_targets(args.targets)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="tta_") as scratch:
        for name in names:
            runs = [run_once(name, Path(scratch) / f"{name}_{i}", extra) for i in range(repeats)]
            target = targets.get(name, args.target or DEFAULT_TARGETS.get(name, 0.98))
            row = summarize(name, runs, target, source)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(markdown(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
