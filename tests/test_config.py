"""Configs: one table of fields with descriptions, loading by name or path, overrides."""

from __future__ import annotations

import subprocess
import sys

import ml_collections
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import cli, config as config_lib, sweep
from mnist_jax.errors import UserError

from conftest import REPO


def test_every_field_has_a_description_and_describe_prints_it():
    c = config_lib.load("dnn")
    text = config_lib.describe(c)
    for name, doc in config_lib.FIELD_DOCS.items():
        assert doc and len(doc) < 100
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{name} = "))
        assert doc in line
    assert "model.hidden_units = (512, 256)" in text


def test_shipped_configs_load_by_name_and_path_and_validate():
    assert {"dnn", "linear", "tflearn_dnn", "linear_sweep"} <= set(config_lib.list_configs())
    for name in config_lib.list_configs():
        by_name = config_lib.load(name)
        by_path = config_lib.load(str(REPO / "configs" / f"{name}.py"))
        assert by_name == by_path


def test_load_works_from_any_directory(tmp_path):
    code = "from mnist_jax import config; print(config.load('linear').model.name)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "linear"


def test_overrides_are_type_checked_and_scalars_become_one_tuples():
    c = config_lib.load("dnn", {"model.hidden_units": 32, "optimizer.learning_rate": 1})
    assert c.model.hidden_units == (32,) and c.optimizer.learning_rate == 1.0
    for bad, message in [
        ({"batch_size": True}, "expected int, got bool"),
        ({"optimizer.learning_rate": "0.1"}, "expected float, got str"),
        ({"num_step": 10}, "unknown config field num_step; did you mean num_steps?"),
        ({"optimizer.learning_rate": float("inf")}, "must be finite"),
        ({"optimizer.learning_rate": 1e39}, "overflows float32"),
        ({"optimizer.clip_norm": 1e-40}, "smallest normal"),
        ({"seed": 2**31}, "int32"),
        ({"num_steps": 0, "num_epochs": float("nan")}, "must be finite"),
        ({"data.validation_size": 10.5}, "whole count"),
        ({"data.validation_split": "first"}, "choose one of random, last"),
        ({"model.hidden_units": (64, 0)}, "integers from 1 to"),
    ]:
        with pytest.raises(UserError, match=message.replace("?", r"\?")):
            config_lib.load("dnn", bad)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def get_config():\n    return {'seed': 1}", "lacks field(s) batch_size"),
        ("def get_config():\n    pass", "returned None"),
        ("def get_config():\n    return 3", "returned a int"),
        ("def get_config():\n    raise RuntimeError('boom')", "get_config() failed"),
        (
            "from mnist_jax import config\ndef get_config():\n"
            "    c = config.get_config()\n    c.num_step = 5\n    return c",
            "unknown config field num_step; did you mean num_steps?",
        ),
    ],
)
def test_incomplete_config_files_say_what_is_wrong(tmp_path, body, message):
    path = tmp_path / "cfg.py"
    path.write_text(body)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.load(str(path))


def test_a_complete_plain_dict_config_is_accepted(tmp_path):
    base = config_lib.to_dict(config_lib.get_config())
    path = tmp_path / "cfg.py"
    path.write_text(f"def get_config():\n    return {base!r}\n")
    assert isinstance(config_lib.load(str(path)), ml_collections.ConfigDict)


def _cli_config(*overrides: str):
    return cli.split_config_args(["prog", "--config=dnn", "--workdir=w", *overrides])


def test_cli_repeated_override_last_wins_and_scalar_is_one_tuple():
    rest, c = _cli_config("--config.model.hidden_units=(64,)", "--config.model.hidden_units=(16,)")
    assert c.model.hidden_units == (16,)
    assert rest[1].startswith("--config=") and rest[1].endswith("configs/dnn.py")
    assert _cli_config("--config.model.hidden_units=32")[1].model.hidden_units == (32,)
    assert _cli_config("--config.batch_size=10", "--config.batch_size=20")[1].batch_size == 20
    assert _cli_config("--noconfig.plots")[1].plots is False
    assert _cli_config("--config.num_periods", "4")[1].num_periods == 4


_SECTIONS = sorted(
    n for n in config_lib.field_names(config_lib.load("dnn"))
    if isinstance(config_lib.field_value(config_lib.load("dnn"), n), ml_collections.ConfigDict)
)  # fmt: skip
_NOT_SECTIONS = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.none(), st.booleans(), st.text(max_size=3),
    st.lists(st.integers(), max_size=2), st.tuples(st.integers()),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(_SECTIONS), value=_NOT_SECTIONS)
