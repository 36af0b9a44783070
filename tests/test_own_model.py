"""Your own model: a Linen module from a file or a module trains through the CLI and the API,
every reader (load_run, eval, predict) rebuilds it from the run directory, and every bad spec
is one error line before anything is written."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import mnist_jax as mj
from mnist_jax import config as config_lib, models, step
from mnist_jax.errors import STOP_SIGNALS, UserError
from mnist_jax.models import common, own

from conftest import (
    REPO,
    main_args,
    make_not_file,
    one_error_line,
    small_config,
    snapshot,
    sweep_args,
)

NET = """
import flax.linen as nn


class Net(nn.Module):
    width: int = 16
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x)))
"""
QUICK = ("--config.num_steps=20", "--config.num_periods=1", "--config.batch_size=20",
         "--config.plots=False", "--config.tensorboard=False")  # fmt: skip


def _write(path, text=NET):
    path.write_text(textwrap.dedent(text))
    return path


def _cli(*args, timeout=300):
    return subprocess.run([*args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _eval(workdir):
    return _cli(sys.executable, "-m", "mnist_jax.main", f"--workdir={workdir}", "--mode=eval")


def _small(idx_dir, **fields):
    return small_config(idx_dir, "dnn", **{"num_steps": 20, "num_periods": 1, **fields})


def test_a_model_file_trains_through_the_cli_and_every_reader_rebuilds_it(tmp_path, idx_dir):
    net, wd = _write(tmp_path / "net.py"), tmp_path / "run"
    # Relative to the command's directory; the run records it absolute.
    spec = f"--config.model.name={os.path.relpath(net, REPO)}:Net"
    train = _cli(*main_args(idx_dir, wd, spec, "--config.model.kwargs={'width': 8}", *QUICK))
    assert train.returncode == 0, train.stderr[-2000:]
    saved = json.loads((wd / "config.json").read_text())["model"]
    assert saved["name"] == f"{net}:Net" and saved["kwargs"] == "{'width': 8}"
    assert saved["file_sha256"] == own.file_sha256(str(net))
    run = mj.load_run(wd)
    assert run.params["Dense_1"]["kernel"].shape == (784, 8)  # Dense_0: the outer call.
    assert run.predict(np.zeros((3, 784), np.uint8)).shape == (3, 10)
    evaluated = _eval(wd)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0"] * 784) + "\n")
    predicted = _cli(sys.executable, "-m", "mnist_jax.predict", f"--workdir={wd}", f"--csv={rows}")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    again = _cli(*main_args(idx_dir, wd, spec, "--config.model.kwargs={'width': 8}", *QUICK,
                            "--config.num_steps=40"))  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]  # Resumed: the same file, the same hash.

    net.write_text(net.read_text() + "# edited\n")
    with pytest.raises(UserError, match=r"has changed since this run trained"):
        mj.load_run(wd)
    line = one_error_line(**_rc_err(_eval(wd)))
    assert "has changed since this run trained" in line
    net.unlink()
    line = one_error_line(**_rc_err(_eval(wd)))
    assert line.endswith(f"model file {net}: file not found")


def _rc_err(proc):
    return {"returncode": proc.returncode, "stderr": proc.stderr}


def test_mj_train_takes_an_importable_module_and_records_its_import_path(
    tmp_path, idx_dir, monkeypatch
):
    _write(tmp_path / "ownnet_for_test.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    import ownnet_for_test

    run = mj.train(_small(idx_dir), tmp_path / "run", model=ownnet_for_test.Net(width=4))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (saved["name"], saved["kwargs"]) == ("ownnet_for_test:Net", "{'width': 4}")
    back = mj.load_run(tmp_path / "run")
    images = np.arange(2 * 784).reshape(2, 784).astype(np.uint8)
    assert back.model == run.model
    assert np.array_equal(back.predict(images), run.predict(images))
    # A reader given the module takes it as mj.train did: the class with the recorded kwargs,
    # an instance as it is; another class, or other fields, is one error.
    net = ownnet_for_test.Net
    for module in (net, net(width=4)):
        assert mj.load_run(tmp_path / "run", model=module).model == run.model
    another = type("Net", (net,), {})  # The same name, in another module.
    for module, says in ((net(width=8), "set its fields differently"),
                         (another, "two different models")):  # fmt: skip
        with pytest.raises(UserError, match=says):
            mj.load_run(tmp_path / "run", model=module)


def test_mj_train_takes_a_local_class_and_readers_say_it_cannot_be_rebuilt(tmp_path, idx_dir):
    import flax.linen as nn

    class Local(nn.Module):  # No num_classes field: its logits' width is the class count.
        @nn.compact
        def __call__(self, x, *, train: bool = False):
            return nn.Dense(10)(x)

    run = mj.train(_small(idx_dir), tmp_path / "run", model=Local)
    assert run.predict(np.zeros((2, 784), np.uint8)).shape == (2, 10)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["name"].startswith("<") and saved["name"].endswith(".Local>")
    with pytest.raises(UserError, match=r"cannot be rebuilt from the run directory"):
        mj.load_run(tmp_path / "run")
    again = mj.train(_small(idx_dir, num_steps=30), tmp_path / "run", model=Local)  # Resumes.
    assert (again.results["num_steps"], again.results["resumed_from_step"]) == (30, 20)
    # load_run takes it back as mj.train took it: a class (or instance), num_classes filled in.
    for module in (Local, Local()):
        back = mj.load_run(tmp_path / "run", model=module)
        assert back.predict(np.zeros((1, 784))).shape == (1, 10)


@settings(derandomize=True, max_examples=10, deadline=None)
@given(
    given_model=st.sampled_from(
        [
            int,
            3,
            "mlp",
            lambda x: x,
            np.zeros(3),
            np.zeros((3, 3)),
            object(),
            type("NotModule", (), {}),
            [NET],
            "two\nlines",
        ]
    )
)
def test_a_model_argument_that_is_no_linen_module_is_one_error(tmp_path_factory, given_model):
    """mj.train(model=...) and mj.load_run(model=...) take a Linen module class or instance;
    anything else is one UserError line, and nothing is written."""
    wd = tmp_path_factory.mktemp("given") / "run"
    for call in (lambda: mj.train(config_lib.get_config(), wd, model=given_model),
                 lambda: mj.load_run(wd, model=given_model)):  # fmt: skip
        with pytest.raises(UserError) as e:
            call()
        assert "\n" not in str(e.value)
    assert not wd.exists()


_NAMED = r"cannot import model file .*: "
BAD_FILES = {
    "import_error": ("import no_such_module_xyz\n", _NAMED + "ModuleNotFoundError"),
    "syntax": ("class Net(:\n", _NAMED + r"SyntaxError: .* \(line 1\)"),
    "missing_class": (
        "import flax.linen as nn\nclass Nett(nn.Module):\n    pass\n",
        r"has no Net; did you mean Nett\?",
    ),
    "not_a_module": ("class Net:\n    pass\n", r"Net is a type, not a flax.linen.Module class"),
    "wrong_shape": (
        NET.replace("nn.Dense(self.num_classes)", "nn.Dense(3)"),
        r"returns \(2, 3\) float32 .* \(2, 10\)",
    ),
    "bad_call": (
        NET.replace("*, train: bool = False", ""),
        r"calling it as module\(images, train=False\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_model_file_is_one_error_naming_it(tmp_path, case):
    text, message = BAD_FILES[case]
    path = _write(tmp_path / "net.py", text)
    c = config_lib.get_config()
    c.model.name = f"{path}:Net"
    with pytest.raises(UserError, match=message) as e:
        models.create_model(c.model, 10)
    assert "\n" not in str(e.value)


_FAULTY = """
import sys
import flax.linen as nn
import jax.numpy as jnp
{at_import}

