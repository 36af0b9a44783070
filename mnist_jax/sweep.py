"""Hyperparameter sweeps, many runs in one compiled program.

    python -m mnist_jax.sweep --config=configs/dnn.py --workdir=runs/sweep \
        --sweep='optimizer.learning_rate=0.003,0.01,0.03,0.1' --sweep='seed=0,1,2'

The members are the cartesian product of the --sweep values (or of the config's own `sweep`
tuple, as in configs/linear_sweep.py). Fields that leave every array shape alone (learning
rate, clip norm, weight decay, seed: `per_member` in the field table) live in the train
state: a group of members that differ only in them trains as one jitted program over a
leading member axis (`vmap` on accelerators, `lax.map` on CPU, see `step.member_axis`),
`--max_parallel` members at a time. Any other field
(hidden units, batch size, num_steps, dropout rate, ...) starts a new group. Every member
writes what a single run writes into <workdir>/<member>/ and equals that single run to the bit
on CPU (tests/test_sweep.py). On several devices a group's members are split over them
(`sharding.Placement.for_members`). The sweep writes sweep.csv, sweep.json and sweep.png,
sorted by validation accuracy; members finished by an earlier sweep into the same workdir are
kept. Values equal as the field's type (0.1 and 0.10, 0 and -0.0) are refused as repeats.

`--shard=I/N` trains members I, I+N, ... only, so that N processes (a SLURM array,
launch/sweep_array.sbatch) split one sweep. The rule for processes at once: the sweep
directory's lock is shared (shards run together; a single run there is kept out), each member
directory is locked by the process that trains it, and the tables are rewritten in turn
(`RunDir.serialized`) from every member finished so far by any process, so the last one to
end writes the whole sweep, as does any later run of the same sweep.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import itertools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import flags, logging

from mnist_jax import api, cli, config as config_lib, driver, plot, scores
from mnist_jax.errors import UserError
from mnist_jax.rundir import SWEEP, SWEEP_MARK, TABLES_LOCK, RunDir


def parse_values(field: str, text: str, base: ml_collections.ConfigDict) -> list[Any]:
    """'0.1,0.3' -> [0.1, 0.3]; '(64,),(128,)' -> [(64,), (128,)]; 'sgd,adam' -> names.
    Each value is parsed as `--config.FIELD=` parses it (`cli.parse_value`), to the type of
    the base config's field; a value given twice (equal as that type) is refused."""
    try:
        current = config_lib.field_value(base, field)
    except (KeyError, AttributeError):
        raise UserError(f"--sweep {field}: the config has no field {field!r}") from None
    if any(not v.strip() for v in text.split(",")):  # A stray comma: "0.1,", ",0.1", "0.1,,0.3".
        raise UserError(f"--sweep {field}={text}: an empty value (a stray comma?)")
    out = []
    for item in _items(text):
        try:
            v = cli.parse_value(item, current)
        except ValueError as e:
            raise UserError(f"--sweep {field}={text}: {_shown(item)} is not {e}") from None
        if isinstance(v, float) and v == 0:
            v = 0.0  # -0.0 is 0.0: one member, named 0.0.
        # Equal as the field's type (0.1 and 0.10, 0x10 and 16, -0.0 and 0); floats as the
        # float32 the step computes with (0.1 and 0.1000000001 train the same bits).
        if v in out or (isinstance(v, float) and np.float32(v) in [np.float32(o) for o in out]):
            raise UserError(f"--sweep {field}={text}: {v!r} is given twice; list each value once")
        out.append(v)
    return out


def _items(text: str) -> list[str]:
    """The values' texts: split at the commas between Python expressions ('(64,),(128,)' is two
    tuples; a quoted string is its text), else at every comma ('007,sgd')."""
    source = f"[{text}]"
    try:
        node = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        node = None
    if not isinstance(node, ast.List):
        return [v.strip() for v in text.split(",")]
    return [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str)
            else ast.get_source_segment(source, e) for e in node.elts]  # fmt: skip


def _shown(item: str) -> str:
    """A value as an error names it: a Python literal as written, other text quoted."""
    try:
        ast.literal_eval(item)
        return item
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return repr(item)


def spec_field(spec: str) -> str:
    """The field a --sweep spec ('field=v1,v2') names, as every reader of a spec reads it."""
    return spec.split("=", 1)[0].strip()


