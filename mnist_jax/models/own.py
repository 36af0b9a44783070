"""Your own model (see the contract in `mnist_jax.models`): `config.model.name` as
`path/to/file.py:ClassName` or `package.module:ClassName`, loaded, built and checked here.

A model file is recorded by its absolute path and the SHA-256 of its bytes
(`config.model.file_sha256`); a reader whose file has changed since is refused. A module given
to `mj.train(model=...)` is recorded as `module:QualName` when that import finds the same
class, and otherwise as `<module.QualName>`, which readers refuse to rebuild, saying why.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.errors import UserError, did_you_mean
from mnist_jax.files import NUM_PIXELS
from mnist_jax.inputs import check_file, read_file

MODULE_PREFIX = "mnist_jax_own_model_"  # sys.modules name of a loaded model file, + its hash.
MAX_FILE_BYTES = 16 << 20
_QUAL = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_MODULE_SPEC = re.compile(rf"(?P<target>{_QUAL}):(?P<qual>{_QUAL})")
_FILE_SPEC = re.compile(rf"(?P<target>.+\.py):(?P<qual>{_QUAL})")
_GIVEN = re.compile(r"<(?P<qual>[\w.]+(?:<locals>[\w.]+)*)>")  # <module.QualName>
SPEC_HELP = "path/to/file.py:ClassName or package.module:ClassName"
# Flax's `sow` collection: per-call outputs, not state carried from step to step.
NOT_STATE = ("intermediates",)
# What running the user's code may raise that is its failure: an exception, or sys.exit()
# (KeyboardInterrupt stays an interrupt).
CODE_ERRORS = (Exception, SystemExit)


class Spec(NamedTuple):
    kind: str  # "file", "module" or "given" (passed to mj.train, not importable).
    target: str  # The file's path or the module's name ("" for given).
    qual: str  # The class's qualified name in it.


def parse(name: str) -> Spec | None:
    """The Spec that `config.model.name` spells, or None when it spells none."""
    for kind, pattern in (("file", _FILE_SPEC), ("module", _MODULE_SPEC), ("given", _GIVEN)):
        m = pattern.fullmatch(name)
        if m:
            return Spec(kind, m.groupdict().get("target", ""), m["qual"])
    return None


def parse_kwargs(text: str) -> dict[str, Any] | None:
    """`config.model.kwargs` ('' or a dict literal with identifier keys) as a dict, or None."""
    if not text.strip():
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(value, dict) and all(isinstance(k, str) and k.isidentifier() for k in value):
        return value
    return None


def file_sha256(path: str) -> str:
    """The SHA-256 of a model file (which must be a regular file)."""
    return hashlib.sha256(read_file(path, MAX_FILE_BYTES, gunzip=False)).hexdigest()


def recorded(name: str) -> tuple[str, str]:
    """(model.name, model.file_sha256) as a run records them: a file's absolute path and hash."""
    spec = parse(name)
    if spec is None or spec.kind != "file":
        return name, ""
    path = os.path.abspath(os.path.expanduser(spec.target))
    _check(name, path)
    return f"{path}:{spec.qual}", file_sha256(path)


def _check(name: str, path: str) -> None:
    try:
        check_file(path)
    except UserError as e:
        raise UserError(f"config.model.name={name!r}: model file {e}") from None


def load_class(name: str, sha256: str = "") -> type[nn.Module]:
    """The Linen module class that `config.model.name` names; every problem is one UserError."""
    spec = parse(name)
    if spec is None:
        raise UserError(f"config.model.name={name!r}: expected {SPEC_HELP}")
    if spec.kind == "given":
        raise UserError(
            f"config.model.name={name!r}: this model was passed to mj.train() in Python and "
            "cannot be rebuilt from the run directory; define it in a file or an importable "
            f"module and train with model.name={SPEC_HELP}"
        )
    module = _load_file(name, spec.target, sha256) if spec.kind == "file" else _import(name, spec)
    obj = _attribute(module, spec.qual)
    if obj is None:
        classes = [k for k, v in vars(module).items() if isinstance(v, type)]
        where = spec.target if spec.kind == "file" else f"module {spec.target}"
        raise UserError(
            f"config.model.name={name!r}: {where} has no {spec.qual}"
            + (did_you_mean(spec.qual, classes) or f" (classes there: {', '.join(classes)})")
        )
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UserError(
            f"config.model.name={name!r}: {spec.qual} is a {type(obj).__name__}, not a "
            "flax.linen.Module class"
        )
    return obj


