"""The benchmark runs and prints valid JSON (quick mode; speed is not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_throughput_quick_mode_prints_json_lines():
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--quick", "--cases=linear"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    loops = {r["loop"] for r in rows}
    assert loops == {
        "project",
        "hand_written_scan",
        "per_step_jit",
        "eval",
        "sweep_vmap",
        "sweep_map",
    }
    for r in rows:
        assert r.get("examples_per_sec", r.get("model_examples_per_sec")) > 0
    assert {r["k"] for r in rows if r["loop"] == "sweep_map"} == {1, 2}
