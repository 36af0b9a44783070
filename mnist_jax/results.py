"""What a run's results.json may hold, checked whenever it is read back.

A results.json is read by resume, eval, plot, predict's neighbours and `mj.load_run`; it may be
old, hand-edited or crafted, so it is input like any other. `check` refuses a value of the wrong
type or range in any field the code reads (one UserError naming the file and the field); fields
it does not know are kept and never read. A finished run's results hold `final.test`; a diverged
one's hold `diverged.step`. Rules are the config's (fields.py): they return None or why not.
"""

from __future__ import annotations

import math
from typing import Any

from mnist_jax.errors import UserError
from mnist_jax.fields import Int, Rule, Str, _is_real

SPLITS = ("train", "validation", "test")


def _optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def _number(lo: float = 0.0, hi: float = float("inf")) -> Rule:
    def check(v: Any) -> str | None:
        if not _is_real(v):
            return f"must be a number, not {type(v).__name__}"
        if not math.isfinite(v):
            return "must be finite (or null)"
        return None if lo <= v <= hi else f"must be in [{lo:g}, {hi:g}]"

    return check


def _list_of(rule: Rule, nonempty: bool = False) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, list) or (nonempty and not v):
            return f"must be a {'non-empty ' if nonempty else ''}list"
        return next((f"item {i} {why}" for i, x in enumerate(v) if (why := rule(x))), None)

    return check


def _dict_of(rule: Rule) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"must be an object, not {type(v).__name__}"
        return next((f"{k} {why}" for k, x in v.items() if (why := rule(x))), None)

    return check


def _record(fields: dict[str, Rule], required: tuple[str, ...] = ()) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"must be an object, not {type(v).__name__}"
        missing = [k for k in required if k not in v]
        if missing:
            return f"lacks {missing[0]}"
        return next((f"{k} {why}" for k, r in fields.items() if k in v and (why := r(v[k]))), None)

    return check


def _square(v: Any) -> str | None:
    why = _list_of(_list_of(Int(0)), nonempty=True)(v)
    if why:
        return why
    return None if all(len(row) == len(v) for row in v) else "must be a square matrix"


_SCORES = _record(
    {
        "log_loss": _optional(_number()),
        "accuracy": _optional(_number(0, 1)),
        "size": Int(0),
    },
    required=("log_loss", "accuracy", "size"),
)
_FINAL: Rule = _record({s: _SCORES for s in SPLITS}, required=("test",))
_RESOLVED_SOURCES = ("mnist", "idx", "csv", "tfds", "sample")  # What `auto` resolves to.

FIELDS: dict[str, Rule] = {
    "final": _FINAL,
    "diverged": _record({"step": Int(0), "message": Str()}, required=("step",)),
    "confusion_matrix": _square,
    "class_counts": _list_of(Int(0)),
    "data_source": lambda v: (
        None if v in _RESOLVED_SOURCES else (f"must be one of {', '.join(_RESOLVED_SOURCES)}")
    ),
    "data_location": Str(),
    "data_sizes": _dict_of(Int(0)),
    "num_classes": Int(1),
    "num_params": Int(0, 2**62),
    "num_steps": Int(0),
    "timing": _dict_of(_number()),
    "wall_time_s": _optional(_number()),
    "compile_time_s": _optional(_number()),
    "train_examples_per_sec": _optional(_number()),
    "devices": _list_of(Str()),
    "num_processes": Int(1),
    "versions": _dict_of(Str()),
    "sweep_group_size": Int(1),
    "resumed_from_step": _optional(Int(0)),
}


def check(obj: Any, where: str) -> dict[str, Any]:
    """`obj` if it is a results.json the code can read, else a UserError naming `where`."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    for key, rule in FIELDS.items():
        if key in obj and (why := rule(obj[key])):
            raise UserError(f"{where}: {key} {why}; fix it, or delete the file to rerun")
    if "final" in obj and "data_source" not in obj:
        raise UserError(f"{where}: a finished run's results lack data_source")
    matrix, classes = obj.get("confusion_matrix"), obj.get("num_classes")
    if matrix is not None and classes is not None and len(matrix) != classes:
        raise UserError(f"{where}: confusion_matrix is {len(matrix)}x{len(matrix)}, "
                        f"num_classes {classes}")  # fmt: skip
    names = obj.get("class_names")
    if names is not None and (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or (classes is not None and len(names) != classes)
        or (matrix is not None and len(names) != len(matrix))
    ):
        raise UserError(f"{where}: class_names must be one string per class; fix it, or delete "
                        "the file to rerun")  # fmt: skip
    return obj