class Net(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if train:
            {in_train}
        else:
            {in_eval}
        return nn.Dense(self.num_classes)(x)
"""
_FAULTS = ["pass", "sys.exit(3)", "sys.exit('bye')", "raise ValueError('x')",
           "return nn.Dense(5)(x)", "return x[:, :10]",
           "self.variable('stats', 'n', jnp.zeros, (3,)); return nn.Dense(10)(x)"]  # fmt: skip


@settings(derandomize=True, max_examples=30, deadline=None)
@given(
    at_import=st.sampled_from(["", "sys.exit(0)", "sys.exit(2)", "raise RuntimeError('y')"]),
    in_train=st.sampled_from(_FAULTS),
    in_eval=st.sampled_from(_FAULTS[:5]),
)
def test_user_code_failing_at_import_or_in_either_call_is_one_error(
    tmp_path_factory, at_import, in_train, in_eval
):
    """Whatever the file does at import, in the evaluation call or in the training call (an
    exception, sys.exit, other logits, no parameters, state only training makes), the model
    either passes the check and trains one step, or is one UserError line."""
    path = tmp_path_factory.mktemp("faulty") / "net.py"
    path.write_text(_FAULTY.format(at_import=at_import, in_train=in_train, in_eval=in_eval))
    c = config_lib.get_config()
    c.model.name = f"{path}:Net"
    try:
        model = models.create_model(c.model, 10)
    except UserError as e:
        assert "\n" not in str(e)
        return
    state = step.init_state(model, optax.sgd(0.1), 0)
    images, labels = jnp.zeros((4, 784), jnp.uint8), jnp.zeros((4,), jnp.int32)
    step.train_step(state, images, labels, model=model, tx=optax.sgd(0.1))


@pytest.mark.parametrize("kind", ["missing", "fifo", "directory"])
def test_a_model_file_that_is_not_a_regular_file_is_named(tmp_path, kind):
    path = tmp_path / "net.py"
    if kind != "missing":
        make_not_file(path, kind)
    with pytest.raises(UserError, match=rf"model file {path}: (file not found|is a )"):
        own.recorded(f"{path}:Net")


def test_kwargs_must_name_fields_of_the_module(tmp_path):
    c = config_lib.get_config()
    c.model.name = f"{_write(tmp_path / 'net.py')}:Net"
    for kwargs, message in [
        ("{'depth': 2}", r"'depth' is not a field of .* \(its fields: width\)"),
        ("{'widht': 2}", r"'widht' is not a field of .*; did you mean width\?"),
        ("{'num_classes': 3}", r"num_classes is set from the data"),
    ]:
        c.model.kwargs = kwargs
        with pytest.raises(UserError, match=message):
            models.create_model(c.model, 10)
    c.model.name, c.model.kwargs = "mlp", "{'width': 2}"
    with pytest.raises(UserError, match=r"config.model.kwargs is read only by your own model"):
        config_lib.validate(c)


def test_bad_specs_through_the_cli_are_one_line_and_write_nothing(tmp_path, idx_dir):
    wd = tmp_path / "run"
    families = ", ".join(models.MODELS)
    for spec, message in [("nope.py:Net", f"model file {REPO}/nope.py: file not found"),
                          ("no_such_pkg_xyz.mod:Net", "cannot import no_such_pkg_xyz.mod"),
                          ("net.py", f"choose one of {families}, or your own")]:  # fmt: skip
        proc = _cli(*main_args(idx_dir, wd, f"--config.model.name={spec}", *QUICK))
        assert message in one_error_line(**_rc_err(proc))
        assert not wd.exists()


_NAME_CHARS = st.sampled_from([*list("ab_.:/<>1 -"), "py", "Net", "nn.Module"])


@settings(derandomize=True, max_examples=200, deadline=None)
@given(name=st.lists(_NAME_CHARS, max_size=8).map("".join))
def test_every_model_name_is_a_family_a_spec_or_one_error(name):
    """model.name's rule accepts exactly the families and the three spec forms; what it
    accepts, load_class either loads or refuses in one line."""
    c = config_lib.get_config()
    c.model.name = name
    parsed = own.parse(name)
    if name in models.MODELS or parsed is not None:
        config_lib.validate(c)
    else:
        with pytest.raises(UserError, match=r"^config\.model\.name=.*: choose one of"):
            config_lib.validate(c)
    if parsed is not None:
        with pytest.raises(UserError) as e:
            own.load_class(name)
        assert "\n" not in str(e.value)
        if parsed.kind == "file":
            assert parsed.target.endswith(".py")


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=12), st.dictionaries(st.text(max_size=4), st.integers()).map(repr)
    )
)
def test_kwargs_is_a_dict_literal_with_identifier_keys_or_one_error(text):
    c = config_lib.get_config()
    c.model.name, c.model.kwargs = "pkg.mod:Net", text
    value = own.parse_kwargs(text)
    if value is None:
        with pytest.raises(UserError, match=r"^config\.model\.kwargs="):
            config_lib.validate(c)
    else:
        config_lib.validate(c)
        assert all(k.isidentifier() for k in value)


# ----------------------------------------------------------------------------- model= and names

TWO_NETS = (
    NET
    + """

class Other(Net):
    pass
"""
)


@pytest.fixture(scope="module")
def two_nets(tmp_path_factory):
    """An importable module `ownnets_for_test` (a file) with two Linen classes, Net and Other."""
    where = tmp_path_factory.mktemp("nets")
    path = _write(where / "ownnets_for_test.py", TWO_NETS)
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module("ownnets_for_test"), path
    finally:
        sys.path.remove(str(where))
        sys.modules.pop("ownnets_for_test", None)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    named=st.sampled_from(["mlp", "cnn", "module", "file", "given", "missing"]),
    gives_other=st.booleans(),
    as_instance=st.booleans(),
    kwargs=st.sampled_from(["", "{'width': 4}", "{'width': 8}"]),
)
def test_the_model_argument_replaces_a_family_and_must_agree_with_your_own_model_named(
    two_nets, tmp_path_factory, idx_dir, caplog, named, gives_other, as_instance, kwargs
):
    """mj.train(model=...) replaces a shipped family's config.model.name, saying so in a log
    line. Where config.model.name names your own model (a module, a file or a recorded
    `<module.QualName>`), model= must be that class, and an instance must have the fields
    config.model.kwargs sets: otherwise one error line, and nothing is written."""
    module, path = two_nets
    specs = {"module": "ownnets_for_test:Net", "file": f"{path}:Net",
             "given": "<ownnets_for_test.Net>", "missing": f"{path}.py:Net"}  # fmt: skip
    spec = specs.get(named, named)
    kwargs = "" if named in models.FAMILIES else kwargs
    cls = module.Other if gives_other else module.Net
    model = cls(width=4) if as_instance else cls
    config = _small(idx_dir, **{"model.name": spec, "model.kwargs": kwargs})
    conflict = named == "missing" or (named not in models.FAMILIES and (
        gives_other or (as_instance and kwargs not in ("", "{'width': 4}"))
    ))  # fmt: skip
    caplog.clear()
    caplog.set_level("INFO", logger="absl")
    if conflict:
        wd = tmp_path_factory.mktemp("agree") / "run"
        with pytest.raises(UserError) as e:
            mj.train(config, wd, model=model)
        assert "\n" not in str(e.value) and not wd.exists()
        says = "two different models" if gives_other else "set its fields differently"
        assert ("file not found" if named == "missing" else says) in str(e.value)
        return
    recorded, handed = config_lib.as_recorded(config, model)
    assert handed is None and recorded.model.name == f"ownnets_for_test:{cls.__name__}"
    assert recorded.model.kwargs == ("{'width': 4}" if as_instance else kwargs)
    replaced = f"replaces config.model.name={named!r}"
    assert (replaced in caplog.text) == (named in models.FAMILIES), caplog.text


# ----------------------------------------------------------------------------- --show_config


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    name=st.sampled_from(config_lib.list_configs()),
    spec=st.sampled_from(["net.py:Net", "pkg.mod:Net", "<pkg.mod.Net>"]),
)
def test_show_config_of_your_own_model_leaves_out_the_shipped_families_fields(name, spec):
    """For your own model, --show_config lists every field but those only the shipped families
    read (each family's own, by FieldSpec.owner, and the ones they share); its kwargs are
    shown. A shipped family's config lists them all."""
    assert {
        f.name for f in config_lib.FIELDS if f.owner is not None or f in common.FIELDS
    } == models.SHIPPED_ONLY
    c = config_lib.load(name)
    shipped = config_lib.describe(c)
    c.model.name, c.model.kwargs = spec, "{'width': 8}"
    mine = config_lib.describe(c)

    def names(text):
        return [line.split(" = ")[0] for line in text.splitlines()]

    assert set(names(shipped)) >= models.SHIPPED_ONLY
    assert names(mine) == [n for n in names(shipped) if n not in models.SHIPPED_ONLY]
    assert f"model.name = {spec!r}" in mine and "model.kwargs = \"{'width': 8}\"" in mine


def test_show_config_through_the_cli_names_your_own_models_fields(tmp_path):
    net = _write(tmp_path / "net.py")
    args = ["--config=lenet5", f"--config.model.name={net}:Net", "--show_config",
            "--config.model.kwargs={'width': 8}"]  # fmt: skip
    proc = _cli(sys.executable, "-m", "mnist_jax.main", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = [line.split(" = ")[0] for line in proc.stdout.splitlines()]
    assert "model.kwargs" in shown and "model.file_sha256" in shown
    assert not set(shown) & models.SHIPPED_ONLY


# ----------------------------------------------------------------------------- hanging import

HANGS = (
    """
import os
import time

if os.environ.get("HANG_MARK"):  # Imports forever (say, waiting on something), once marked.
    open(os.environ["HANG_MARK"], "w").close()
    while True:
        time.sleep(0.01)
"""
    + NET
)


def test_a_stop_signal_during_a_model_files_import_is_one_line_and_changes_nothing(
    tmp_path, idx_dir
):
    """A model file whose import never ends hangs the command, as any import would (the file
    is the user's code); a stop signal then ends it with the one `interrupted by` line and
    128+signal, no traceback, in every command that imports it: a run and a sweep that would
    train it, eval, predict, plot and export of a run trained with it (the same bytes). The
    run's files are unchanged and no new directory is left."""
    net, wd = _write(tmp_path / "net.py", HANGS), tmp_path / "run"
    spec = f"--config.model.name={net}:Net"
    trained = _cli(*main_args(idx_dir, wd, spec, *QUICK))
    assert trained.returncode == 0, trained.stderr[-2000:]
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0"] * 784) + "\n")
    py = [sys.executable, "-m"]
    readers = {"eval": ["mnist_jax.main", "--mode=eval"], "predict": ["mnist_jax.predict",
               f"--csv={rows}"], "plot": ["mnist_jax.plot"],
               "export": ["mnist_jax.export", f"--out={tmp_path / 'm.jax'}"]}  # fmt: skip
    commands = {
        "train": main_args(idx_dir, tmp_path / "new", spec, *QUICK),
        "sweep": sweep_args(idx_dir, tmp_path / "sweep", spec, "--sweep=seed=0,1"),
    }
    for name, (module, *flags) in readers.items():  # A copy each: readers lock their run.
        shutil.copytree(wd, tmp_path / name)
        commands[name] = [*py, module, f"--workdir={tmp_path / name}", *flags]
    before = snapshot(tmp_path)
    procs = {}
    for (name, args), sig in zip(commands.items(), [*STOP_SIGNALS] * 2, strict=False):
        env = {**os.environ, "HANG_MARK": str(tmp_path / f"{name}.mark")}
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs[name] = (sig, subprocess.Popen(args, cwd=REPO, env=env, **pipes))
    try:
        for name, (sig, proc) in procs.items():
            mark, deadline = tmp_path / f"{name}.mark", time.time() + 240
            while not mark.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            assert mark.exists(), f"{name} never reached the import: {proc.communicate()[1]}"
            proc.send_signal(sig)
        for name, (sig, proc) in procs.items():
            _, err = proc.communicate(timeout=60)
            said = [ln for ln in err.splitlines() if ln.startswith(("interrupted", "error"))]
            assert proc.returncode == 128 + sig, (name, err[-2000:])
            assert said == [said[0]] and said[0].startswith(f"interrupted by {sig.name}"), err
            assert "Traceback" not in err, (name, err[-2000:])
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    after = {p: v for p, v in snapshot(tmp_path).items() if not p.name.endswith(".mark")}
    assert after == before


def test_ctrl_c_during_a_model_files_import_in_mj_train_leaves_the_process_ready(
    tmp_path, idx_dir, monkeypatch
):
    """Ctrl-C while mj.train imports a model file: KeyboardInterrupt, nothing written, no
    half-imported module left behind; the same call again (the import now ends) trains."""
    ctrl_c = HANGS.replace("time.sleep(0.01)", "os.kill(os.getpid(), 2)  # SIGINT, as Ctrl-C.")
    net, wd = _write(tmp_path / "net.py", ctrl_c), tmp_path / "run"
    config = _small(idx_dir, **{"model.name": f"{net}:Net"})
    monkeypatch.setenv("HANG_MARK", str(tmp_path / "mark"))
    # Python's own Ctrl-C handler, as in a notebook or REPL (pytest-xdist's workers ignore
    # SIGINT, which would leave the file's loop running for ever).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            mj.train(config, wd, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "mark").exists() and not wd.exists()
    assert own.MODULE_PREFIX + own.file_sha256(str(net))[:16] not in sys.modules
    monkeypatch.delenv("HANG_MARK")
    assert mj.train(config, wd, progress=False).results["num_steps"] == 20
