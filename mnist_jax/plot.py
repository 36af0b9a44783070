"""Pictures and report of runs, written safely: after training from memory, or from a workdir.

    python -m mnist_jax.plot --workdir=runs/dnn          # PNGs into runs/dnn/plots/ + report.md
    python -m mnist_jax.plot --workdir=runs/dnn --config.data.dir=DIR   # scored on other data
    python -m mnist_jax.plot --compare runs/a runs/b --out=cmp.png   # overlay runs' curves

The figures themselves are pure functions in `figures.py` (re-exported here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from absl import flags, logging
from matplotlib.figure import Figure

from mnist_jax import (
    config as config_lib,
    data as data_lib,
    evaluate,
    metrics,
    models,
    outputs,
    report,
    scores,
)
from mnist_jax.errors import UserError
from mnist_jax.figures import (  # noqa: F401  (re-exported: plot.run_figures etc.)
    FIGURES,
    GRID,
    close,
    compare_figure,
    confusion_figure,
    curves_figure,
    digits_figure,
    first_layer_figure,
    first_layer_kernel,
    log_spaced,
    reliability_figure,
    run_figures,
    run_labels,
    sweep_figure,
    weights_axes,
    weights_by_steps_figure,
)
from mnist_jax.inputs import check_dir
from mnist_jax.report import PLOTS_DIR, check_run_outputs
from mnist_jax.rundir import HOLDER, METRICS, RunDir


def save_figures(
    figs: dict[str, Figure], out_dir: str | Path, root: str | Path | None = None
) -> list[Path]:
    """Writes each figure as <out_dir>/<name>.png atomically; `root` (default: out_dir's parent)
    is the directory nothing may be written outside of. Checks every target first."""
    out_dir = Path(out_dir)
    root = Path(root) if root is not None else out_dir.parent
    targets = {name: outputs.check_target(out_dir / f"{name}.png", root) for name in figs}
    outputs.make_dir(out_dir, root)
    return [outputs.save_figure(figs[name], path) for name, path in targets.items()]


def write_run_outputs(
    workdir: str | Path,
    config: Any,
    history: list[dict[str, Any]],
    results: dict[str, Any],
    first_layer_kernel: np.ndarray | None,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    scored: str = "",
) -> list[Path]:
    """plots/*.png and report.md of a run, from what is in memory (the driver calls this after
    training). `scored` names the data the pictures were made on, when not the run's own."""
    workdir = Path(workdir)
    outputs.check_target(workdir / report.REPORT_FILE, workdir, text=True)
    figs = run_figures(
        history,
        results,
        first_layer_kernel,
        test_images,
        test_labels,
        test_probs,
        title=workdir.name,
        model_name=config.model.name,
    )
    try:
        written = save_figures(figs, workdir / PLOTS_DIR, workdir)
    finally:
        close(figs)
    names = [p.stem for p in written]
    written.append(report.write_report(workdir, config, results, names, scored))
    return written


# ----------------------------------------------------------------------------- from a workdir


def read_history(workdir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, each checked to be a metrics row (a malformed one is a UserError
    naming its line); an empty history is an error: nothing to plot."""
    rundir = RunDir(workdir)
    rows = rundir.metrics()
    if not rows:
        raise UserError(rundir.describe() or f"{workdir} has no {METRICS} rows: train first")
    return rows


def plot_workdir(workdir: str | Path, data_overrides: dict[str, Any] | None = None) -> list[Path]:
    """Writes every picture of a finished run into <workdir>/plots/, then report.md.

    Scores the test split of the data the run used (its saved config, pinned to the source it
    resolved to); `data_overrides` ({"dir": ..., "source": ...}) score other data instead."""
    return _plot_workdir(Path(workdir), data_overrides)[0]


def _plot_workdir(workdir: Path, data_overrides: dict[str, Any] | None) -> tuple[list[Path], str]:
    check_dir(workdir, "run directory")
    rundir = RunDir(workdir)
    with rundir:  # A writer: refused while a run trains (or another plot writes) here.
        results = _finished_results(rundir)
        history = read_history(workdir)
        check_run_outputs(workdir)
        rundir.check_outputs(files=(HOLDER,))
        return _plot_locked(rundir, history, results, data_overrides)


def _finished_results(rundir) -> dict[str, Any]:
    """results.json of a finished run; otherwise one line saying what the directory holds."""
    results = rundir.results()
    if results is None or not isinstance(results.get("final"), dict):
        what = rundir.describe()
        if what:
            raise UserError(f"{what}: nothing to plot")
        state = "has no final metrics" if results is not None else "has no results.json"
        raise UserError(f"{rundir.path} {state}: the run has not finished; rerun its command")
    if rundir.saved_config() is None:
        raise UserError(rundir.describe())
    return results


def _plot_locked(rundir, history, results, data_overrides) -> tuple[list[Path], str]:
    workdir = rundir.path
    model, variables, config = evaluate.restore_model(workdir)
    used = evaluate.run_data_config(rundir, data_overrides)
    test, source, location = data_lib.load_test(used)
    names = evaluate.class_names(used, models.num_classes(model))
    scored = f"{len(test):,} test examples of {source} ({location})"
    probs = evaluate.predict_probs(model, variables, test.images)
    sums = evaluate.split_sums(model, variables, test, config.eval_batch_size)
    fresh = scores.rescored(sums, names)
    target = workdir
    if data_overrides:  # Other data: its own folder and scores, never the run's own plots.
        target = workdir / f"scored_on_{source}"
        outputs.check_dir(target, workdir)
        if target.is_dir():
            check_run_outputs(target)
        outputs.check_target(target / report.REPORT_FILE, workdir, text=True)
        rundir.claim()
        target.mkdir(exist_ok=True)
        results = {**results, **fresh, "data_source": source, "data_location": location,
                   "dataset": metrics.dataset_name(used, source)}  # fmt: skip
    else:  # The run's own test set: results.json's numbers, fresh ones where it has none.
        rundir.claim()
        results = {**fresh, **results}
    written = write_run_outputs(
        target,
        config,
        history,
        results,
        first_layer_kernel(variables["params"]),
        test.images,
        test.labels,
        probs,
        scored if data_overrides else "",
    )
    return written, scored


# ----------------------------------------------------------------------------- compare, sweep


def _describe(workdir: Path) -> dict[str, Any]:
    """A run's flattened config with its data.* fields replaced by the data it really used."""
    rundir = RunDir(workdir)
    config = rundir.saved_config()
    if config is None:
        raise UserError(rundir.describe())
    flat = config_lib.flatten(config_lib.to_dict(config))
    flat = {
        k: v for k, v in flat.items() if not k.startswith("data.") or k == "data.validation_size"
    }
    results = rundir.results()
    source = results.get("data_source") if results else None
    where = (results or {}).get("data_location") or ""
    if not source:  # An unfinished run has not recorded its data: never "data=None".
        flat["data"] = "not recorded (unfinished)"
    else:
        flat["data"] = source if source == "sample" else f"{source} {where}".strip()
    return flat


def compare(workdirs: list[str | Path], out: str | Path) -> Path:
    """Writes `out` (any matplotlib format): the runs' curves overlaid, each labelled by its
    workdir name and the config fields in which the runs differ."""
    workdirs = [check_dir(w, "run directory") for w in workdirs]
    if not workdirs:
        raise UserError("--compare needs at least one run directory")
    out = outputs.check_target(out)
    names = [w.name or str(w) for w in workdirs]
    if len(set(names)) < len(names):
        names = [str(w) for w in workdirs]
    configs = [_describe(w) for w in workdirs]
    histories = [read_history(w) for w in workdirs]
    fig = compare_figure(list(zip(run_labels(names, configs), histories, strict=True)))
    try:
        return outputs.save_figure(fig, out)
    finally:
        close(fig)


def plot_sweep(
    rows: list[dict[str, Any]],
    workdir: Path,
    fields: list[str],
    kernels: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """sweep.png, and first_layer_by_steps.png when num_steps was swept. `kernels` (member ->
    first-layer kernel) spares restoring members' checkpoints."""
    workdir = Path(workdir)
    figs: dict[str, Figure] = {}
    ok = [r for r in rows if r.get("validation_accuracy") is not None]
    curves = {r["member"]: read_history(workdir / r["member"]) for r in ok[:3]}
    figs["sweep"] = sweep_figure(rows, fields, curves)
    if "num_steps" in fields and ok:
        found = _kernels_by_steps(ok, workdir, fields, kernels or {})
        if found:
            figs["first_layer_by_steps"] = weights_by_steps_figure(
                found, f"First-layer weights after each num_steps ({ok[0]['member']} otherwise)"
            )
        else:
            logging.info(
                "first_layer_by_steps.png skipped: the model has no first layer that takes "
                "the image (a kernel (784, units) or (h, w, 1, filters))"
            )
    try:
        return save_figures(figs, workdir, workdir)
    finally:
        close(figs)


def _kernels_by_steps(
    ok: list[dict[str, Any]], workdir: Path, fields: list[str], kernels: dict[str, Any]
) -> list[tuple[int, np.ndarray]]:
    """(num_steps, first-layer kernel) of the best member and those that differ from it only
    in num_steps, fewest steps first; members whose model has no such kernel are left out.
    `kernels` (member -> kernel or None) spares restoring those members' checkpoints."""
    best = ok[0]
    same = [r for r in ok if all(r[f] == best[f] for f in fields if f != "num_steps")]
    found = []
    for r in sorted(same, key=lambda r: r["num_steps"]):
        if r["member"] in kernels:
            k = kernels[r["member"]]
        else:
            k = first_layer_kernel(evaluate.restore_model(workdir / r["member"])[1]["params"])
        if k is not None:
            found.append((r["num_steps"], k))
    return found


# ----------------------------------------------------------------------------- command line


def main(argv: list[str], overrides: dict[str, Any]) -> None:
    """The command line (flags defined under __main__: main.py imports this module too)."""
    f = flags.FLAGS
    workdirs = list(f.compare or []) + argv[1:]  # --compare a b: b arrives as an argument.
    if f.compare:
        if overrides:
            raise UserError("--compare takes no --config.* flags")
        print(compare(workdirs, f.out))
    elif f.workdir:
        if argv[1:]:
            raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
        data = {}
        for key, value in overrides.items():
            if not key.startswith("data."):
                raise UserError(
                    f"--config.{key}: plot scores the run's own model; "
                    "only --config.data.* fields can be given"
                )
            data[key.removeprefix("data.")] = value
        written, scored = _plot_workdir(Path(f.workdir), data)
        print(f"scored {scored}")
        for path in written:
            print(path)
    else:
        raise UserError("pass --workdir=RUN or --compare RUN RUN ... --out=FILE")


if __name__ == "__main__":
    from mnist_jax import cli

    cli.define_flags(
        "Run directory to plot.",
        "Optional; --config.data.FIELD=VALUE scores other data than the run's own.",
        optional_config=True,
    )
    flags.DEFINE_multi_string("compare", None, "Run directories to overlay (repeatable).")
    flags.DEFINE_string("out", "compare.png", "Output file of --compare (.png, .pdf, .svg, ...).")
    cli.run(main)
