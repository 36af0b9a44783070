"""Metrics: one registry (scores.METRICS) from the sums step.eval_sums makes on device, read by
every writer; calibration (ECE, reliability bins) and per-class accuracy, precision, recall."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import data, evaluate, figures, models, report, scores, step
from mnist_jax.sharding import Placement

from conftest import small_config, train_results, trees_equal


def reference(probs: np.ndarray, labels: np.ndarray, bins: int) -> dict:
    """The metrics straight from their definitions, from probabilities (numpy, float64)."""
    conf, pred = probs.max(1), probs.argmax(1)
    right = pred == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = sum(
        abs(right[which == b].mean() - conf[which == b].mean()) * np.mean(which == b)
        for b in range(bins)
        if np.any(which == b)
    )
    k = probs.shape[1]
    tp = np.array([np.sum(right & (labels == c)) for c in range(k)])
    return {
        "accuracy": right.mean(),
        "log_loss": -np.mean(np.log(probs[np.arange(len(labels)), labels])),
        "ece": ece,
        "count": np.bincount(which, minlength=bins),
        "precision": [tp[c] / np.sum(pred == c) if np.any(pred == c) else None for c in range(k)],
        "recall": [tp[c] / np.sum(labels == c) if np.any(labels == c) else None for c in range(k)],
        "ovr": [np.mean((pred == c) == (labels == c)) for c in range(k)],
    }


def _metric(kind: str, name: str) -> scores.Metric:
    return next(m for m in scores.METRICS if (m.kind, m.name) == (kind, name))


def _close(a, b):
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-5)


@settings(max_examples=12)  # Each example compiles its own shapes.
@given(
    n=st.integers(1, 300),
    batch=st.integers(1, 128),
    classes=st.sampled_from([2, 10, 26, 47]),
    seed=st.integers(0, 2**16),
)
def test_device_sums_give_the_metrics_of_their_definitions(n, batch, classes, seed):
    """Any split size, eval batch (padding masked) and class count: the jitted sums, through
    the registry, equal the textbook formulas computed from the probabilities."""
    model = models.create_model(small_config("", "linear").model, classes)
    variables = jax.tree_util.tree_map(
        lambda x: 3 * x, step.init_variables(model, seed)
    )  # Sharper probabilities: the bins spread over [0, 1].
    rng = np.random.default_rng(seed)
    split = data.Split(rng.integers(0, 256, (n, 784), dtype=np.uint8),
                       rng.integers(0, classes, n).astype(np.int32))  # fmt: skip
    sums = evaluate.split_sums(model, variables, split, batch)
    probs = np.asarray(evaluate.predict_probs(model, variables, split.images), np.float64)
    want = reference(probs, split.labels, scores.CALIBRATION_BINS)
    got = scores.scalars(sums)
    assert got["size"] == n
    for name in ("accuracy", "log_loss", "ece"):
        assert abs(got[name] - want[name]) < 1e-4, (name, got[name], want[name])
    details = scores.details(sums, [str(c) for c in range(classes)])
    assert details["calibration"]["count"] == want["count"].tolist()
    assert all(map(_close, details["per_class"]["precision"], want["precision"]))
    assert all(map(_close, details["per_class"]["recall"], want["recall"]))
    assert all(map(_close, details["per_class"]["accuracy"], want["ovr"]))


def test_the_sums_do_not_depend_on_the_eval_batch():
    model = models.create_model(small_config("", "linear").model, 10)
    variables = step.init_variables(model, 1)
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (777, 784), dtype=np.uint8),
                       rng.integers(0, 10, 777).astype(np.int32))  # fmt: skip
    a, b = (evaluate.split_sums(model, variables, split, batch) for batch in (777, 100))
    for key in ("correct", "confusion", "bin_count", "bin_correct"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(a["bin_confidence"], b["bin_confidence"], rtol=1e-5)


def test_per_class_edges_and_ece_by_hand():
    """3 classes; class 2 is never predicted (precision None) and class 1 has no examples
    (recall None). Two bins' worth of confidences, ECE by hand."""
    sums = scores.zero_sums(3, bins=2)
    sums["confusion"] = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 0]])
    sums["correct"], sums["loss_sum"] = 3, 6.0
    sums["bin_count"] = np.array([2, 4])  # Bin [0, .5): 2 examples, bin [.5, 1]: 4.
    sums["bin_confidence"] = np.array([0.8, 3.6])  # Mean confidence 0.4 and 0.9.
    sums["bin_correct"] = np.array([0, 3])  # Accuracy 0 and 0.75.
    got = scores.scalars(sums)
    assert got == pytest.approx({"log_loss": 1.0, "accuracy": 0.5, "size": 6,
                                 "ece": (2 * 0.4 + 4 * 0.15) / 6})  # fmt: skip
    per = scores.details(sums, "abc")["per_class"]
    assert per["precision"] == pytest.approx([0.75, 0.0, None]) and per["precision"][2] is None
    assert per["recall"][0] == pytest.approx(0.75) and per["recall"][1] is None
    assert per["accuracy"] == pytest.approx([4 / 6, 4 / 6, 4 / 6])


