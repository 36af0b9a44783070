"""Hyperparameter sweeps, many runs in one compiled program.

    python -m mnist_jax.sweep --config=configs/dnn.py --workdir=runs/sweep \
        --sweep='optimizer.learning_rate=0.003,0.01,0.03,0.1' --sweep='seed=0,1,2'

The members are the cartesian product of the --sweep values (or of the config's own `sweep`
tuple, as in configs/linear_sweep.py). Fields that leave every array shape alone (learning
rate, clip norm, weight decay, seed) live in the train state: a group of members that differ
only in them trains as one jitted program over a leading member axis (`vmap` on accelerators,
`lax.map` on CPU, see `step.member_axis`), `--max_parallel` members at a time. Any other field
(hidden units, batch size, num_steps, dropout rate, ...) starts a new group. Every member
writes what a single run writes into <workdir>/<member>/ and equals that single run to the bit
on CPU (tests/test_sweep.py). The sweep writes sweep.csv, sweep.json and sweep.png, sorted by
validation accuracy; members finished by an earlier sweep into the same workdir are kept.
"""

from __future__ import annotations

import ast
import csv
import io
import itertools
import re
import time
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags, logging

from mnist_jax import cli, config as config_lib, driver, plot
from mnist_jax.errors import UserError
from mnist_jax.rundir import RunDir

# Fields a vmapped group may vary: they are values in the train state, not shapes or loops.
VMAPPED = ("optimizer.learning_rate", "optimizer.clip_norm", "optimizer.weight_decay", "seed")


def parse_values(field: str, text: str, base: ml_collections.ConfigDict) -> list[Any]:
    """'0.1,0.3' -> [0.1, 0.3]; '(64,),(128,)' -> [(64,), (128,)]; 'sgd,adam' -> names.
    Values take the type of the base config's field."""
    try:
        current = _get(base, field)
    except (KeyError, AttributeError):
        raise UserError(f"--sweep {field}: the config has no field {field!r}") from None
    try:
        values = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):  # Names (sgd,adam), or inf/nan: one value at a time.
        values = [_literal(v.strip()) for v in text.split(",")]
    if not values:
        raise UserError(f"--sweep {field}=: no values")
    kind = type(current)
    out = []
    for v in values:
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if kind is tuple and isinstance(v, int):
            v = (v,)
        if not isinstance(v, kind):
            raise UserError(f"--sweep {field}={text}: {v!r} is not a {kind.__name__}")
        out.append(v)
    return out


