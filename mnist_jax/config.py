"""The base config that every file in `configs/` overrides: its fields, their descriptions and
their validation, in one table; and loading a config by shipped name or path.

The base lives in the package (not in `configs/`) so that config files import it from anywhere.
`validate` is the one validator: it runs before any data is read or anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from mnist_jax import augment, fields, models
from mnist_jax.errors import UserError, did_you_mean
from mnist_jax.fields import INT32_MAX, FieldSpec
from mnist_jax.inputs import check_file


def _join(base: tuple[FieldSpec, ...], model: tuple[FieldSpec, ...]) -> tuple[FieldSpec, ...]:
    """The model's fields where the base's `model.*` group stood: before `optimizer.*`."""
    at = next(i for i, f in enumerate(base) if f.name.startswith("optimizer."))
    return (*base[:at], *model, *base[at:])


# Every field: the base's and the model families' (each family owns its own).
FIELDS: tuple[FieldSpec, ...] = _join(fields.FIELDS, models.FIELDS)
# One line per field: the description `describe` and `--show_config` print.
FIELD_DOCS: dict[str, str] = {f.name: f.doc for f in FIELDS}
# Fields a config file may add beyond the base: `python -m mnist_jax.sweep` reads `sweep`.
EXTRA_FIELDS = {"sweep": "Sweep specs 'field=v1,v2,...' (mnist_jax.sweep); a cartesian product."}

# The field table's policies, as sets: what may change on resume (resume.check_same_steps
# refuses the cases where it would change what a step computes); what may differ between the
# members of one sweep program, and what of those values fixes the optimizer state's structure.
RESUMABLE_FIELDS = frozenset(f.name for f in FIELDS if f.resumable)
PER_MEMBER_FIELDS = tuple(f.name for f in FIELDS if f.per_member)
STRUCTURE = {f.name: f.structure for f in FIELDS if f.structure is not None}


def get_config() -> ml_collections.ConfigDict:
    """Defaults: a one-hidden-layer MLP trained with clipped Adagrad (TF1 settings)."""
    c = ml_collections.ConfigDict()
    for f in FIELDS:
        set_field(c, f.name, f.default, create=True)
    return c


def validate(config: Any) -> None:
    """Raises a UserError naming the first bad field: type, finiteness, range, representability
    (float32 on the device, int32 step counters, PRNGKey seeds), then the cross-field rules."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"the config is a {type(config).__name__}, expected a ConfigDict")
    flat = _flat_values(config)
    missing = [f.name for f in FIELDS if f.name not in flat]
    if missing:
        raise UserError(_missing_message("the config", missing))
    for name in flat:
        if name not in FIELD_DOCS and name.split(".")[0] not in EXTRA_FIELDS:
            raise UserError(f"unknown config field {name}{did_you_mean(name, FIELD_DOCS)}")
    for f in FIELDS:
        why = f.check(flat[f.name])
        if why:
            raise UserError(f"config.{f.name}={flat[f.name]!r}: {why}")
    _check_relations(config)
    if "sweep" in config:
        specs = config.sweep
        if not isinstance(specs, (tuple, list)) or not all(isinstance(s, str) for s in specs):
            shown = repr(specs) if isinstance(specs, (tuple, list)) else type(specs).__name__
            raise UserError(f"config.sweep={shown}: must be a tuple of 'field=v1,v2' strings")


def _check_relations(c: ml_collections.ConfigDict) -> None:
    """The rules that tie fields together."""
    if (c.num_steps > 0) == (c.num_epochs > 0):
        raise UserError(
            f"set exactly one of config.num_steps ({c.num_steps}) and config.num_epochs "
            f"({c.num_epochs}); set the other to 0"
        )
    if c.num_steps and c.num_periods > c.num_steps:
        raise UserError(
            f"config.num_periods={c.num_periods} exceeds config.num_steps={c.num_steps}"
        )
    o, d = c.optimizer, c.data
    models.check(c.model)  # Each model family's rules live with it.
    augment.validate_config(c.augment)
    if o.name == "adagrad" and o.initial_accumulator_value == 0 and o.eps == 0:
        raise UserError(
            "config.optimizer.initial_accumulator_value=0.0: adagrad divides by zero unless "
            "this or optimizer.eps is positive"
        )
    size = d.validation_size
    if size >= 1 and (size != int(size) or size > INT32_MAX):
        raise UserError(
            f"config.data.validation_size={size!r}: use a whole count (at most {INT32_MAX}) "
            "or a fraction below 1"
        )
    _check_data_names(d)


