"""notebooks/mnist_tour.ipynb runs top to bottom and shows what it promises.

The notebook runs in a temporary copy through nbclient on the bundled sample (about a minute on
a 2-core CPU); the full-MNIST run is marked slow and needs $MNIST_JAX_DATA_DIR. The committed
copy must carry its outputs, so its pictures show on a code host.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, full_mnist_dir

NOTEBOOK = REPO / "notebooks" / "mnist_tour.ipynb"
CELL_TIMEOUT_S = 300
MAX_BYTES = 1_500_000


def execute(tmp_path: Path, monkeypatch) -> tuple[nbformat.NotebookNode, float]:
    """Runs a copy of the notebook in `tmp_path` (its working directory) and returns it executed,
    with the wall time; raises CellExecutionError naming the first failing cell."""
    copy = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path) if p))
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    t = time.time()
    client.execute()
    return nb, time.time() - t


def stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream" and o.name == "stdout"
    )


def images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))


def check_tour(nb: nbformat.NotebookNode, dnn_target: float) -> str:
    """The printed results every section promises; returns the text printed."""
    text = stdout(nb)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]  # fmt: skip
    assert number(r"linear classifier: test accuracy (\S+)", text) >= 0.85
    for steps in (10, 100, 1000):
        assert re.search(rf"^ *{steps} steps: validation accuracy 0\.\d+$", text, re.M), text
    assert number(r"DNN test accuracy (\S+)", text) >= dnn_target
    assert f"(target {dnn_target})" in text
    assert re.search(r"^predicted: \[(\d, ){9}\d\]$", text, re.M), text
    sweep = re.findall(r"^ +(0\.01|0\.1|1\.0) +0\.\d+ +0\.\d+ +learning_rate=", text, re.M)
    assert sorted(sweep) == ["0.01", "0.1", "1.0"], text
    assert number(r"TFLearn DNN, \S+ epochs: test accuracy (\S+)", text) >= 0.8
    assert re.search(r"validation: the last [\d,]+ training rows", text), text
    assert "tour finished in" in text
    # Pictures: linear curves, confusion and weights; weights by steps; DNN curves and
    # confusion; predictions; the sweep's bars.
    assert images(nb) == 8
    return text


def test_the_tour_runs_on_the_sample(tmp_path, monkeypatch):
    nb, seconds = execute(tmp_path, monkeypatch)
    text = check_tour(nb, dnn_target=0.94)
    assert "data: the bundled 5,000-digit sample" in text
    assert "the last 1,000 training rows" in text
    assert [p.name for p in tmp_path.iterdir()] == [NOTEBOOK.name]  # Runs went to a temp dir.
    print(f"notebook executed in {seconds:.1f}s")


def test_the_committed_notebook_carries_its_outputs():
    """Run top to bottom in one kernel (execution counts 1..n), every cell with its outputs,
    the pictures embedded, small enough for a code host to show."""
    assert NOTEBOOK.stat().st_size < MAX_BYTES
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert all(c.outputs for c in code)
    check_tour(nb, dnn_target=0.95 if "data: full MNIST" in stdout(nb) else 0.94)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MNIST_JAX_NOTEBOOK_FULL"),
    reason="the full-MNIST tour is opt-in (MNIST_JAX_NOTEBOOK_FULL=1): CI runs it on the sample",
)
@pytest.mark.skipif(
    full_mnist_dir() is None, reason="needs full MNIST: set MNIST_JAX_DATA_DIR to the IDX files"
)
def test_the_tour_runs_on_full_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_JAX_DATA_DIR", full_mnist_dir())
    nb, seconds = execute(tmp_path, monkeypatch)
    text = check_tour(nb, dnn_target=0.95)
    assert "data: full MNIST" in text
    assert "the last 5,000 training rows" in text
    print(f"notebook executed on full MNIST in {seconds:.1f}s")
