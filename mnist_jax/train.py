"""Training and evaluation: the pure train step, the fused on-device loop, and the run driver.

Design, in short:
- `train_step(state, images, labels)` is a pure function; everything random in it comes from
  `fold_in(state.rng, step)`, so a step's result depends on the step number alone, never on
  how the steps were grouped into calls, on resumption, or on the device count.
- The training set lives on the device(s), replicated. `Engine.train_chunk` runs any number
  of steps in one jitted `lax.fori_loop`: each step slices its batch indices out of the
  epoch's permutation (drawn on device from `fold_in(shuffle key, epoch)`), gathers the batch,
  shards it over the `data` mesh axis and updates the state, which is donated. One compiled
  program serves every chunk length, because the trip count is an argument.
- Evaluation is one jitted `lax.scan` over a split padded to whole batches and masked, so
  every example counts exactly once.
- `train_and_evaluate` drives periods, metrics, checkpoints, preemption and divergence.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mnist_jax import (
    checkpoint,
    config as config_lib,
    data as data_lib,
    distributed,
    metrics,
    models,
)
from mnist_jax.errors import UserError
from mnist_jax.optim import make_optimizer

# Independent PRNG streams, all derived from config.seed.
INIT, DROPOUT, SHUFFLE, SPLIT = range(4)


def rng_stream(seed: int | jax.Array, stream: int) -> jax.Array:
    """The key of one named stream (INIT, DROPOUT, SHUFFLE, SPLIT) of a run's seed."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


class TrainState(flax.struct.PyTreeNode):
    """Everything a step reads and writes; the data order is a function of `step` and `rng`."""

    step: jax.Array  # int32 scalar: steps taken.
    params: Any
    opt_state: Any
    rng: jax.Array  # The run's root key (uint32[2]); never advanced, only folded.


