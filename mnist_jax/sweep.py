"""Hyperparameter sweeps, many runs in one compiled program.

    python -m mnist_jax.sweep --config=configs/dnn.py --workdir=runs/sweep \
        --sweep='optimizer.learning_rate=0.003,0.01,0.03,0.1' --sweep='seed=0,1,2'

The members are the cartesian product of the --sweep values (or of the config's own `sweep`
tuple, as in configs/linear_sweep.py). Fields that leave every array shape alone (learning
rate, clip norm, weight decay, seed) live in the train state: a group of members that differ
only in them trains as one jitted program over a leading member axis (`vmap` on accelerators,
`lax.map` on CPU, see `member_axis`), `--max_parallel` members at a time. Any other field
(hidden units, batch size, num_steps, dropout rate, ...) starts a new group. Every member
writes what a single run writes into <workdir>/<member>/ and equals that single run to the bit
on CPU (tests/test_sweep.py). The sweep writes sweep.csv, sweep.json and sweep.png, sorted by
validation accuracy; members finished by an earlier sweep into the same workdir are kept.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags, logging

from mnist_jax import (
    checkpoint,
    cli,
    config as config_lib,
    data as data_lib,
    metrics,
    models,
    train,
)
from mnist_jax.errors import UserError

# Fields a vmapped group may vary: they are values in the train state, not shapes or loops.
VMAPPED = ("optimizer.learning_rate", "optimizer.clip_norm", "optimizer.weight_decay", "seed")


@dataclasses.dataclass
class Member:
    """One run of the sweep: its name (its directory), overrides and full config."""

    name: str
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict


def parse_values(field: str, text: str, base: ml_collections.ConfigDict) -> list[Any]:
    """'0.1,0.3' -> [0.1, 0.3]; '(64,),(128,)' -> [(64,), (128,)]; 'sgd,adam' -> names.
    Values take the type of the base config's field."""
    try:
        current = _get(base, field)
    except (KeyError, AttributeError):
        raise UserError(f"--sweep {field}: the config has no field {field!r}") from None
    try:
        values = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        values = [v.strip() for v in text.split(",")]
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


def members(config: ml_collections.ConfigDict, specs: list[str]) -> list[Member]:
    """The cartesian product of `specs` ('field=v1,v2'), each applied to `config`."""
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--sweep {spec!r}: expected field=value1,value2,...")
        field, text = spec.split("=", 1)
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
        out.append(Member(_name(overrides), overrides, c))
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
) -> list[dict[str, Any]]:
    """Trains every member, writes each one's outputs and the sweep's tables and figure."""
    workdir = Path(workdir)
    all_members = members(config, specs)
    if len({m.name for m in all_members}) != len(all_members):
        raise UserError("--sweep values repeat: two members would share a directory")
    rows, todo, loaded = [], [], {}
    for m in all_members:
        member_dir = workdir / m.name
        train.prepare_workdir(m.config, member_dir, allow_change=False)
        done = member_dir / "results.json"
        if done.exists() and "final" in (results := metrics.read_json(done)):
            rows.append(_row(m, results, None))  # Finished by an earlier sweep: kept as is.
        else:
            metrics.MetricWriter(member_dir, tensorboard=False).truncate_after(0)
            todo.append(m)
    groups: dict[str, list[Member]] = {}
    for m in todo:
        groups.setdefault(group_key(m.config), []).append(m)
    logging.info(
        "sweep: %d members (%d already done) in %d group(s)",
        len(all_members),
        len(all_members) - len(todo),
        len(groups),
    )
    for group in groups.values():
        for i in range(0, len(group), max_parallel):
            rows += _train_group(group[i : i + max_parallel], workdir, vectorize, loaded)
    rows.sort(key=lambda r: -(r["validation_accuracy"] or 0))
    _write_tables(rows, workdir)
    from mnist_jax import plot

    plot.plot_sweep(rows, workdir, [f.split("=")[0] for f in specs])
    return rows


def member_axis(train_chunk: Callable[..., Any], vectorize: str) -> Callable[..., Any]:
    """`train_chunk(state, images, labels, first, n, rows)` over a leading member axis of
    `state` and `rows`: `vmap` (members in parallel: the speed on accelerators) or `map`
    (members one after another inside the same program). On CPU, XLA compiles a vmapped
    matmul of 4 or more members with other roundings than a single run's, so `auto` maps
    there, keeping every member equal to its single run to the bit; elsewhere it vmaps."""
    if vectorize == "auto":
        vectorize = "map" if jax.default_backend() == "cpu" else "vmap"
    if vectorize == "vmap":
        return jax.vmap(train_chunk, in_axes=(0, None, None, None, None, 0))
    if vectorize != "map":
        raise UserError(f"--vectorize={vectorize}: choose auto, vmap or map")

    def mapped(state, images, labels, first, n, rows):
        return jax.lax.map(
            lambda sr: train_chunk(sr[0], images, labels, first, n, sr[1]), (state, rows)
        )

    return mapped


