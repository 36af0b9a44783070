"""What a run directory holds is input like any other: a crafted or old config.json,
results.json or metrics.jsonl (fields deleted, retyped, added; files truncated or of the wrong
JSON type; a config whose model no longer matches the checkpoint) is, for every reader (eval,
predict, plot, `mj.load_run`), either read or refused in one line naming what is wrong, and a
refused command changes nothing in the workdir. Found by a search over such directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from mnist_jax import api, config as config_lib, data, evaluate, plot
from mnist_jax.errors import UserError

from conftest import REPO, one_error_line, small_config, snapshot, train_results

FILES = ("config.json", "results.json", "metrics.jsonl")
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)
# Model changes that keep config.json valid but no longer match the checkpoint's arrays.
MODEL_CHANGES = st.sampled_from(
    [("hidden_units", [64]), ("hidden_units", [32, 32]), ("name", "linear"), ("name", "cnn")]
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, idx_dir):
    """A finished 60-step run (checkpoints at 20, 40, 60) to craft directories from."""
    workdir = tmp_path_factory.mktemp("reference")
    train_results(small_config(idx_dir, "dnn", **{"model.hidden_units": (32,)}), workdir)
    return workdir


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory, idx_dir):
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray(data.load_idx(idx_dir)[1].images[0].reshape(28, 28)).save(path)
    return path


def _paths(obj, prefix=()):
    """Every key path into nested JSON objects."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))


@st.composite
def mutations(draw):
    """(file, a function that changes that file's text)."""
    file = draw(st.sampled_from(FILES))
    op = draw(st.sampled_from(["delete", "retype", "extra", "truncate", "whole", "model"]))
    value, cut, seed = draw(JSON_VALUES), draw(st.floats(0, 1)), draw(st.integers(0, 2**16))
    model_change = draw(MODEL_CHANGES)

    def change(text: str) -> str:
        rng = np.random.default_rng(seed)
        if op == "truncate":
            return text[: int(cut * (len(text) - 1))]
        if op == "whole":
            return json.dumps(value)
        if file == "metrics.jsonl":
            lines = text.splitlines()
            i = int(rng.integers(len(lines)))
            lines[i] = json.dumps(_edit(json.loads(lines[i]), op, value, rng, model_change))
            return "\n".join(lines) + "\n"
        return json.dumps(_edit(json.loads(text), op, value, rng, model_change))

    return file, op, change


def _edit(obj, op, value, rng, model_change):
    if op == "model":
        if "model" in obj:
            obj["model"][model_change[0]] = model_change[1]
        return obj
    paths = list(_paths(obj))
    *parent_path, key = paths[int(rng.integers(len(paths)))]
    parent = obj
    for k in parent_path:
        parent = parent[k]
    if op == "delete":
        del parent[key]
    elif op == "retype":
        parent[key] = value
    else:
        parent[f"extra_{key}"] = value
    return obj


def _craft(reference, tmp_path, file, change):
    workdir = tmp_path / "crafted"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(reference, workdir)
    path = workdir / file
    path.write_text(change(path.read_text()))
    return workdir


def _read(tool, workdir, digit_png):
    """What each reader does with a run directory (the API behind each command)."""
    if tool == "load_run":
        run = api.load_run(workdir)
        run.summary()
        run.predict(np.zeros((1, 784), np.uint8))
    elif tool == "predict":
        from mnist_jax.images import image_to_mnist

        model, params, _ = evaluate.restore_model(workdir)
        evaluate.predict_probs(model, params, image_to_mnist(digit_png)[None])
    elif tool == "eval":
        evaluate.evaluate_workdir(workdir)
    else:
        plot.plot_workdir(workdir)


def _valid_config(text: str) -> bool:
    """Whether the command line's validator takes this config.json (fields it lacks default)."""
    try:
        config_lib.validate(config_lib.from_dict(json.loads(text)))
    except (UserError, ValueError, TypeError):
        return False
    return True


