"""Pictures, report, TensorBoard and prediction, from short real runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mnist_jax import data, evaluate, metrics, plot

from conftest import REPO, small_config

PNGS = ("loss", "confusion_matrix", "first_layer_weights", "samples", "mistakes")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, idx_dir):
    """An MLP trained past 95% training accuracy on 1,000 real digits."""
    workdir = tmp_path_factory.mktemp("run")
    c = small_config(idx_dir, "dnn", batch_size=50, num_steps=400, tensorboard=True)
    c.model.hidden_units = (128,)
    results = train_results(c, workdir)
    assert results["final"]["train"]["accuracy"] > 0.95
    return workdir


def _assert_png(path, min_w=300, min_h=200):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        assert img.size[0] >= min_w and img.size[1] >= min_h, (path, img.size)
        assert np.asarray(img.convert("L")).std() > 5  # Not a blank canvas.


@pytest.mark.parametrize("name", ["dnn", "linear"])
def test_every_plot_and_the_report(tmp_path, idx_dir, trained, name):
    workdir = trained
    if name == "linear":
        workdir = tmp_path
        train_results(small_config(idx_dir, "linear"), workdir)
    paths = plot.plot_workdir(workdir)
    for png in PNGS:
        _assert_png(workdir / "plots" / f"{png}.png")
    report = (workdir / "report.md").read_text()
    assert workdir / "report.md" in paths
    for png in PNGS:
        assert f"plots/{png}.png" in report
    results = metrics.read_json(workdir / "results.json")
    assert f"{100 * results['final']['test']['accuracy']:.2f}%" in report
    assert "| `data.source` | `idx` | `auto` |" in report


def test_confusion_rows_sum_to_class_counts(trained, idx_dir):
    results = metrics.read_json(trained / "results.json")
    _, test = data.load_idx(idx_dir)
    cm = np.asarray(results["confusion_matrix"])
    assert cm.sum(axis=1).tolist() == np.bincount(test.labels, minlength=10).tolist()
    assert results["class_counts"] == cm.sum(axis=1).tolist()


def test_tensorboard_scalars_are_written(trained):
    events = list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    blob = events[0].read_bytes()
    for tag in (b"train/log_loss", b"validation/accuracy", b"train/learning_rate"):
        assert tag in blob


def test_compare_cli(tmp_path, idx_dir, trained):
    other = tmp_path / "other"
    c = small_config(idx_dir, "dnn", batch_size=50, num_steps=400)
    c.model.hidden_units = (128,)
    c.optimizer.learning_rate = 0.01
    train_results(c, other)
    out = tmp_path / "cmp.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_jax.plot",
            "--compare",
            str(trained),
            str(other),
            f"--out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_png(out)


def test_predict_images_of_training_digits(tmp_path, trained, idx_dir):
    train_split, _ = data.load_idx(idx_dir)
    paths, labels = [], []
    for k in range(20):
        digit = train_split.images[k].reshape(28, 28)
        img = Image.fromarray(digit).resize((112, 112), Image.Resampling.BILINEAR)
        if k % 2:
            img = Image.fromarray(255 - np.asarray(img))  # Dark ink on white paper.
        path = tmp_path / f"digit{k}.{'jpg' if k % 5 == 0 else 'png'}"
        img.save(path)
        paths.append(str(path))
        labels.append(int(train_split.labels[k]))
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_jax.predict", f"--workdir={trained}", str(bad), *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1  # One file failed; the others were still predicted.
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "broken.png: not a readable image" in errors[0]
    predicted = {ln.split(":")[0]: int(ln.split()[1]) for ln in proc.stdout.splitlines()}
    correct = sum(predicted[p] == y for p, y in zip(paths, labels, strict=True))
    assert correct >= 18, (correct, proc.stdout)


def test_predict_csv(tmp_path, trained, idx_dir):
    train_split, _ = data.load_idx(idx_dir)
    csv = tmp_path / "rows.csv"
    data.write_csv(csv, data.Split(train_split.images[:50], train_split.labels[:50]))
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_jax.predict", f"--workdir={trained}", f"--csv={csv}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, params, _ = evaluate.restore_model(trained)
    expected = evaluate.predict_probs(model, params, train_split.images[:50]).argmax(1)
    printed = [int(ln.split()[2]) for ln in proc.stdout.splitlines() if ln.startswith("row ")]
    assert printed == expected.tolist()
    accuracy = float(proc.stdout.splitlines()[-1].split()[1])
    assert accuracy == np.mean(expected == train_split.labels[:50]) > 0.9
