"""The Python API, what notebooks and the command line call.

import mnist_jax as mj
config = mj.load_config("dnn", num_steps=2000)
run = mj.train(config, "runs/dnn")       # progress bar in a terminal or Jupyter
run.results["final"]["test"]["accuracy"], run.history, run.figures()
run.predict(images)                      # (n, 784) or (n, 28, 28) uint8 -> (n, 10) probs
run.export("dnn.jax")                    # a jax.export artifact: loads without mnist_jax
run = mj.load_run("runs/dnn")            # a finished run, the same object
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from mnist_jax import config as config_lib, data as data_lib, driver, evaluate, export as export_lib
from mnist_jax.errors import UserError
from mnist_jax.report import REPORT_FILE
from mnist_jax.rundir import RESULTS, RunDir

CACHE_ENV = "MNIST_JAX_COMPILATION_CACHE"


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache (process-wide jax.config: the command line
    calls it; `train` does not) so a second run of a config compiles in well under a second.
    Default: $MNIST_JAX_COMPILATION_CACHE, else <user cache>/mnist_jax/jax;
    '0' or 'off' disables it. Trust: compiled programs are loaded from that directory, so keep
    it private to you (it is under your own cache directory by default)."""
    directory = directory or os.environ.get(CACHE_ENV, "")
    if directory.lower() in ("0", "off", "false", "none"):
        return None
    if not directory:
        cache = os.environ.get("XDG_CACHE_HOME", "~/.cache")
        directory = str(Path(cache).expanduser() / "mnist_jax" / "jax")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def load_config(name_or_path: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A shipped config by name ('dnn') or a config file by path, with dotted overrides given
    as keyword arguments with '__' for '.': load_config('dnn', optimizer__learning_rate=0.1)."""
    return config_lib.load(name_or_path, {k.replace("__", "."): v for k, v in overrides.items()})


def as_pixels(images: Any) -> np.ndarray:
    """uint8 (n, 784) from what `Run.predict` takes; anything else is a UserError."""
    try:
        x = np.asarray(images)
    except Exception as e:
        raise UserError(f"images: not an array ({type(e).__name__})") from None
    if x.dtype.kind not in "uif":
        raise UserError(f"images: expected numbers 0-255, got dtype {x.dtype}")
    if x.shape in ((28, 28), (data_lib.NUM_PIXELS,)):
        x = x[None]
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != data_lib.NUM_PIXELS:
        raise UserError(f"images: expected (n, 784) or (n, 28, 28), got shape {x.shape}")
    x = x.reshape(len(x), data_lib.NUM_PIXELS)
    if x.dtype == np.uint8:  # Already pixels (the test set's own images: no float copy).
        return x
    if x.size:
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 255:
            raise UserError("images: pixels must be finite values 0-255")
        # Floats are pixels 0-255. An image whose brightest pixel is in (0, 1] is scaled to
        # [0, 1]: refused, not read as black. An all-zero (black) image is the same in both.
        peak = x.max(axis=1)
        scaled = np.flatnonzero((peak > 0) & (peak <= 1)) if x.dtype.kind == "f" else []
        if len(scaled):
            raise UserError(
                f"images: image {scaled[0]} has floats in [0, 1]; pass pixels 0-255 "
                "(multiply by 255)"
            )
    return np.rint(x).astype(np.uint8)


@dataclasses.dataclass
class Run:
    """A trained run: its config, final parameters and model state (BatchNorm's running
    averages; {} for a stateless model), metric history and results."""

    workdir: Path
    config: ml_collections.ConfigDict = dataclasses.field(repr=False)
    model: Any = dataclasses.field(repr=False)
    params: Any = dataclasses.field(repr=False)
    results: dict[str, Any] = dataclasses.field(repr=False)
    history: list[dict[str, Any]] = dataclasses.field(repr=False)
    test: data_lib.Split | None = dataclasses.field(default=None, repr=False)  # When in memory.
    model_state: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def variables(self) -> dict[str, Any]:
        """What a Linen `apply` takes: {"params": ..., **model_state}."""
        return {"params": self.params, **self.model_state}

    @property
    def test_accuracy(self) -> float:
        if "final" not in self.results:
            raise UserError(f"{self.summary()}: no test accuracy")
        return self.results["final"]["test"]["accuracy"]

    def predict(self, images: Any) -> np.ndarray:
        """Class probabilities (n, classes) of MNIST-style images: white digit on black,
        pixels 0-255 (uint8, ints or floats, rounded), shaped (n, 784), (n, 28, 28), (784,)
        or (28, 28). A float image whose brightest pixel is in (0, 1] is refused as [0, 1]
        scaled (multiply by 255); an all-zero image is valid (black in either scale)."""
        return evaluate.predict_probs(self.model, self.variables, as_pixels(images))

    def export(self, path: str | os.PathLike) -> Path:
        """Writes the run's model as a jax.export artifact at `path` (and `path`.json), as
        `python -m mnist_jax.export` does: uint8 (n, 784) -> probabilities (n, classes)."""
        return export_lib.export_run(self.workdir, path)

    def test_split(self) -> data_lib.Split:
        if self.test is None:
            data_config = evaluate.run_data_config(RunDir(self.workdir))
            self.test = data_lib.load_test(data_config)[0]
        return self.test

    def _figure_inputs(self) -> tuple:
        from mnist_jax import plot  # On use: matplotlib loads only when figures are asked for.

        test = self.test_split()
        kernel = plot.first_layer_kernel(self.params)
        return (
            self.history,
            self.results,
            kernel,
            test.images,
            test.labels,
            self.predict(test.images),
        )

    def figures(self) -> dict[str, Any]:
        """The run's matplotlib figures, by name: loss, confusion_matrix, reliability,
        first_layer_weights, samples, mistakes (a notebook shows them inline)."""
        from mnist_jax import plot  # On use: matplotlib loads only when figures are asked for.

        name = self.workdir.name
        return plot.run_figures(
            *self._figure_inputs(), title=name, model_name=self.config.model.name
        )

    def save_outputs(self) -> list[Path]:
        """Writes plots/ and report.md from what is in memory (no reload, no restore)."""
        from mnist_jax import plot  # On use: matplotlib loads only when figures are asked for.

        inputs = self._figure_inputs()
        with RunDir(self.workdir) as rundir:  # A writer: refused while a run trains there.
            plot.check_run_outputs(self.workdir)
            rundir.claim()
            return plot.write_run_outputs(self.workdir, self.config, *inputs)

    def summary(self) -> str:
        """The closing lines: test scores, data, where the time went, where the files are."""
        r = self.results
        if "diverged" in r:
            return f"{self.workdir}: diverged at step {r['diverged']['step']}"
        if "final" not in r:
            last = max((row["step"] for row in self.history), default=0)
            return f"{self.workdir}: not finished (evaluated up to step {last}); rerun to resume"
        t = r["final"]["test"]
        timing = r.get("timing", {})
        split = ", ".join(
            f"{k.removesuffix('_s')} {v:.1f}s" for k, v in timing.items() if k != "wall_s"
        )
        lines = [
            f"test accuracy {100 * t['accuracy']:.2f}%, log-loss {t['log_loss']:.4f} "
            f"on {t['size']} digits of {r['data_source']} ({r.get('data_location', '')})",
            f"wall time {timing.get('wall_s', r.get('wall_time_s', 0)):.1f}s: {split}",
            f"results {self.workdir / 'results.json'}; checkpoints {self.workdir / 'checkpoints'}",
        ]
        if r.get("data_source") == "sample":
            lines.append(
                "this ran on the bundled 5,000-digit sample; for full MNIST put its four IDX "
                "files in a directory and pass --config.data.dir=DIR (or set MNIST_JAX_DATA_DIR)"
            )
        if (self.workdir / REPORT_FILE).exists():
            lines.append(f"plots {self.workdir / 'plots'}; report {self.workdir / 'report.md'}")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return "```\n" + self.summary() + "\n```"


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    model: Any = None,
    allow_config_change: bool = False,
    fallback_checkpoint: bool = False,
    progress: bool | None = None,
    t0: float | None = None,
) -> Run:
    """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluates it on the
    test set, writes results.json and, if `config.plots`, plots/ and report.md. `model`, a Linen
    module class or instance following the contract in `mnist_jax.models`, replaces a shipped
    family's config.model.name (a log line says so); where config.model.name names your own
    model it must be that class, and an instance must agree with config.model.kwargs (else a
    UserError). It is recorded so that readers rebuild it, or say why not. Changes no
    process-wide setting (jax.config, signal handlers); on any way out, Ctrl-C included, the
    workdir is unlocked and a later call resumes it."""
    t0 = time.time() if t0 is None else t0
    member = driver.Member(config, RunDir(workdir), model=model)
    (outcome,) = driver.run(
        [member],
        allow_config_change=allow_config_change,
        fallback_checkpoint=fallback_checkpoint,
        progress=progress,
        t0=t0,
    )
    return finish(outcome, t0)


def finish(outcome: driver.Outcome, t0: float) -> Run:
    """The Run of a member the driver trained: figures from memory, timing completed."""
    m = outcome.member
    if outcome.params is None:  # Finished earlier, or diverged: read it back.
        if "final" not in outcome.results:
            return _diverged(outcome)
        run = load_run(m.rundir.path, model=outcome.model)
        if m.config.plots and not (run.workdir / REPORT_FILE).exists():
            run.save_outputs()  # Interrupted while plotting: make them now.
        return run
    ds = outcome.dataset
    run = Run(m.rundir.path, m.config, outcome.model, outcome.params, outcome.results,
              m.rundir.metrics(), ds.test if ds else None, outcome.model_state)  # fmt: skip
    timing = dict(run.results.get("timing", {}))
    if m.config.plots and jax.process_index() == 0:
        t = time.time()
        run.save_outputs()
        timing["plots_s"] = round(time.time() - t, 3)
    timing["wall_s"] = round(time.time() - t0, 3)
    run.results = {**run.results, "timing": timing, "wall_time_s": timing["wall_s"]}
    m.rundir.write_json(RESULTS, run.results)
    return run


def _diverged(outcome: driver.Outcome) -> Run:
    m = outcome.member
    return Run(m.rundir.path, m.config, None, None, outcome.results, m.rundir.metrics())


def load_run(workdir: str | os.PathLike, model: Any = None) -> Run:
    """A run from its workdir: config.json, the latest checkpoint, metrics and results;
    `model`: the Linen module it trained, when not the one its config names."""
    rundir = RunDir(workdir)
    model, variables, config = evaluate.restore_model(workdir, model=model)
    results = rundir.results() or {}
    params = variables.pop("params")
    return Run(rundir.path, config, model, params, results, rundir.metrics(),
               model_state=variables)  # fmt: skip