def _check_data_names(d: ml_collections.ConfigDict) -> None:
    """A named input that the source would not read is an error, not silently ignored."""
    files = [f for f in ("train_file", "test_file") if d[f]]
    if d.source == "csv" and len(files) < 2:
        raise UserError(
            "data.source=csv needs --config.data.train_file and --config.data.test_file"
        )
    if files and d.source not in ("csv", "auto"):
        raise UserError(
            f"config.data.{files[0]} is read only by data.source=csv (source is {d.source})"
        )
    if d.name != "mnist" and d.source in ("csv", "sample", "tfds"):
        raise UserError(
            f"config.data.name={d.name} is read only by data.source=idx, mnist or auto "
            f"(source is {d.source}{'; tfds reads data.tfds_name' if d.source == 'tfds' else ''})"
        )
    if d.dir and d.source in ("csv", "sample"):
        raise UserError(f"config.data.dir is not read by data.source={d.source}; unset it")
    if d.dir and files:
        raise UserError("set config.data.dir (IDX files) or the CSV files, not both")


def num_train_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """The run's step count: `num_steps`, or `num_epochs` of `num_train` examples; a UserError
    when it is below one step or beyond the int32 step counter."""
    steps_per_epoch = num_train // config.batch_size
    if config.num_steps:
        return int(config.num_steps)
    steps = round(config.num_epochs * steps_per_epoch)
    if steps < 1:
        raise UserError(
            f"config.num_epochs={config.num_epochs} is less than one step "
            f"({steps_per_epoch} steps per epoch of {num_train} examples)"
        )
    if steps > INT32_MAX:
        raise UserError(
            f"config.num_epochs={config.num_epochs} is {steps} steps of {num_train} examples, "
            f"beyond the int32 step counter ({INT32_MAX})"
        )
    return steps


# ----------------------------------------------------------------------------- describe


def describe(config: ml_collections.ConfigDict) -> str:
    """Every field that applies to the config's model as `name = value  # description`, one
    per line (for --show_config): your own model's leave out the shipped families' fields."""
    flat = _flat_values(config)
    model = flat.get("model.name", "")
    shown = [f.name for f in FIELDS if f.name in flat and models.applies(f.name, model)]
    order = shown + [k for k in flat if k not in FIELD_DOCS]
    width = max(len(f"{k} = {flat[k]!r}") for k in order)
    lines = []
    for name in order:
        doc = FIELD_DOCS.get(name) or EXTRA_FIELDS.get(name.split(".")[0], "")
        lines.append(f"{name} = {flat[name]!r}".ljust(width) + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- load


def configs_dir() -> Path:
    """The shipped `configs/`: the checkout's when running from one, else the installed
    `mnist_jax.configs` package (pyproject maps it to the same directory)."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "dnn.py").is_file():
        return checkout / "configs"
    spec = importlib.util.find_spec("mnist_jax.configs")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the shipped configs are missing: reinstall mnist-jax")
    return Path(next(iter(spec.submodule_search_locations)))


def list_configs() -> list[str]:
    """Names of the configs shipped with the package (`load` takes them)."""
    return sorted(p.stem for p in configs_dir().glob("*.py") if p.stem != "__init__")


def resolve(name_or_path: str) -> str:
    """A config file's path from a shipped name ('dnn') or a path ('configs/dnn.py')."""
    path = Path(name_or_path).expanduser()
    if os.path.lexists(path):  # Something is there: it must be a regular file, never a FIFO.
        try:
            check_file(path)
        except UserError as e:
            raise UserError(f"config file {e}") from None
        return str(path)
    if name_or_path in list_configs():
        return str(configs_dir() / f"{name_or_path}.py")
    hint = did_you_mean(name_or_path, list_configs()) or f"; shipped: {', '.join(list_configs())}"
    raise UserError(f"config file {name_or_path} not found{hint}")


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Runs a config file's `get_config([arg])`; every problem is one UserError naming it."""
    try:
        spec = importlib.util.spec_from_file_location("mnist_jax_user_config", path)
        if spec is None or spec.loader is None:
            raise UserError(f"cannot load config file {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except UserError:
        raise
    except SyntaxError as e:
        raise UserError(f"cannot load config file {path}: {e.msg} (line {e.lineno})") from None
    except (Exception, SystemExit) as e:  # A file that exits, even with 0, is no config.
        raise UserError(f"cannot load config file {path}: {_why(e)}") from None
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"config file {path} has no get_config() function")
    try:
        config = module.get_config(*([arg] if arg is not None else []))
    except (Exception, SystemExit) as e:
        raise UserError(f"config file {path}: get_config() failed: {_why(e)}") from None
    return complete(config, f"config file {path}")


def _why(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r}) (a config file must not exit)"
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}"