def _train_group(
    group: list[Member], workdir: Path, vectorize: str, loaded: dict[str, tuple]
) -> list[dict[str, Any]]:
    """Trains members that differ only in VMAPPED fields as one program over a member axis.
    `loaded` caches the data of each distinct `config.data` across groups."""
    t_start = time.time()
    first = group[0].config
    data_key = repr(config_lib.to_dict(first.data))
    if data_key not in loaded:
        loaded[data_key] = data_lib.load_train_test(first.data)
    train_full, test, source, location = loaded[data_key]
    datasets = {}  # One train/validation split per seed, as a single run would make it.
    for m in group:
        if m.config.seed not in datasets:
            key = train.rng_stream(m.config.seed, train.SPLIT)
            datasets[m.config.seed] = data_lib.make_dataset(
                train_full, test, source, location, first.data.validation_size, key
            )
    dataset = datasets[first.seed]
    plan = train.make_plan(first, len(dataset.train))
    model = models.create_model(first.model, dataset.num_classes)
    engine = train.Engine(
        model,
        train.make_optimizer(first.optimizer, plan.num_steps),
        batch_size=first.batch_size,
        num_train=len(dataset.train),
    )
    images = engine.put_replicated(train_full.images)
    labels = engine.put_replicated(train_full.labels)
    member_rows = jnp.stack(
        [engine.put_replicated(datasets[m.config.seed].train_rows) for m in group]
    )
    splits = {s: engine.put_splits(d, first.eval_batch_size) for s, d in datasets.items()}
    states = [
        jax.jit(train.init_state, static_argnums=(0, 1))(
            model, train.make_optimizer(m.config.optimizer, plan.num_steps), m.config.seed
        )
        for m in group
    ]
    state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
    chunk = jax.jit(member_axis(engine._train_chunk, vectorize))
    t0 = time.time()
    compiled = chunk.lower(state, images, labels, 0, 0, member_rows).compile()
    compile_s = time.time() - t0
    writers = [metrics.MetricWriter(workdir / m.name, m.config.tensorboard) for m in group]
    diverged: dict[int, int] = {}
    logging.info(
        "group of %d: %s; compiled in %.2fs", len(group), [m.name for m in group], compile_s
    )

    def member(k: int, state) -> train.TrainState:
        return jax.tree_util.tree_map(lambda x: x[k], state)

    def run_chunk(first_step: int, n: int) -> dict[str, Any]:
        nonlocal state
        state, stats = compiled(state, images, labels, first_step, n, member_rows)
        return jax.device_get(stats)

    def after_chunk(step: int, n: int, stats: dict[str, Any], elapsed: float) -> None:
        for k, m in enumerate(group):
            bad = int(stats["nonfinite_step"][k])
            if bad >= 0 and k not in diverged:
                diverged[k] = bad
                logging.warning("member %s diverged at step %d", m.name, bad)
            if step in plan.eval_steps and k not in diverged:
                member_stats = {key: v[k] for key, v in stats.items()}
                member_splits = splits[m.config.seed]
                train.log_period(
                    engine, member(k, state), member_splits, writers[k], plan, step,
                    member_stats, n, elapsed / len(group),
                )  # fmt: skip

    timing = train.train_loop(plan, 0, run_chunk, after_chunk, lambda: None)
    timing.train_s /= len(group)  # Each member's share of the time.
    out = []
    for k, m in enumerate(group):
        member_dir = workdir / m.name
        writers[k].close()
        final_state = member(k, state)
        metrics.write_json(member_dir / "config.json", config_lib.to_dict(m.config))
        if k in diverged:
            metrics.write_json(
                member_dir / "results.json", {"diverged": train.diverged_record(diverged[k])}
            )
            out.append(_row(m, None, diverged[k]))
            continue
        ds = datasets[m.config.seed]
        final = {
            name: engine.eval_split(final_state.params, split)
            for name, split in splits[m.config.seed].items()
        }
        results = train.summarize(
            m.config, ds, plan, final_state, final, timing, t_start, compile_s
        )
        results["sweep_group_size"] = len(group)
        with checkpoint.Checkpointer(member_dir, m.config.checkpoints_to_keep) as ckpt:
            ckpt.save(plan.num_steps, final_state)
        metrics.write_json(member_dir / "results.json", results)
        out.append(_row(m, results, None))
    return out


def _row(m: Member, results: dict[str, Any] | None, diverged_at: int | None) -> dict[str, Any]:
    row = {"member": m.name, **{k: _plain(v) for k, v in m.overrides.items()}}
    for split in ("train", "validation", "test"):
        final = (results or {}).get("final", {}).get(split, {})
        row[f"{split}_accuracy"] = final.get("accuracy")
        row[f"{split}_log_loss"] = final.get("log_loss")
    row["diverged_at_step"] = diverged_at
    return row


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _write_tables(rows: list[dict[str, Any]], workdir: Path) -> None:
    metrics.write_json(workdir / "sweep.json", rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(workdir / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    best = rows[0]
    logging.info(
        "best member %s: validation accuracy %.4f, test accuracy %.4f",
        best["member"],
        best["validation_accuracy"] or float("nan"),
        best["test_accuracy"] or float("nan"),
    )


def main(argv: list[str]) -> None:
    """The command line (flags defined under __main__, as in plot.py)."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    config = f.config
    specs = list(f.sweep or []) or list(config.get("sweep", ()))
    if not specs:
        raise UserError("nothing to sweep: pass --sweep='field=v1,v2' (or set config.sweep)")
    if f.max_parallel < 1:
        raise UserError(f"--max_parallel={f.max_parallel}: must be positive")
    for row in run_sweep(config, f.workdir, specs, f.max_parallel, f.vectorize):
        acc = row["validation_accuracy"]
        print(row["member"], "diverged" if acc is None else f"validation accuracy {acc:.4f}")


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for the sweep; one subdirectory per member.")
    flags.DEFINE_multi_string("sweep", None, "field=v1,v2,... (repeatable: cartesian product).")
    flags.DEFINE_integer("max_parallel", 32, "Members trained at once in one vmapped program.")
    flags.DEFINE_string("vectorize", "auto", "vmap, map, or auto (map on CPU, else vmap).")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
