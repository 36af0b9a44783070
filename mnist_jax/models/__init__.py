"""The classifiers: shipped model families by name, and your own Flax module.

**The model contract** (the shipped models follow it; your own must): a `flax.linen.Module`
called as `module(images, train=bool)`, where `images` are float32 (n, 784) in [0, 1] (a 28x28
image flattened row by row; reshape inside the module), returning float logits
(n, num_classes). If `num_classes` is one of its dataclass fields it is set from the data
(else its logits' width must be the data's class count).
`train` is True in the training step (dropout draws from the `dropout` rng) and False in
evaluation. A module may declare mutable collections besides `params` (BatchNorm's
`batch_stats`, with `use_running_average=not train`). Its other constructor fields keep their
defaults unless `config.model.kwargs` sets them: a Python dict literal such as
"{'width': 64}".

`config.model.name` is a shipped family (`linear`, `mlp`, `cnn`, `bn_cnn`, `lenet5`: one
module each here, which owns its config fields, their rules and docs, and its cross-field rules
`check`, and builds the module with `build`), or your own as `path/to/file.py:ClassName` or
`package.module:ClassName` (loaded and checked in `models.own`). `mj.train(config, workdir,
model=...)` takes a module class or instance from Python: it replaces a shipped family's name
and must agree with your own's (`own.check_agrees`). A new shipped family is one module
here (NAME, FIELDS, check, build) added to FAMILIES, plus a config in configs/.

Linen keeps parameters as a plain pytree outside the module, so the training step stays a pure
function of (state, batch) that `jax.jit`, `lax.scan`/`fori_loop`, `jax.vmap` (sweeps) and
sharding (data parallelism) take as it is.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from mnist_jax.errors import UserError
from mnist_jax.fields import FieldSpec
from mnist_jax.models import bn_cnn, cnn, common, lenet5, linear, mlp, own
from mnist_jax.models.bn_cnn import BNCNN
from mnist_jax.models.cnn import CNN, CONV_IMPLS, resolve_conv_impl
from mnist_jax.models.common import KERNEL_INITS
from mnist_jax.models.linear import Linear
from mnist_jax.models.mlp import MLP

FAMILIES = {f.NAME: f for f in (linear, mlp, cnn, bn_cnn, lenet5)}
MODELS = tuple(FAMILIES)


def _name_rule(v: Any) -> str | None:
    if isinstance(v, str) and (v in FAMILIES or own.parse(v) is not None):
        return None
    return f"choose one of {', '.join(MODELS)}, or your own as {own.SPEC_HELP}"


def _kwargs_rule(v: Any) -> str | None:
    if isinstance(v, str) and own.parse_kwargs(v) is not None:
        return None
    return "must be a Python dict literal of your model's fields, e.g. \"{'width': 64}\""


def _sha_rule(v: Any) -> str | None:
    ok = isinstance(v, str) and (v == "" or (len(v) == 64 and set(v) <= set("0123456789abcdef")))
    return None if ok else "must be empty or a SHA-256 in hex (the run records it)"


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "model.name",
        "mlp",
        _name_rule,
        f"{' | '.join(MODELS)} | your own: file.py:Class or module:Class.",
    ),
    FieldSpec("model.kwargs", "", _kwargs_rule, "Your own model's fields, e.g. \"{'width': 64}\"."),
    FieldSpec(
        "model.file_sha256", "", _sha_rule, "Recorded by the run: SHA-256 of model.name's file."
    ),
    *common.FIELDS,
    *(f for family in FAMILIES.values() for f in family.FIELDS),
)


# The fields only the shipped families read: each family's own (FieldSpec.owner) and those they
# share (common.FIELDS). Your own model reads model.name, model.kwargs and model.file_sha256.
SHIPPED_ONLY = frozenset(
    f.name for f in FIELDS if f.owner in FAMILIES or f in common.FIELDS
)  # fmt: skip


def applies(field: str, model_name: str) -> bool:
    """Whether the config field `field` is read when config.model.name is `model_name`: every
    field for a shipped family, all but SHIPPED_ONLY for your own model."""
    return model_name in FAMILIES or field not in SHIPPED_ONLY


def check(model_config: ml_collections.ConfigDict) -> None:
    """The rules of `config.model`'s fields, then the cross-field ones: the family's own, and
    no field that only your own model reads set for a shipped one (a UserError naming it)."""
    for f in FIELDS:
        key = f.name.removeprefix("model.")
        why = f.check(model_config[key]) if key in model_config else None
        if why:
            raise UserError(f"config.{f.name}={model_config[key]!r}: {why}")
    name = model_config.name
    if name in FAMILIES:
        for field in ("kwargs", "file_sha256"):
            if model_config.get(field, ""):
                raise UserError(
                    f"config.model.{field} is read only by your own model "
                    f"(model.name={own.SPEC_HELP}), not by {name}; unset it"
                )
        FAMILIES[name].check(model_config)
    elif model_config.get("file_sha256", "") and own.parse(name).kind != "file":
        raise UserError("config.model.file_sha256 is recorded for a model file only; unset it")


def create_model(
    model_config: ml_collections.ConfigDict, num_classes: int = 10, given: Any = None
) -> nn.Module:
    """The module that `config.model` describes (or `given`, a module class or instance passed
    to mj.train), with `num_classes` outputs; your own is checked against the contract."""
    check(model_config)
    name = model_config.name
    if given is None and name in FAMILIES:
        return FAMILIES[name].build(model_config, num_classes)
    kwargs = own.parse_kwargs(model_config.get("kwargs", ""))
    if given is None:
        given = own.load_class(name, model_config.get("file_sha256", ""))
    return own.build(name, given, kwargs if isinstance(given, type) else {}, num_classes)


def record(
    model_config: ml_collections.ConfigDict, given: Any = None
) -> tuple[ml_collections.ConfigDict, Any]:
    """(config.model as a run records it, the module the driver must be handed or None).

    A model file is named by its absolute path with its SHA-256. A module `given` from Python
    replaces a shipped family's name (said in a log line) and must agree with your own model's
    name and kwargs (own.check_agrees); it is named by its import path with its non-default
    fields in model.kwargs when that rebuilds it (then nothing needs handing over); otherwise by
    `<module.QualName>`, and handed over."""
    model_config = model_config.copy_and_resolve_references()
    with model_config.unlocked():
        if given is not None:
            own.check_given(given)
            own.check_agrees(model_config.name, model_config.kwargs, given)
            cls = given if isinstance(given, type) else type(given)
            if model_config.name in FAMILIES:
                logging.info(
                    "model: %s.%s given to mj.train replaces config.model.name=%r (the %s "
                    "fields do not apply)", cls.__module__, cls.__qualname__, model_config.name,
                    model_config.name,
                )  # fmt: skip
            path = own.import_path(cls)
            kwargs = (
                own.parse_kwargs(model_config.kwargs) if cls is given else own.given_kwargs(given)
            )
            rebuilt = path is not None and kwargs is not None
            model_config.name = path if rebuilt else f"<{cls.__module__}.{cls.__qualname__}>"
            model_config.kwargs = repr(kwargs) if rebuilt and kwargs else ""
            given = None if rebuilt else given
        model_config.name, model_config.file_sha256 = own.recorded(model_config.name)
    return model_config, given


def num_classes(model: nn.Module) -> int:
    """The model's class count: its `num_classes` field, or (your own model without one) the
    width of its logits."""
    n = getattr(model, "num_classes", None)
    return int(n) if n is not None else int(own.output(model).shape[-1])


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(jnp.size(p)) for p in jax.tree_util.tree_leaves(params))


__all__ = [
    "BNCNN",
    "CNN",
    "CONV_IMPLS",
    "FAMILIES",
    "FIELDS",
    "KERNEL_INITS",
    "MLP",
    "MODELS",
    "SHIPPED_ONLY",
    "Linear",
    "applies",
    "check",
    "count_params",
    "create_model",
    "num_classes",
    "record",
    "resolve_conv_impl",
]