def init_state(model: nn.Module, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh parameters and optimizer state from `seed` (jit/eval_shape friendly)."""
    rng = jax.random.PRNGKey(seed)
    params = model.init(jax.random.fold_in(rng, INIT), jnp.zeros((1, data_lib.NUM_PIXELS)))
    params = params["params"]
    return TrainState(jnp.int32(0), params, tx.init(params), rng)


def scale_images(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def train_step(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, jax.Array]:
    """One optimizer step on the batch-mean softmax cross-entropy; returns (state, loss)."""
    dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, DROPOUT), state.step)

    def loss_fn(params):
        logits = model.apply(
            {"params": params}, scale_images(images), train=True, rngs={"dropout": dropout_rng}
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """A split on device, padded to whole eval batches: images (batches, batch, 784)."""

    images: jax.Array
    labels: jax.Array
    size: int


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D `data` mesh over all devices of all processes (automatic sharding)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


class Engine:
    """The jitted, sharded train and eval functions for one model, optimizer and data shape.

    The `_train_chunk` and `_evaluate` methods are pure; `train_chunk` and `evaluate` are
    their jitted forms. A sweep vmaps the pure ones over a leading member axis.
    """

    def __init__(
        self,
        model: nn.Module,
        tx: optax.GradientTransformation,
        *,
        batch_size: int,
        num_train: int,
        mesh: Mesh | None = None,
    ):
        self.model, self.tx = model, tx
        self.mesh = make_mesh() if mesh is None else mesh
        self.num_devices = self.mesh.size
        if batch_size % self.num_devices:
            raise UserError(
                f"config.batch_size={batch_size} must divide by the {self.num_devices} devices"
            )
        if batch_size > num_train:
            raise UserError(
                f"config.batch_size={batch_size} is larger than the training split ({num_train})"
            )
        self.batch_size = batch_size
        self.num_train = num_train
        self.steps_per_epoch = num_train // batch_size
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0)
        self.evaluate = jax.jit(self._evaluate)
        self.init = jax.jit(lambda seed: init_state(model, tx, seed), out_shardings=self.replicated)

    # -- data placement ------------------------------------------------------------------

    def put_replicated(self, x: np.ndarray) -> jax.Array:
        """A host array on every device (each process passes the same full array)."""
        return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])

    def put_eval(self, split: data_lib.Split, eval_batch_size: int) -> EvalSplit:
        """Pads `split` to whole batches (a multiple of the device count) and shards them."""
        n = len(split)
        batch = min(eval_batch_size, max(n, 1))
        batch = -(-batch // self.num_devices) * self.num_devices
        num_batches = max(-(-n // batch), 1)
        pad = num_batches * batch - n
        images = np.pad(split.images, ((0, pad), (0, 0))).reshape(num_batches, batch, -1)
        labels = np.pad(split.labels, (0, pad)).reshape(num_batches, batch)
        sharding = NamedSharding(self.mesh, P(None, "data"))
        put = lambda x: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])  # noqa: E731
        return EvalSplit(put(images), put(labels), n)

    def put_splits(self, dataset: data_lib.Dataset, eval_batch_size: int) -> dict[str, EvalSplit]:
        """The train, validation and test splits, ready for `eval_split`."""
        names = ("train", "validation", "test")
        return {name: self.put_eval(getattr(dataset, name), eval_batch_size) for name in names}

    # -- pure functions ------------------------------------------------------------------

    def _train_chunk(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        first_step: jax.Array,
        num_steps: jax.Array,
        rows: jax.Array | None = None,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """Runs steps `first_step` (== state.step) .. `first_step + num_steps - 1` on device.

        An outer loop visits each epoch the chunk touches and draws that epoch's permutation
        once; the inner loop takes consecutive batches of it. `first_step` is passed apart from
        `state.step` so that the loop bounds stay unbatched when a sweep vmaps the state.
        `rows`, if given, maps training example i to row `rows[i]` of `images` (a sweep keeps
        one copy of the data and each member's split as rows). Returns the state and the
        chunk's statistics: the summed batch losses and the first step whose loss was not
        finite (-1: none).
        """
        spe, bs = self.steps_per_epoch, self.batch_size
        end = first_step + num_steps
        shuffle_key = jax.random.fold_in(state.rng, SHUFFLE)

        def epoch_body(epoch, carry):
            perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), self.num_train)

            def step_body(step, carry):
                state, loss_sum, bad_step = carry
                idx = jax.lax.dynamic_slice(perm, ((step % spe) * bs,), (bs,))
                idx = idx if rows is None else rows[idx]
                idx = jax.lax.with_sharding_constraint(idx, self.batch_sharding)
                state, loss = train_step(
                    state, images[idx], labels[idx], model=self.model, tx=self.tx
                )
                bad_step = jnp.where((bad_step < 0) & ~jnp.isfinite(loss), step, bad_step)
                return state, loss_sum + loss, bad_step

            lo = jnp.maximum(first_step, epoch * spe)
            hi = jnp.minimum(end, (epoch + 1) * spe)
            return jax.lax.fori_loop(lo, hi, step_body, carry)

        first_epoch = first_step // spe
        last_epoch = jnp.where(num_steps > 0, (end - 1) // spe + 1, first_epoch)
        init = (state, jnp.float32(0), jnp.int32(-1))
        state, loss_sum, bad_step = jax.lax.fori_loop(first_epoch, last_epoch, epoch_body, init)
        return state, {"loss_sum": loss_sum, "nonfinite_step": bad_step}

    def _evaluate(self, params: Any, images: jax.Array, labels: jax.Array, size: jax.Array):
        """Summed log-loss, correct count and confusion matrix over the first `size` examples
        of a padded split; padding is masked out."""
        num_batches, batch = labels.shape
        valid = (jnp.arange(num_batches * batch) < size).reshape(num_batches, batch)
        num_classes = self.model.num_classes

        def body(totals, xs):
            x, y, w = xs
            logits = self.model.apply({"params": params}, scale_images(x))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            pred = jnp.argmax(logits, -1)
            return {
                "loss_sum": totals["loss_sum"] + jnp.sum(jnp.where(w, loss, 0.0)),
                "correct": totals["correct"] + jnp.sum(w & (pred == y)),
                "confusion": totals["confusion"].at[y, pred].add(w.astype(jnp.int32)),
            }, None

        totals = {
            "loss_sum": jnp.float32(0),
            "correct": jnp.int32(0),
            "confusion": jnp.zeros((num_classes, num_classes), jnp.int32),
        }
        totals, _ = jax.lax.scan(body, totals, (images, labels, valid))
        return totals

    # -- host-side conveniences ----------------------------------------------------------

    def eval_split(self, params: Any, split: EvalSplit) -> dict[str, Any]:
        """log_loss, accuracy and confusion matrix (numpy) of one split."""
        if split.size == 0:
            return {}
        t = jax.device_get(self.evaluate(params, split.images, split.labels, split.size))
        return {
            "log_loss": float(t["loss_sum"]) / split.size,
            "accuracy": float(t["correct"]) / split.size,
            "confusion_matrix": np.asarray(t["confusion"]),
            "size": split.size,
        }


# ---------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Plan:
    """When a run evaluates, checkpoints and returns to the host."""

    num_steps: int
    eval_steps: list[int]
    checkpoint_steps: list[int]
    steps_per_call: int

    def chunks(self, start: int) -> list[tuple[int, int]]:
        """(first step, number of steps) of each jitted call from `start` to the end."""
        stops = sorted({s for s in self.eval_steps + self.checkpoint_steps if s > start})
        out, s = [], start
        for stop in stops:
            while s < stop:
                n = min(stop - s, self.steps_per_call) if self.steps_per_call else stop - s
                out.append((s, n))
                s += n
        return out


def make_plan(config: ml_collections.ConfigDict, num_train: int) -> Plan:
    """Resolves num_steps (or num_epochs) and the eval/checkpoint schedule."""
    steps_per_epoch = num_train // config.batch_size
    num_steps = config.num_steps or round(config.num_epochs * steps_per_epoch)
    if num_steps < 1:
        raise UserError(f"config.num_epochs={config.num_epochs} is less than one step")
    if config.num_periods > num_steps:
        raise UserError(
            f"config.num_periods={config.num_periods} exceeds the {num_steps} training steps"
        )
    evals = [num_steps * (p + 1) // config.num_periods for p in range(config.num_periods)]
    every = config.checkpoint_every_steps
    ckpts = [*range(every, num_steps, every), num_steps] if every else list(evals)
    return Plan(num_steps, evals, ckpts, config.steps_per_call)


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag checked between jitted calls (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """Raised after a SIGTERM/SIGINT once the checkpoint is saved; main exits 128+signum."""

    def __init__(self, signum: int, step: int):
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved: "
            "rerun the same command to resume"
        )
        self.signum = signum


class Diverged(UserError):
    """A non-finite loss: the run stops and the last good checkpoint is kept."""


def prepare_workdir(config: ml_collections.ConfigDict, workdir: Path, allow_change: bool) -> None:
    """Creates the workdir (or checks it is writable) and refuses to resume a run of a
    different config, naming the fields that differ."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"workdir {workdir} is not writable: {e.strerror}") from None
    saved = workdir / "config.json"
    if saved.exists() and not allow_change:
        old = checkpoint.config_from_json(saved)
        fields = config_lib.differing_fields(config_lib.to_dict(old), config_lib.to_dict(config))
        fields = [f for f in fields if f not in config_lib.RESUMABLE_FIELDS]
        if fields:
            raise UserError(
                f"{workdir} holds a run of a different config ({', '.join(fields)} differ); use "
                "a new --workdir, or pass --allow_config_change to resume it anyway"
            )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    allow_config_change: bool = False,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint), evaluates on the
    test set, and returns the run summary that is also written to results.json."""
    t_start = time.time()
    config_lib.validate(config)
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        prepare_workdir(config, workdir, allow_config_change)

    dataset = data_lib.load_dataset(config.data, rng_stream(config.seed, SPLIT))
    plan = make_plan(config, len(dataset.train))
    model = models.create_model(config.model, dataset.num_classes)
    tx = make_optimizer(config.optimizer, plan.num_steps)
    engine = Engine(
        model, tx, batch_size=config.batch_size, num_train=len(dataset.train), mesh=mesh
    )
    if is_main:
        metrics.write_json(workdir / "config.json", config_lib.to_dict(config))

    train_images = engine.put_replicated(dataset.train.images)
    train_labels = engine.put_replicated(dataset.train.labels)
    splits = engine.put_splits(dataset, config.eval_batch_size)
    writer = metrics.MetricWriter(workdir, tensorboard=config.tensorboard and is_main)
    with (
        checkpoint.Checkpointer(workdir, config.checkpoints_to_keep) as ckpt,
        _StopSignal() as stop,
    ):
        state = engine.init(config.seed)
        restored = ckpt.restore(jax.eval_shape(lambda: state))
        if restored is not None:
            state = restored
            logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
            writer.truncate_after(int(state.step))
        start_step = int(state.step)
        done = workdir / "results.json"
        if start_step == plan.num_steps and done.exists() and "final" in metrics.read_json(done):
            logging.info("%s already finished %d steps; nothing to do", workdir, start_step)
            return metrics.read_json(done)
        if start_step > plan.num_steps:
            raise UserError(
                f"{workdir} already trained {start_step} steps, more than num_steps="
                f"{plan.num_steps}; raise num_steps or use a new --workdir"
            )

        t0 = time.time()
        compiled = engine.train_chunk.lower(state, train_images, train_labels, 0, 0).compile()
        compile_s = time.time() - t0
        logging.info(
            "model %s: %d parameters; %d steps of batch %d on %d device(s); compiled in %.2fs",
            config.model.name,
            models.count_params(state.params),
            plan.num_steps,
            config.batch_size,
            engine.num_devices,
            compile_s,
        )

        def run_chunk(first: int, n: int) -> dict[str, Any]:
            nonlocal state
            state, stats = compiled(state, train_images, train_labels, first, n)
            return jax.device_get(stats)  # Also waits for the chunk to finish.

        def after_chunk(step: int, n: int, stats: dict[str, Any], elapsed: float) -> None:
            bad = int(stats["nonfinite_step"])
            if bad >= 0:
                if is_main:
                    _update_results(workdir, {"diverged": diverged_record(bad)})
                last = ckpt.latest_step()
                kept = "no checkpoint yet"
                if last:
                    kept = f"the last good checkpoint (step {last}) is kept"
                raise Diverged(
                    f"training diverged: non-finite loss at step {bad} (learning rate "
                    f"{config.optimizer.learning_rate} too high?); {kept}"
                )
            if step in plan.checkpoint_steps:
                ckpt.save(step, state)
            if step in plan.eval_steps:
                log_period(engine, state, splits, writer, plan, step, stats, n, elapsed)

        timing = train_loop(plan, start_step, run_chunk, after_chunk, lambda: stop.signum)
        if timing.stopped_at is not None:
            ckpt.save(timing.stopped_at, state)
            ckpt.wait()
            writer.close()
            raise Interrupted(stop.signum or signal.SIGTERM, timing.stopped_at)
        ckpt.save(plan.num_steps, state)
        final = {name: engine.eval_split(state.params, split) for name, split in splits.items()}
        ckpt.wait()
    writer.close()

    results = summarize(config, dataset, plan, state, final, timing, t_start, compile_s)
    results["resumed_from_step"] = start_step or None
    if is_main:
        metrics.write_json(workdir / "results.json", results)
    return results


@dataclasses.dataclass
class Timing:
    """What `train_loop` measured, and where it stopped early (None: it ran to the end)."""

    train_s: float = 0.0
    steps: int = 0
    stopped_at: int | None = None


def train_loop(
    plan: Plan,
    start_step: int,
    run_chunk: Callable[[int, int], dict[str, Any]],
    after_chunk: Callable[[int, int, dict[str, Any], float], None],
    stop_signal: Callable[[], int | None],
) -> Timing:
    """The loop every run shares (single, sweep, sharded, multi-process): each jitted chunk of
    the plan from `start_step`, then its host work; stops early, on every process at once,
    after the chunk in which a SIGTERM/SIGINT arrived."""
    timing = Timing()
    for first, n in plan.chunks(start_step):
        t0 = time.time()
        stats = run_chunk(first, n)
        elapsed = time.time() - t0
        timing.train_s += elapsed
        timing.steps += n
        after_chunk(first + n, n, stats, elapsed)
        if distributed.any_process(stop_signal() is not None):
            timing.stopped_at = first + n
            break
    return timing


def summarize(config, dataset, plan, state, final, timing, t_start, compile_s) -> dict[str, Any]:
    """The run summary written to results.json."""
    rate = timing.steps * config.batch_size / timing.train_s if timing.train_s else None
    results = {
        "final": {
            name: {"log_loss": m["log_loss"], "accuracy": m["accuracy"], "size": m["size"]}
            for name, m in final.items()
            if m
        },
        "confusion_matrix": final["test"]["confusion_matrix"].tolist(),
        "class_counts": np.bincount(dataset.test.labels, minlength=dataset.num_classes).tolist(),
        "data_source": dataset.source,
        "data_location": dataset.location,
        "num_classes": dataset.num_classes,
        "num_params": models.count_params(state.params),
        "num_steps": plan.num_steps,
        "wall_time_s": round(time.time() - t_start, 3),
        "compile_time_s": round(compile_s, 3),
        "train_examples_per_sec": round(rate) if rate else None,
        "devices": [str(d) for d in jax.devices()],
        "num_processes": jax.process_count(),
        "versions": {"jax": jax.__version__, "flax": _version("flax"), "optax": optax.__version__},
    }
    logging.info(
        "test: log_loss %.4f accuracy %.2f%% (%d digits, source=%s); wall time %.1fs",
        results["final"]["test"]["log_loss"],
        100 * results["final"]["test"]["accuracy"],
        results["final"]["test"]["size"],
        dataset.source,
        results["wall_time_s"],
    )
    return results


def diverged_record(step: int) -> dict[str, Any]:
    """What results.json says of a run that stopped on a non-finite loss."""
    return {"step": step, "message": f"non-finite loss at step {step}"}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _update_results(workdir: Path, update: dict[str, Any]) -> None:
    path = workdir / "results.json"
    old = metrics.read_json(path) if path.exists() else {}
    metrics.write_json(path, {**old, **update})


def log_period(
    engine: Engine,
    state: TrainState,
    splits: dict[str, EvalSplit],
    writer: metrics.MetricWriter,
    plan: Plan,
    step: int,
    stats: dict[str, Any],
    n: int,
    elapsed: float,
) -> None:
    """After a period: evaluates train and validation, logs one line, appends to the dump."""
    ex_per_s = n * engine.batch_size / elapsed if elapsed > 0 else 0.0
    lr = float(state.opt_state.hyperparams["learning_rate"])
    line = [f"step {step}/{plan.num_steps}"]
    for name in ("train", "validation"):
        m = engine.eval_split(state.params, splits[name])
        if not m:
            continue
        extra = {"examples_per_sec": ex_per_s, "learning_rate": lr} if name == "train" else {}
        if name == "train":
            extra["batch_loss"] = float(stats["loss_sum"]) / n
        writer.write(step, name, log_loss=m["log_loss"], accuracy=m["accuracy"], **extra)
        line.append(f"{name} loss {m['log_loss']:.4f} acc {100 * m['accuracy']:.2f}%")
    eta = (plan.num_steps - step) * elapsed / n
    line.append(f"{ex_per_s:,.0f} ex/s")
    line.append(f"ETA {eta:.0f}s")
    logging.info(" | ".join(line))