@settings(max_examples=40)
@given(mutations(), st.sampled_from(["load_run", "predict", "eval", "plot"]))
def test_every_reader_reads_or_refuses_a_crafted_run_in_one_line(
    reference, tmp_path, digit_png, mutation, tool
):
    file, op, change = mutation
    workdir = _craft(reference, tmp_path, file, change)
    refused = file == "config.json" and not _valid_config((workdir / file).read_text())
    before = snapshot(workdir)
    try:
        _read(tool, workdir, digit_png)
    except UserError as e:
        message = str(e)
        assert "\n" not in message
        assert any(s in message for s in (file, "checkpoint", "data")), (op, message)
        assert not refused or "config.json" in message, message
        assert snapshot(workdir) == before
        return
    assert not refused, f"{tool} read a config.json that the command line refuses"
    if tool in ("load_run", "predict"):
        assert snapshot(workdir) == before  # Pure readers write nothing.


@pytest.mark.parametrize(
    ("file", "text", "fragment"),
    [
        ("config.json", '{"seed": -1}', "config.json: config.seed=-1"),
        ("config.json", '{"batch_size": 2.5}', "config.batch_size=2.5: must be an integer"),
        ("config.json", '{"seed": {"a": 1}}', "config.json: unknown config field seed.a"),
        ("config.json", '{"model": {"widht": 3}}', "unknown config field model.widht"),
        ("config.json", "[1]", "config.json: expected a JSON object"),
        ("config.json", '{"sweep": {"a": "b"}}', "config.sweep=ConfigDict: must be a tuple"),
        ("results.json", '{"final": {"test": {"accuracy": "high"}}}', "final test lacks"),
        ("results.json", '{"diverged": {"step": "x"}}', "results.json: diverged step must be"),
        ("results.json", '{"num_classes": 10, "confusion_matrix": [[1]]}', "confusion_matrix"),
        ("results.json", '{"data_source": "cloud"}', "data_source must be one of"),
    ],
)
def test_named_faults_name_the_file_and_field(reference, tmp_path, file, text, fragment):
    def change(old: str) -> str:
        new = json.loads(text)
        return json.dumps({**json.loads(old), **new} if isinstance(new, dict) else new)

    workdir = _craft(reference, tmp_path, file, change)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        api.load_run(workdir).summary()


COMMANDS = {
    "eval": lambda w, png: ["mnist_jax.main", f"--workdir={w}", "--mode=eval"],
    "predict": lambda w, png: ["mnist_jax.predict", f"--workdir={w}", str(png)],
    "plot": lambda w, png: ["mnist_jax.plot", f"--workdir={w}"],
}