def complete(config: Any, where: str = "the config") -> ml_collections.ConfigDict:
    """The ConfigDict a config file's `get_config()` returned (a plain dict is converted), or a
    UserError saying what is missing."""
    if config is None:
        raise UserError(f"{where}: get_config() returned None (a missing `return c`?)")
    if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(dict(config))
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"{where}: get_config() returned a {type(config).__name__}, expected a ConfigDict "
            "(start from mnist_jax.config.get_config())"
        )
    flat = _flat_values(config)
    missing = [f.name for f in FIELDS if f.name not in flat]
    if missing:
        raise UserError(_missing_message(where, missing))
    return config


def load(
    name_or_path: str, overrides: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """A validated config from a shipped name ('dnn') or a path, with overrides such as
    {'optimizer.learning_rate': 0.1} (type-checked; a scalar for a tuple field is a one-tuple)."""
    path, _, arg = str(name_or_path).partition(":")
    config = load_file(resolve(path), arg or None)
    apply_overrides(config, overrides or {})
    validate(config)
    return config


def field_names(config: ml_collections.ConfigDict) -> set[str]:
    """Every dotted field name of `config`, leaves and sub-configs."""
    return set(_flat_values(config)) | _node_names(config)


def _parent(tree: Any, name: str, create: bool = False) -> tuple[Any, str]:
    """(the mapping that holds dotted field `name`, its last part); the one walk of a dotted
    name. With `create`, missing groups are made (of `tree`'s type); a leaf on the way is a
    KeyError."""
    *groups, last = name.split(".")
    for part in groups:
        if create and part not in tree:
            tree[part] = type(tree)()
        tree = tree[part]
        if not isinstance(tree, (Mapping, ml_collections.ConfigDict)):
            raise KeyError(name)
    return tree, last


def field_value(config: Any, name: str) -> Any:
    """The value of dotted field `name` (a KeyError if there is none)."""
    parent, last = _parent(config, name)
    return parent[last]


def set_field(config: Any, name: str, value: Any, create: bool = False) -> None:
    """Sets dotted field `name` (with `create`, making the groups it needs)."""
    parent, last = _parent(config, name, create)
    parent[last] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets dotted fields with ml_collections' type checks; a bool is never a number."""
    names = field_names(config)
    for name, value in overrides.items():
        if name not in names:
            raise UserError(
                f"unknown config field {name}{did_you_mean(name, _flat_values(config))}"
            )
        old = field_value(config, name)
        if isinstance(old, tuple):
            value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        elif isinstance(value, bool) and not isinstance(old, bool):
            raise UserError(f"config.{name}={value!r}: expected {type(old).__name__}, got bool")
        try:
            with config.unlocked():
                set_field(config, name, value)
        except (TypeError, ValueError):
            raise UserError(
                f"config.{name}={value!r}: expected {type(old).__name__}, "
                f"got {type(value).__name__}"
            ) from None


# ----------------------------------------------------------------------------- dicts


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-safe nested dict (tuples become lists)."""
    return json.loads(config.to_json())


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields whose values differ between two `to_dict` configs."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def from_dict(d: Any, where: str = "config") -> ml_collections.ConfigDict:
    """A config saved as JSON by a run, back as a ConfigDict (lists become tuples); fields
    added since it was saved take their defaults."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object, found {type(d).__name__}")

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(x) if isinstance(x, list) else x

    base = to_dict(get_config())
    merged = {**flatten(base), **flatten(tuples(d))}
    out: dict[str, Any] = {}
    for dotted, value in merged.items():
        try:
            set_field(out, dotted, value, create=True)
        except KeyError:  # {"seed": {"a": 1}}: not a group of fields.
            raise UserError(f"{where}: unknown config field {dotted}") from None
    return ml_collections.ConfigDict(tuples(out))


def _flat_values(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, (Mapping, ml_collections.ConfigDict)):
            out.update(_flat_values(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _node_names(config: Mapping[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in config.items():
        if isinstance(v, (Mapping, ml_collections.ConfigDict)):
            out |= {f"{prefix}{k}", *_node_names(v, f"{prefix}{k}.")}
    return out


def _missing_message(where: str, missing: list[str]) -> str:
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    return (
        f"{where} lacks field(s) {shown}: start from mnist_jax.config.get_config() "
        "and override what differs"
    )


def as_recorded(config: ml_collections.ConfigDict, model: Any = None) -> tuple[Any, Any]:
    """(`config` as a run records it, the module to hand the driver or None): data paths and a
    model file's path absolute (against the current directory), the file's SHA-256, a module
    `model` from Python named (models.record): config.json names the same inputs from anywhere."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for field in ("dir", "train_file", "test_file"):
            value = config.data.get(field, "")
            if value:
                config.data[field] = os.path.abspath(os.path.expanduser(value))
        config.model, model = models.record(config.model, model)
    return config, model
