"""Your own model: a Linen module from a file or a module trains through the CLI and the API,
every reader (load_run, eval, predict) rebuilds it from the run directory, and every bad spec
is one error line before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import mnist_jax as mj
from mnist_jax import config as config_lib, models, step
from mnist_jax.errors import UserError
from mnist_jax.models import own

from conftest import REPO, main_args, make_not_file, one_error_line, small_config

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


@settings(derandomize=True, max_examples=8, deadline=None)
@given(
    given_model=st.sampled_from(
        [int, 3, "mlp", lambda x: x, np.zeros(3), object(), type("NotModule", (), {}), [NET]]
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