def test_a_section_given_anything_but_a_dict_of_its_fields_is_one_error(field, value):
    """`--config.data=1`, `--sweep=model=[1],...`: a section takes a dict literal of field
    names; anything else is a UserError naming the flag, never an exception from inside."""
    with pytest.raises(UserError, match=f"--config.{field}=.*expected a dict of field names"):
        _cli_config(f"--config.{field}={value!r}")
    with pytest.raises(UserError, match=f"--sweep {field}=.*is not a dict of field names"):
        sweep.members(config_lib.load("dnn"), [f"{field}={value!r},{{'x': 1}}"])


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--config.num_step=10", "unknown config field num_step; did you mean num_steps?"),
        ("--config.optimizer.foo.bar=1", "unknown config field optimizer.foo.bar"),
        ("--config.batch_size=abc", "--config.batch_size='abc': expected an integer"),
        ("--config.optimizer.learning_rate=1e400", "config.optimizer.learning_rate=inf: must be"),
    ],
)
def test_cli_override_messages_name_only_the_bad_flag(flag, message):
    with pytest.raises(UserError) as e:
        _cli_config("--config.batch_size=5", flag)
    assert str(e.value).startswith(message)
    assert "batch_size=5" not in str(e.value) and "\\" not in str(e.value)


# ----------------------------------------------------------------------------- field policies


def _another(value):
    """A different value of the same type (validity does not matter to the policies)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return (*value, 1)
    return value + "x"


@pytest.mark.parametrize("field", [f for f in config_lib.FIELDS], ids=lambda f: f.name)
def test_resume_accepts_exactly_the_fields_the_table_marks_resumable(tmp_path, field):
    from mnist_jax.rundir import RunDir

    old = config_lib.get_config()
    rundir = RunDir(tmp_path)
    rundir.write_config(old)
    new = old.copy_and_resolve_references()
    config_lib.set_field(new, field.name, _another(config_lib.field_value(old, field.name)))
    if field.resumable:
        assert rundir.check_config(new, allow_change=False) == []
    else:
        with pytest.raises(UserError, match=rf"\({field.name} differ"):
            rundir.check_config(new, allow_change=False)


@pytest.mark.parametrize("field", [f for f in config_lib.FIELDS], ids=lambda f: f.name)
def test_one_sweep_program_holds_members_that_differ_only_in_per_member_fields(field):
    from mnist_jax import sweep

    base = config_lib.get_config()
    if field.structure is not None:  # Both on, or both off: one optimizer structure.
        config_lib.set_field(base, field.name, 0.5)
    other = base.copy_and_resolve_references()
    config_lib.set_field(other, field.name, _another(config_lib.field_value(base, field.name)))
    assert (sweep.group_key(base) == sweep.group_key(other)) == field.per_member
    if field.structure is not None:  # Turning clipping or weight decay on: another program.
        config_lib.set_field(other, field.name, 0.0)
        config_lib.set_field(base, field.name, 0.5)
        assert sweep.group_key(base) != sweep.group_key(other)


def test_model_fields_come_from_the_model_families():
    from mnist_jax import models

    names = [f.name for f in config_lib.FIELDS]
    assert len(names) == len(set(names))
    for family in models.FAMILIES.values():
        for f in family.FIELDS:
            assert f in config_lib.FIELDS and f.owner == family.NAME
            assert config_lib.describe(config_lib.get_config()).count(f"{f.name} = ") == 1
    assert "did you mean model.conv_features" in _error(
        lambda: config_lib.apply_overrides(config_lib.get_config(), {"model.conv_feature": (8,)})
    )


def _error(call) -> str:
    with pytest.raises(UserError) as e:
        call()
    return str(e.value)


@settings(max_examples=10, deadline=None)
@given(
    first=st.sampled_from(["dnn", "linear", "configs/cnn.py"]),
    second=st.sampled_from(["dnn", "linear", "configs/cnn.py"]),
    spelling=st.sampled_from(["--config={}", "-config={}", "--config {}"]),
)
def test_two_config_files_are_an_error_not_a_silent_first_win(first, second, spelling):
    """--config=A ... --config=B: neither file is silently dropped (the first once won)."""
    argv = ["prog", f"--config={first}", "--workdir=w", *spelling.format(second).split(" ")]
    if first == second:
        assert cli.split_config_args(argv)[1] is not None
    else:
        with pytest.raises(UserError, match=r"--config is given 2 times .*; give one"):
            cli.split_config_args(argv)
