"""The benchmark runs and prints valid JSON (quick mode; speed is not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, one_error_line


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


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_linear_loop_quick_mode_prints_each_loop_and_the_ratios():
    proc = run_benchmark("benchmarks/linear_loop.py", "--quick", "--cases=linear")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    parts = {r["part"]: r["ms_per_epoch"] for r in rows if "part" in r}
    assert set(parts) == {"permutation_jax_random", "permutation_feistel", "gather_epoch_rows"}
    loops = {r["loop"]: r["examples_per_sec"] for r in rows if "loop" in r}
    assert set(loops) == {
        "project",
        "project_jax_permutation",
        "ceiling_jax_epoch_gather",
        "ceiling_jax_batch_gather",
        "ceiling_feistel_epoch_gather",
        "ceiling_feistel_batch_gather",
        "preshuffled",
    }
    assert min(*parts.values(), *loops.values()) > 0
    (ratios,) = [r["ratios"] for r in rows if "ratios" in r]
    fair = max(loops["ceiling_feistel_epoch_gather"], loops["ceiling_feistel_batch_gather"])
    assert abs(ratios["project/fair_ceiling_feistel"] - loops["project"] / fair) < 0.01


def test_time_to_accuracy_quick_mode_reports_a_run_of_the_whole_command(tmp_path):
    proc = run_benchmark(
        "benchmarks/time_to_accuracy.py", "--quick", f"--scratch={tmp_path}", "--target=0.1"
    )
    lines = proc.stdout.splitlines()
    row = json.loads(lines[0])
    assert row["config"] == "linear" and row["data"] == "sample" and row["repeats"] == 1
    assert row["num_steps"] == 20 and 0 < row["test_accuracy"] <= 1
    assert row["wall_s"] > 0 and row["step_to_target"] in (10, 20)
    assert set(row["split"]) == {
        "startup_s",
        "data_s",
        "compile_s",
        "train_s",
        "eval_s",
        "plots_s",
        "wall_s",
    }
    assert lines[1].startswith("| config |") and lines[3].startswith("| linear | sample |")
    assert list(tmp_path.iterdir()) == []  # The workdirs are removed.


def test_augment_cost_quick_mode_times_every_augmentation_against_off():
    proc = run_benchmark("benchmarks/augment_cost.py", "--quick", "--cases=fast_mlp")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["augment"] for r in rows] == ["off", "shift", "affine", "elastic", "all"]
    assert all(r["ms_per_step"] > 0 for r in rows) and rows[0]["ratio_to_off"] == 1.0
    for r in rows:
        assert abs(r["ratio_to_off"] - r["ms_per_step"] / rows[0]["ms_per_step"]) < 0.01
        assert (r["transform_alone_ms"] > 0) == (r["augment"] != "off")


def test_cnn_speed_quick_mode_times_every_form_against_the_ceiling():
    proc = run_benchmark("benchmarks/cnn_speed.py", "--quick")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows[0]["case"] == "matmul_ceiling" and rows[0]["gflops"] > 0
    assert {r["form"] for r in rows[1:]} == {"native", "slices", "vjp", "cpu"}
    assert all(r["examples_per_sec"] > 0 and r["ratio_to_matmul_ceiling"] > 0 for r in rows[1:])
    assert all(r["forward_examples_per_sec"] > 0 for r in rows[1:])  # Inference timed too.


def test_cnn_speed_refuses_an_unknown_xla_setting_in_one_line():
    proc = subprocess.run(
        [sys.executable, "benchmarks/cnn_speed.py", "--xla_settings=fastest"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and proc.stderr.startswith("error: --xla_settings: 'fastest'")


@pytest.mark.parametrize(
    "flag",
    ["--nets=nope", "--forms=slices,bogus", "--pools=", "--dtypes=int8", "--batch_sizes=8,0",
     "--steps=0", "--repeats=-1", "--forward_batches=-2"],
)  # fmt: skip
def test_cnn_speed_refuses_a_bad_flag_in_one_line_before_timing(flag):
    """An unknown net/form/pool/dtype or a count out of range: one error line, no traceback."""
    proc = subprocess.run([sys.executable, "benchmarks/cnn_speed.py", flag], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert flag.split("=")[0] in one_error_line(proc.returncode, proc.stderr)
    assert proc.stdout == ""  # Nothing was timed.