def _literal(text: str) -> Any:
    """A Python literal, a float such as 'inf', or the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return float(text)
    except ValueError:
        return text


def members(
    config: ml_collections.ConfigDict, specs: list[str], workdir: str | Path = "."
) -> list[driver.Member]:
    """The cartesian product of `specs` ('field=v1,v2'), each applied to `config`; member
    `name` trains in `workdir/name`."""
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--sweep {spec!r}: expected field=value1,value2,...")
        field, text = spec.split("=", 1)
        if field.strip() in [f for f, _ in axes]:
            raise UserError(f"--sweep {field.strip()} is given twice; list its values once")
        axes.append((field.strip(), parse_values(field.strip(), text, config)))
    out = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        overrides = dict(zip((f for f, _ in axes), combo, strict=True))
        c = config.copy_and_resolve_references()
        with c.unlocked():
            if "sweep" in c:
                del c["sweep"]
        for field, value in overrides.items():
            _set(c, field, value)
        config_lib.validate(c)
        name = _name(overrides)
        out.append(driver.Member(c, RunDir(Path(workdir) / name), name, overrides))
    return out


def _get(c: ml_collections.ConfigDict, field: str) -> Any:
    for part in field.split("."):
        c = c[part]
    return c


def _set(c: ml_collections.ConfigDict, field: str, value: Any) -> None:
    *path, last = field.split(".")
    for part in path:
        c = c[part]
    c[last] = value


def _name(overrides: dict[str, Any]) -> str:
    text = "-".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "", text.replace(" ", ""))


def group_key(config: ml_collections.ConfigDict) -> str:
    """Members with equal keys can share one vmapped program."""
    flat = config_lib.flatten(config_lib.to_dict(config))
    for field in VMAPPED:
        flat.pop(field)
    # Whether clipping / weight decay are on changes the optimizer's structure.
    flat["clip"] = config.optimizer.clip_norm > 0
    flat["decay"] = config.optimizer.weight_decay > 0
    return repr(sorted(flat.items()))


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    specs: list[str],
    max_parallel: int = 32,
    vectorize: str = "auto",
    *,
    progress: bool | None = None,
    fallback_checkpoint: bool = False,
) -> list[dict[str, Any]]:
    """Trains every member through the run driver (each resumes from its own checkpoint),
    writes each one's single-run outputs, and the sweep's tables and figure."""
    t0 = time.time()
    workdir = Path(workdir)
    all_members = members(config, specs, workdir)
    if len({m.name for m in all_members}) != len(all_members):
        raise UserError("--sweep values repeat: two members would share a directory")
    sweep_dir = RunDir(workdir)
    sweep_dir.check_writable()
    sweep_dir.check_kind("sweep")
    for m in all_members:
        sweep_dir.file(m.name)  # A member directory that links out of the sweep is refused.
    groups: dict[str, list[driver.Member]] = {}
    for m in all_members:
        groups.setdefault(group_key(m.config), []).append(m)
    logging.info("sweep: %d members in %d group(s)", len(all_members), len(groups))
    with sweep_dir:  # One sweep (or run) at a time in this directory; each member locks too.
        rows, kernels = _train_groups(
            groups, max_parallel, vectorize, progress, fallback_checkpoint, t0
        )
        rows.sort(key=lambda r: -(r["validation_accuracy"] or 0))
        _write_tables(rows, sweep_dir)
        plot.plot_sweep(rows, workdir, [f.split("=")[0] for f in specs], kernels=kernels)
    return rows


def _train_groups(groups, max_parallel, vectorize, progress, fallback_checkpoint, t0):
    """Each group through the driver; (table rows, each member's first-layer kernel)."""
    from mnist_jax import api

    rows, cache, kernels = [], {}, {}
    for group in groups.values():
        for i in range(0, len(group), max_parallel):
            outcomes = driver.run(
                group[i : i + max_parallel], vectorize=vectorize, progress=progress,
                data_cache=cache, t0=t0, fallback_checkpoint=fallback_checkpoint,
            )  # fmt: skip
            for outcome in outcomes:
                run = api.finish(outcome, t0)
                rows.append(_row(outcome.member, outcome.results))
                if run.params is not None:
                    kernels[outcome.member.name] = plot.first_layer_kernel(run.params)
    return rows, kernels


def _row(m: driver.Member, results: dict[str, Any]) -> dict[str, Any]:
    row = {"member": m.name, **{k: _plain(v) for k, v in m.overrides.items()}}
    for split in ("train", "validation", "test"):
        final = results.get("final", {}).get(split, {})
        row[f"{split}_accuracy"] = final.get("accuracy")
        row[f"{split}_log_loss"] = final.get("log_loss")
    row["diverged_at_step"] = results.get("diverged", {}).get("step")
    return row


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _write_tables(rows: list[dict[str, Any]], rundir: RunDir) -> None:
    rundir.write_json("sweep.json", rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    rundir.write_text("sweep.csv", text.getvalue())
    best = rows[0]
    logging.info(
        "best member %s: validation accuracy %.4f, test accuracy %.4f",
        best["member"],
        best["validation_accuracy"] or float("nan"),
        best["test_accuracy"] or float("nan"),
    )


def main(argv: list[str], overrides: dict[str, Any]) -> None:
    """The command line (flags defined under __main__, as in plot.py); it, not `run_sweep`,
    turns on JAX's compilation cache."""
    del overrides  # Already in the config.
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    config = f.config
    specs = list(f.sweep or []) or list(config.get("sweep", ()))
    if not specs:
        raise UserError("nothing to sweep: pass --sweep='field=v1,v2' (or set config.sweep)")
    if f.max_parallel < 1:
        raise UserError(f"--max_parallel={f.max_parallel}: must be positive")
    from mnist_jax import api

    api.enable_compilation_cache()
    rows = run_sweep(
        config, f.workdir, specs, f.max_parallel, f.vectorize,
        fallback_checkpoint=f.fallback_checkpoint,
    )  # fmt: skip
    for row in rows:
        acc = row["validation_accuracy"]
        print(row["member"], "diverged" if acc is None else f"validation accuracy {acc:.4f}")


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for the sweep; one subdirectory per member.")
    flags.DEFINE_multi_string("sweep", None, "field=v1,v2,... (repeatable: cartesian product).")
    flags.DEFINE_integer("max_parallel", 32, "Members trained at once in one vmapped program.")
    flags.DEFINE_string("vectorize", "auto", "vmap, map, or auto (map on CPU, else vmap).")
    flags.DEFINE_bool("fallback_checkpoint", False, "Resume from an older intact checkpoint.")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