def test_the_figures_draw_the_registrys_numbers():
    """The confusion matrix and reliability diagram are drawn from results, not recounted."""
    counts = [[5, 1], [2, 2]]
    calibration = {"bins": 4, "count": [0, 1, 3, 6], "confidence": [None, 0.3, 0.6, 0.9],
                   "accuracy": [None, 0.0, 0.5, 1.0]}  # fmt: skip
    results = {"confusion_matrix": counts, "calibration": calibration, "class_names": ["x", "y"],
               "final": {"test": {"ece": 0.125}}}  # fmt: skip
    probs = np.tile([[0.9, 0.1]], (10, 1))  # Disagrees with `counts` on purpose.
    digits = np.zeros((10, 784), np.uint8)
    figs = figures.run_figures([], results, None, digits, np.zeros(10, int), probs)
    shown = figs["confusion_matrix"].axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, [[5 / 6, 1 / 6], [0.5, 0.5]])
    assert [t.get_text() for t in figs["confusion_matrix"].axes[0].get_xticklabels()] == ["x", "y"]
    bars = [p.get_height() for p in figs["reliability"].axes[0].patches[:4]]
    assert bars == [0, 0.0, 0.5, 1.0]
    assert "ECE 0.1250 (4 bins)" in figs["reliability"].axes[0].get_title()
    figures.close(figs)


def test_a_metric_added_to_the_registry_reaches_every_writer(tmp_path, idx_dir, monkeypatch):
    """One new row in scores.METRICS: metrics.jsonl, TensorBoard, results.json, the report and
    --mode=eval's eval_results.json all carry it, with no other change."""
    error = scores.Metric("error_rate", scores.SCALAR,
                          lambda s: 1 - float(s["correct"]) / scores.count(s), "error rate",
                          percent=True)  # fmt: skip
    recall = _metric(scores.PER_CLASS, "recall")
    again = scores.Metric("recall_again", scores.PER_CLASS, recall.compute, "recall again")
    monkeypatch.setattr(scores, "METRICS", (*scores.METRICS, error, again))
    c = small_config(idx_dir, "linear", plots=True, tensorboard=True)
    results = train_results(c, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["error_rate"] == pytest.approx(1 - r["accuracy"]) for r in rows)
    for split in ("train", "validation", "test"):
        assert results["final"][split]["error_rate"] == pytest.approx(
            1 - results["final"][split]["accuracy"]
        )
        assert "ece" in results["final"][split]
    assert results["per_class"]["recall_again"] == results["per_class"]["recall"]
    text = (tmp_path / "report.md").read_text()
    assert "| error rate |" in text.splitlines()[text.splitlines().index("## Final metrics") + 2]
    assert "recall again" in text and "## Per class (test set)" in text
    blob = next((tmp_path / "tensorboard").glob("events.*")).read_bytes()
    assert b"validation/error_rate" in blob and b"test/final_ece" in blob
    assert "error_rate" in evaluate.evaluate_workdir(tmp_path)["test"]
    assert (tmp_path / "plots" / "reliability.png").is_file()


def test_the_calibration_bin_count_is_documented_where_it_is_used():
    assert f"{scores.CALIBRATION_BINS} bins" in _metric(scores.SCALAR, "ece").label
    assert "CALIBRATION_BINS" in step.eval_sums.__doc__
    assert "ECE" in report.report_markdown(
        "r",
        small_config("", "linear"),
        {"final": {"test": {"ece": 0.01, "accuracy": 0.9, "log_loss": 0.3, "size": 5}}},
    )


def test_eval_sums_are_pure_and_jitted():
    model = models.create_model(small_config("", "linear").model, 10)
    variables = step.init_variables(model, 0)
    split = Placement().put_eval(data.Split(np.zeros((5, 784), np.uint8), np.zeros(5, np.int32)), 4)
    fn = jax.jit(functools.partial(step.eval_sums, model=model))
    a, b = (
        fn(variables, split.images, split.labels, split.size),
        fn(variables, split.images, split.labels, split.size),
    )
    assert trees_equal(a, b)
    assert int(a["bin_count"].sum()) == 5 and a["bin_count"].shape == (scores.CALIBRATION_BINS,)