def check_given(given: Any) -> None:
    """A UserError unless `given` (a `model=` argument) is a Linen module class or instance."""
    if isinstance(given, nn.Module) or (isinstance(given, type) and issubclass(given, nn.Module)):
        return
    shown = " ".join(repr(given).split())  # One line, whatever the repr.
    raise UserError(
        f"model={shown:.80}: expected a flax.linen.Module class or instance, got a "
        f"{type(given).__name__}"
    )


def check_agrees(name: str, kwargs_text: str, given: Any) -> None:
    """A UserError when `config.model.name` (`name`) names your own model and `given` (a
    `model=` argument) is another class, or is an instance whose fields differ from what
    `config.model.kwargs` sets: two answers to one question. A shipped family's name is no
    such answer: `given` replaces it."""
    spec = parse(name)
    if spec is None:
        return
    if spec.kind == "file":  # A file that is not there is named as such.
        _check(name, os.path.abspath(os.path.expanduser(spec.target)))
    cls = given if isinstance(given, type) else type(given)
    if not _names(spec, cls):
        raise UserError(
            f"model={cls.__module__}.{cls.__qualname__} and config.model.name={name!r} name "
            "two different models: pass one (model= replaces a shipped family's name only)"
        )
    kwargs = parse_kwargs(kwargs_text)
    fields = None if isinstance(given, type) else given_kwargs(given)
    if not isinstance(given, type) and kwargs and kwargs != fields:
        shown = f"{cls.__qualname__}(**{fields!r})" if fields is not None else cls.__qualname__
        raise UserError(
            f"config.model.kwargs={kwargs_text!r} and the instance model={shown} set its "
            "fields differently: pass the class with config.model.kwargs, or the instance alone"
        )


def _names(spec: Spec, cls: type) -> bool:
    """Whether `spec` names the class `cls`."""
    if spec.kind == "given":
        return spec.qual == f"{cls.__module__}.{cls.__qualname__}"
    if spec.kind == "module":  # Only a module imported already is looked in: no user code runs.
        return _attribute(sys.modules.get(spec.target), spec.qual) is cls
    where = getattr(sys.modules.get(cls.__module__), "__file__", None)
    try:
        same_file = where is not None and os.path.samefile(os.path.expanduser(spec.target), where)
    except OSError:
        return False
    return same_file and spec.qual == cls.__qualname__


def _attribute(module: Any, qual: str) -> Any:
    """`module.a.b` for qual 'a.b', or None."""
    obj = module
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj


def _load_file(name: str, path: str, sha256: str) -> Any:
    _check(name, path)
    now = file_sha256(path)
    if sha256 and now != sha256:
        raise UserError(
            f"model file {path} has changed since this run trained (SHA-256 {sha256[:12]}... "
            f"then, {now[:12]}... now): put back the version it trained with"
        )
    module_name = MODULE_PREFIX + now[:16]
    if module_name in sys.modules:  # The same bytes, loaded before: the same classes.
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"config.model.name={name!r}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # As import does: dataclasses look their module up.
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[module_name]
        if not isinstance(e, CODE_ERRORS):
            raise
        raise UserError(f"cannot import model file {path}: {_one_line(e)}") from None
    return module


def _import(name: str, spec: Spec) -> Any:
    try:
        return importlib.import_module(spec.target)
    except CODE_ERRORS as e:
        raise UserError(
            f"config.model.name={name!r}: cannot import {spec.target}: {_one_line(e)}"
        ) from None