def members(
    config: ml_collections.ConfigDict, specs: list[str], workdir: str | Path = "."
) -> list[driver.Member]:
    """The cartesian product of `specs` ('field=v1,v2'), each applied to `config`; member
    `name` trains in `workdir/name`."""
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--sweep {spec!r}: expected field=value1,value2,...")
        field, text = spec_field(spec), spec.split("=", 1)[1]
        if field in [f for f, _ in axes]:
            raise UserError(f"--sweep {field} is given twice; list its values once")
        axes.append((field, parse_values(field, text, config)))
    out = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        overrides = dict(zip((f for f, _ in axes), combo, strict=True))
        c = config.copy_and_resolve_references()
        with c.unlocked():
            if "sweep" in c:
                del c["sweep"]
        config_lib.apply_overrides(c, overrides)
        config_lib.validate(c)
        name = _name(overrides)
        out.append(driver.Member(c, RunDir(Path(workdir) / name), name, overrides))
    return out


def _name(overrides: dict[str, Any]) -> str:
    text = "-".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "", text.replace(" ", ""))


def group_key(config: ml_collections.ConfigDict) -> str:
    """Members with equal keys can share one vmapped program: they differ only in fields the
    field table marks per_member, and agree on what of those fixes the optimizer's structure."""
    flat = config_lib.flatten(config_lib.to_dict(config))
    for field in config_lib.PER_MEMBER_FIELDS:
        value = flat.pop(field)
        if field in config_lib.STRUCTURE:
            flat[f"{field} structure"] = config_lib.STRUCTURE[field](value)
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
    shard: tuple[int, int] = (0, 1),
) -> list[dict[str, Any]]:
    """Trains this `shard` (index, count) of the members, every member by default, through
    the run driver (each resumes from its own checkpoint) and writes each one's single-run
    outputs; then the sweep's tables and figure of every member finished so far, by any shard."""
    t0 = time.time()
    index, count = check_shard(shard)
    workdir = Path(workdir)
    all_members = members(config, specs, workdir)
    if len({m.name for m in all_members}) != len(all_members):
        raise UserError("--sweep values repeat: two members would share a directory")
    sweep_dir = RunDir(workdir)
    sweep_dir.check_writable()
    sweep_dir.check_kind("sweep")
    _check_outputs(sweep_dir, all_members)
    for m in all_members:
        m.rundir.check_config(m.config, allow_change=False)  # Before any member trains.
    mine = all_members[index::count]
    groups: dict[str, list[driver.Member]] = {}
    for m in mine:
        groups.setdefault(group_key(m.config), []).append(m)
    part = f" (shard {index}/{count} of {len(all_members)})" if count > 1 else ""
    logging.info("sweep: %d members%s in %d group(s)", len(mine), part, len(groups))
    sweep_dir.lock(shared=True)  # Shards of a sweep train at once; a single run is kept out.
    try:
        with _marked(sweep_dir, specs):
            kernels = _train_groups(groups, max_parallel, vectorize, progress, fallback_checkpoint,
                                    t0)  # fmt: skip
        with sweep_dir.serialized():  # In turn: the last shard to finish sees every member.
            rows = _table(all_members, mine)
            if rows:
                _write_tables(rows, sweep_dir)
                fields = [spec_field(f) for f in specs]
                plot.plot_sweep(rows, workdir, fields, kernels=kernels)
    finally:
        sweep_dir.unlock()
    if len(rows) < len(all_members):
        logging.info("sweep.csv: %d of %d members finished; the other shards train the rest",
                     len(rows), len(all_members))  # fmt: skip
    return rows


@contextlib.contextmanager
def _marked(sweep_dir: RunDir, specs: list[str]) -> Iterator[None]:
    """Marks the directory as a sweep's (`SWEEP_MARK`) before any member is written, so an
    interrupted sweep is known as one; a sweep refused before any member leaves no mark."""
    mark = sweep_dir.file(SWEEP_MARK)
    marked = not mark.exists()
    if marked:
        sweep_dir.write_text(SWEEP_MARK, " ".join(specs) + "\n")
    try:
        yield
    except BaseException:
        if marked and sweep_dir.active and os.listdir(sweep_dir.path) == [SWEEP_MARK]:
            mark.unlink()
        raise


def _check_outputs(sweep_dir: RunDir, all_members: list[driver.Member]) -> None:
    """Every path the sweep will write, its members' included, before any is written."""
    figures = (TABLES_LOCK, SWEEP_MARK, SWEEP, "sweep.csv", "sweep.png", "first_layer_by_steps.png")
    sweep_dir.check_outputs(files=figures, dirs=tuple(m.name for m in all_members))
    for m in all_members:
        m.rundir.check_kind("member")
        m.rundir.check_outputs(m.config)
        if m.config.plots:
            plot.check_run_outputs(m.rundir.path)


