"""Configs: one table of fields with descriptions, loading by name or path, overrides."""

from __future__ import annotations

import subprocess
import sys

import ml_collections
import pytest

from mnist_jax import cli, config as config_lib
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
