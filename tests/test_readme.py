"""The README's copy-paste code runs: the three ways to get a trained model back, and the
Python API example. Each block is read out of README.md itself, so the README cannot drift."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import NOT_IMPORTED, REPO, small_config, train_results


def readme_blocks(section: str) -> list[str]:
    """The ```python blocks under the README heading `section`."""
    text = (REPO / "README.md").read_text()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, idx_dir):
    workdir = tmp_path_factory.mktemp("readme") / "runs" / "dnn"
    train_results(small_config(idx_dir, "dnn", **{"model.hidden_units": (32,)}), workdir)
    return workdir


def test_three_ways_to_restore_agree(trained, sample, monkeypatch):
    blocks = readme_blocks("Restoring a trained model")
    assert len(blocks) == 3
    monkeypatch.chdir(trained.parent.parent)  # The blocks say runs/dnn.
    images = sample.images[:20]
    predictions = []
    for code in blocks:
        scope = {"images": images}
        exec(compile(code, "README.md", "exec"), scope)
        out = scope.get("probs", scope.get("logits"))
        assert np.shape(out) == (20, 10), code
        predictions.append(np.argmax(out, axis=1))
    assert all(np.array_equal(predictions[0], p) for p in predictions[1:])


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    (code,) = readme_blocks("From Python (and notebooks)")
    monkeypatch.chdir(tmp_path)
    code = code.replace("num_steps=2000", 'num_steps=40, data__source="sample", num_periods=2')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert 0.5 < scope["run"].test_accuracy <= 1


def test_the_export_snippet_runs_in_plain_jax(trained, sample, tmp_path):
    from mnist_jax import api

    (code,) = readme_blocks("Exporting the model (jax.export)")
    run = api.load_run(trained)
    run.export(tmp_path / "dnn.jax")
    images = sample.images[:20]
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys\nimport numpy as np\nimages = np.load('images.npy')\n"
        + code
        + NOT_IMPORTED
        + "np.save('probs.npy', probs)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    probs = np.load(tmp_path / "probs.npy")
    np.testing.assert_allclose(probs, run.predict(images), atol=1e-5, rtol=0)