def _one_line(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def build(
    name: str, model: type[nn.Module] | nn.Module, kwargs: dict[str, Any], num_classes: int
) -> nn.Module:
    """`model` (a class, built with `kwargs`, or an instance) with `num_classes` if that is one
    of its fields, checked to map (n, 784) images to (n, num_classes) logits."""
    fields = {f.name for f in dataclasses.fields(model) if f.init} - {"parent", "name"}
    if "num_classes" in kwargs:
        raise UserError("config.model.kwargs: num_classes is set from the data; remove it")
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise UserError(
            f"config.model.kwargs: {unknown[0]!r} is not a field of {name} "
            f"(its fields: {', '.join(sorted(fields - {'num_classes'})) or 'none'})"
            + did_you_mean(unknown[0], fields - {"num_classes"})
        )
    classes = {"num_classes": num_classes} if "num_classes" in fields else {}
    try:
        module = model(**kwargs, **classes) if isinstance(model, type) else model.clone(**classes)
    except CODE_ERRORS as e:
        raise UserError(f"cannot construct {name}: {_one_line(e)}") from None
    check_output(name, module, num_classes)
    return module


def output(module: nn.Module) -> Any:
    """What `module(images, train=False)` returns for (2, 784) float images, as shapes and
    dtypes (computed abstractly: no arrays are made)."""
    return _abstract_calls(module)[0]


def _abstract_calls(module: nn.Module) -> tuple[Any, Any, Any, Any]:
    """Abstractly, as the training step and evaluation call it on (2, 784) float images:
    (evaluation logits, variables from init, training logits, state the training call
    returns)."""
    keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}

    def calls(x):
        out, variables = module.init_with_output(keys, x, train=False)
        state = {k: v for k, v in variables.items() if k not in ("params", *NOT_STATE)}
        train_out, new_state = module.apply(
            {**state, "params": variables.get("params", {})}, x, train=True,
            rngs={"dropout": keys["dropout"]}, mutable=list(state),
        )  # fmt: skip
        return out, variables, train_out, new_state

    return jax.eval_shape(calls, jax.ShapeDtypeStruct((2, NUM_PIXELS), jnp.float32))


def check_output(name: str, module: nn.Module, num_classes: int) -> None:
    """A UserError unless `module(images, train=False)` and `module(images, train=True)` (as
    the training step calls it) map (2, 784) float images to (2, num_classes) float logits,
    it declares parameters, and the training call returns its state as init made it."""
    try:
        out, variables, train_out, new_state = _abstract_calls(module)
    except CODE_ERRORS as e:
        raise UserError(
            f"{name}: calling it as module(images, train=False) and module(images, train=True) "
            f"on (2, {NUM_PIXELS}) images failed: {_one_line(e)}"
        ) from None
    for train, logits in ((False, out), (True, train_out)):
        shape = getattr(logits, "shape", None)
        if shape != (2, num_classes) or not jnp.issubdtype(logits.dtype, jnp.floating):
            got = f"{shape} {logits.dtype}" if shape is not None else type(logits).__name__
            raise UserError(
                f"{name}: returns {got} for (2, {NUM_PIXELS}) images with train={train}; the "
                f"contract is float logits of shape (n, num_classes) = (2, {num_classes})"
            )
    if not jax.tree_util.tree_leaves(variables.get("params", {})):
        raise UserError(f"{name}: declares no parameters (nothing to train)")
    state = {k: v for k, v in variables.items() if k not in ("params", *NOT_STATE)}
    shapes = [jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t) for t in (new_state, state)]
    if shapes[0] != shapes[1]:
        raise UserError(
            f"{name}: the training call changes the structure, shapes or dtypes of its state "
            f"({', '.join(state) or 'none'}) from what init made; keep them as init makes them"
        )


def import_path(cls: type) -> str | None:
    """`module:QualName` (or `file.py:QualName` for a loaded model file) that finds `cls`
    again in another process, or None when nothing would."""
    module = sys.modules.get(cls.__module__)
    if cls.__module__.startswith(MODULE_PREFIX) and getattr(module, "__file__", None):
        return f"{module.__file__}:{cls.__qualname__}"
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    try:
        obj = _attribute(importlib.import_module(cls.__module__), cls.__qualname__)
    except Exception:
        return None
    return f"{cls.__module__}:{cls.__qualname__}" if obj is cls else None


def given_kwargs(module: nn.Module) -> dict[str, Any] | None:
    """An instance's constructor fields that differ from their defaults (not num_classes), or
    None when one is not a Python literal (then config.model.kwargs cannot say it)."""
    out = {}
    for f in dataclasses.fields(module):
        if not f.init or f.name in ("parent", "name", "num_classes"):
            continue
        value = getattr(module, f.name)
        if f.default is not dataclasses.MISSING and _same(value, f.default):
            continue
        out[f.name] = value
    try:
        return out if ast.literal_eval(repr(out)) == out else None
    except (ValueError, SyntaxError):
        return None


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False