@settings(max_examples=6)
@given(mutations(), st.sampled_from(sorted(COMMANDS)))
def test_the_commands_read_or_refuse_a_crafted_run_in_one_line(
    reference, tmp_path, digit_png, mutation, command
):
    file, _, change = mutation
    workdir = _craft(reference, tmp_path, file, change)
    before = snapshot(workdir)
    proc = subprocess.run(
        [sys.executable, "-m", *COMMANDS[command](workdir, digit_png)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode != 0:
        one_error_line(proc.returncode, proc.stderr)
        assert snapshot(workdir) == before


# ----------------------------------------------------------------- say what the directory is


def test_a_sweep_directory_is_named_not_told_to_train_first(reference, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(reference, sweep / "seed=0")  # An interrupted sweep: no sweep.json yet,
    (sweep / ".sweep").write_text("seed=0,1\n")  # but the mark it writes first.
    for read in (api.load_run, evaluate.restore_model, plot.plot_workdir):
        with pytest.raises(UserError, match=r"is a sweep directory \(members seed=0\)"):
            read(sweep)


def test_a_plain_directory_of_runs_is_named_as_such_not_a_sweep(reference, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(reference, runs / "a")
    shutil.copytree(reference, runs / "b")
    readers = (api.load_run, evaluate.restore_model, plot.plot_workdir, evaluate.evaluate_workdir,
               lambda w: plot.compare([w], tmp_path / "cmp.png"))  # fmt: skip
    for read in readers:
        with pytest.raises(UserError, match=r"is a directory of runs \(runs a, b\), not a run"):
            read(runs)
    assert not (tmp_path / "cmp.png").exists()


def test_a_diverged_run_without_checkpoints_says_it_diverged(reference, tmp_path):
    workdir = tmp_path / "diverged"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints")
    message = {"step": 7, "message": "non-finite loss at step 7"}
    (workdir / "results.json").write_text(json.dumps({"diverged": message}))
    for read in (api.load_run, evaluate.restore_model, plot.plot_workdir):
        with pytest.raises(UserError, match="diverged at step 7") as e:
            read(workdir)
        assert "train first" not in str(e.value)


def test_summary_of_an_unfinished_run_says_so(reference, tmp_path):
    workdir = tmp_path / "unfinished"
    shutil.copytree(reference, workdir)
    (workdir / "results.json").unlink()
    run = api.load_run(workdir)
    assert "not finished (evaluated up to step 60)" in run.summary()
    assert "None" not in run.summary()
    with pytest.raises(UserError, match="not finished"):
        run.test_accuracy  # noqa: B018


# ----------------------------------------------------------------- the run's own data, or none


def _other_data(idx_dir, target):
    """The same files with one test label changed: other data of the same sizes."""
    shutil.copytree(idx_dir, target)
    test = data.load_idx(idx_dir)[1]
    labels = test.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    data.write_idx(target / "t10k-labels-idx1-ubyte.gz", labels)


@settings(max_examples=12)
@given(
    relative=st.booleans(),
    record=st.booleans(),
    found=st.sampled_from(["own", "other", "missing"]),
    reader=st.sampled_from(["eval", "Run.test_split"]),
)
def test_a_reader_scores_the_runs_own_data_or_says_it_is_not_there(
    reference, idx_dir, tmp_path_factory, relative, record, found, reader
):
    """A run's data.dir, absolute or relative (a run from before paths were recorded
    absolute), with or without run.json's fingerprint, finds its own data, other data of the
    same sizes, or nothing: the run's own data is scored; anything else that can be told
    apart is refused in one UserError (a relative path is trusted only when the fingerprint
    confirms it), and nothing in the run directory changes."""
    import contextlib

    base = tmp_path_factory.mktemp("owndata")
    if found == "own":
        shutil.copytree(idx_dir, base / "data")
    elif found == "other":
        _other_data(idx_dir, base / "data")
    workdir = base / "run"
    shutil.copytree(reference, workdir)
    where = "data" if relative else str(base / "data")
    for name, key in (("config.json", ("data", "dir")), ("results.json", ("data_location",))):
        obj = json.loads((workdir / name).read_text())
        target = obj
        for k in key[:-1]:
            target = target[k]
        target[key[-1]] = where
        (workdir / name).write_text(json.dumps(obj))
    if not record:
        (workdir / "run.json").unlink()
    before = snapshot(workdir)
    checked = found == "own" and (record or not relative)
    unknowable = found == "other" and not record and not relative  # Nothing to check with.
    with contextlib.chdir(base):
        if checked or unknowable:
            if reader == "eval":
                evaluate.evaluate_workdir(workdir)
            else:
                api.load_run(workdir).test_split()
            return
        with pytest.raises(UserError) as e:
            if reader == "eval":
                evaluate.evaluate_workdir(workdir)
            else:
                api.load_run(workdir).test_split()
    message = str(e.value)
    assert "\n" not in message
    if found == "other" and record:
        assert "is not the data" in message and "run.json" in message
    elif relative and not record:
        assert "relative" in message and "data.dir" in message
    else:
        assert "does not exist" in message and (not relative or "relative" in message)
    assert snapshot(workdir) == before


def test_data_fields_given_score_that_data_but_never_another_data_set(reference, idx_dir, tmp_path):
    """--config.data.dir=OTHER scores other data (asked for); data.name=another set of the
    same class count would relabel the classes: refused, naming both sets; a data field
    that names no data (validation_size) is no leave to score other data."""
    _other_data(idx_dir, tmp_path / "other")
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    evaluate.evaluate_workdir(workdir, {"dir": str(tmp_path / "other")})
    with pytest.raises(UserError, match=r"trained on mnist.*would relabel the classes"):
        evaluate.evaluate_workdir(workdir, {"name": "fashion_mnist", "dir": str(idx_dir)})
    results = json.loads((workdir / "results.json").read_text())
    (workdir / "results.json").write_text(
        json.dumps({**results, "data_location": str(tmp_path / "other")})
    )
    with pytest.raises(UserError, match="is not the data"):  # A field that names no data.
        evaluate.evaluate_workdir(workdir, {"validation_size": 100})