def check_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    """'I/N' or (I, N) with integers 0 <= I < N; anything else is a one-line UserError."""
    text = shard if isinstance(shard, str) else "/".join(map(str, shard))
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", text)
    index, count = (int(match[1]), int(match[2])) if match else (-1, 0)
    if not 0 <= index < count:
        raise UserError(f"--shard={text}: expected I/N, integers with 0 <= I < N (e.g. 0/4)")
    return index, count


def _train_groups(groups, max_parallel, vectorize, progress, fallback_checkpoint, t0):
    """Each group through the driver; each trained member's first-layer kernel."""
    api.enable_compilation_cache()
    cache, kernels = {}, {}
    for group in groups.values():
        for i in range(0, len(group), max_parallel):
            outcomes = driver.run(
                group[i : i + max_parallel], vectorize=vectorize, progress=progress,
                data_cache=cache, t0=t0, fallback_checkpoint=fallback_checkpoint,
            )  # fmt: skip
            for outcome in outcomes:
                run = api.finish(outcome, t0)
                if run.params is not None:
                    kernels[outcome.member.name] = plot.first_layer_kernel(run.params)
    return kernels


def _table(all_members: list[driver.Member], mine: list[driver.Member]) -> list[dict[str, Any]]:
    """The rows of the members finished or diverged (by any process), best first. Another
    shard's member saved with other num_steps/num_epochs is still to resume: not a row."""
    rows, ours = [], {m.name for m in mine}
    for m in all_members:
        results = m.rundir.results() or {}
        if not (m.rundir.finished() or "diverged" in results):
            continue
        saved = m.rundir.saved_config()
        if m.name not in ours and saved is not None:
            differ = config_lib.differing_fields(
                config_lib.to_dict(saved), config_lib.to_dict(m.config)
            )
            if {"num_steps", "num_epochs"} & set(differ):
                continue
        rows.append(_row(m, results))
    rows.sort(key=lambda r: -(r["validation_accuracy"] or 0))
    return rows


def _row(m: driver.Member, results: dict[str, Any]) -> dict[str, Any]:
    row = {"member": m.name, **{k: _plain(v) for k, v in m.overrides.items()}}
    for split in ("train", "validation", "test"):
        final = results.get("final", {}).get(split, {})
        for metric in scores.of_kind(scores.SCALAR):  # log_loss, accuracy, ece, ...
            row[f"{split}_{metric.name}"] = final.get(metric.name)
    row["diverged_at_step"] = results.get("diverged", {}).get("step")
    return row


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _write_tables(rows: list[dict[str, Any]], rundir: RunDir) -> None:
    rundir.write_json(SWEEP, rows)
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
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    config = f.config
    specs = list(f.sweep or []) or list(config.get("sweep", ()))
    if not specs:
        raise UserError("nothing to sweep: pass --sweep='field=v1,v2' (or set config.sweep)")
    swept = {spec_field(spec) for spec in specs}
    where = "--sweep" if f.sweep else "the config's sweep"
    for field in sorted(swept & set(overrides)):  # The config is already overridden: say so.
        raise UserError(f"{field} is given by both --config.{field} and {where}; give it once")
    shard = (0, 1) if f.shard is None else check_shard(f.shard)
    if f.max_parallel < 1:
        raise UserError(f"--max_parallel={f.max_parallel}: must be positive")
    api.enable_compilation_cache()
    rows = run_sweep(
        config, f.workdir, specs, f.max_parallel, f.vectorize,
        fallback_checkpoint=f.fallback_checkpoint, shard=shard,
    )  # fmt: skip
    for row in rows:
        acc = row["validation_accuracy"]
        print(row["member"], "diverged" if acc is None else f"validation accuracy {acc:.4f}")


if __name__ == "__main__":
    cli.define_flags(
        "Directory for the sweep; one subdirectory per member.",
        "A config file (configs/dnn.py) or shipped name; --config.FIELD=VALUE overrides a field.",
    )
    flags.DEFINE_multi_string("sweep", None, "field=v1,v2,... (repeatable: cartesian product).")
    flags.DEFINE_integer("max_parallel", 32, "Members trained at once in one vmapped program.")
    flags.DEFINE_string("vectorize", "auto", "vmap, map, or auto (map on CPU, else vmap).")
    flags.DEFINE_bool("fallback_checkpoint", False, "Resume from an older intact checkpoint.")
    flags.DEFINE_string("shard", None, "I/N: train members I, I+N, I+2N, ... (N processes).")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
