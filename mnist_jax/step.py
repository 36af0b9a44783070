"""The pure functions every run is made of: state, one step, a chunk of steps, evaluation sums.

Nothing here touches the host, the disk or global state, so `jax.jit`, `lax.map`, `jax.vmap`
(sweep members) and sharding (data parallelism) take these functions as they are.
- `train_step(state, images, labels)`: everything random comes from `fold_in(state.rng, step)`,
  so a step's result depends on the step number alone, never on how steps were grouped into
  calls, on resumption, or on the device count. A module's collections besides `params`
  (BatchNorm's `batch_stats`) are `state.model_state`: mutable in training (train=True), read
  as they are (running averages) by `eval_sums` and `predict_probs` (train=False).
  Augmentation (`augment.Augment`, None: off and absent from the program) transforms the
  uint8 batch first, keyed the same way.
- `train_chunk` runs any number of steps in one `lax.fori_loop`; the trip count is an argument,
  so one compiled program serves every chunk length.
- `eval_sums` scans a split padded to whole batches and masks the padding, so every example
  counts exactly once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mnist_jax import augment as augment_lib, data as data_lib, models, scores, shuffle
from mnist_jax.errors import UserError
from mnist_jax.sharding import Placement

# Independent PRNG streams, all derived from config.seed.
INIT, DROPOUT, SHUFFLE, SPLIT = range(4)
AUGMENT = 4


def rng_stream(seed: int | jax.Array, stream: int) -> jax.Array:
    """The key of one named stream (INIT, DROPOUT, SHUFFLE, SPLIT, AUGMENT) of a run's seed."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


class TrainState(flax.struct.PyTreeNode):
    """Everything a step reads and writes; the data order is a function of `step` and `rng`."""

    step: jax.Array  # int32 scalar: steps taken.
    params: Any
    opt_state: Any
    rng: jax.Array  # The run's root key (uint32[2]); never advanced, only folded.
    # Batch losses summed since the last evaluation, step after step in one order: the logged
    # mean batch loss is then the same bits however the steps were chunked or resumed.
    loss_sum: jax.Array
    # The module's variable collections besides `params` ({} for a stateless model), e.g.
    # {"batch_stats": ...}: updated by every training step, not by the optimizer.
    model_state: dict[str, Any] = flax.struct.field(default_factory=dict)


NOT_STATE = models.own.NOT_STATE  # Flax's `sow` collection: per-call outputs, not state.


def init_variables(model: nn.Module, seed: int | jax.Array) -> dict[str, Any]:
    """Fresh variables {"params": ..., <other collections>...} from `seed` (jit friendly)."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), INIT)
    variables = model.init(key, jnp.zeros((1, data_lib.NUM_PIXELS)), train=False)
    return {k: v for k, v in variables.items() if k not in NOT_STATE}


def init_params(model: nn.Module, seed: int | jax.Array) -> Any:
    """Fresh parameters from `seed` (jit/eval_shape friendly)."""
    return init_variables(model, seed)["params"]


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, seed: int | jax.Array
) -> TrainState:
    """Fresh parameters, model state and optimizer state from `seed` (jit/eval_shape
    friendly)."""
    variables = init_variables(model, seed)
    params = variables.pop("params")
    return TrainState(
        step=jnp.int32(0), params=params, opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed), loss_sum=jnp.float32(0), model_state=variables,
    )  # fmt: skip


def variables_of(state: TrainState) -> dict[str, Any]:
    """What a Linen `apply` takes: {"params": ..., **model_state}."""
    return {"params": state.params, **state.model_state}


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
    augment: augment_lib.Augment | None = None,
) -> tuple[TrainState, jax.Array]:
    """One optimizer step on the batch-mean softmax cross-entropy; returns (state, loss)."""
    if augment is not None:
        images = augment(
            jax.random.fold_in(jax.random.fold_in(state.rng, AUGMENT), state.step), images
        )
    dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, DROPOUT), state.step)

    def loss_fn(params):
        logits, model_state = model.apply(
            {"params": params, **state.model_state}, scale_images(images), train=True,
            rngs={"dropout": dropout_rng}, mutable=list(state.model_state),
        )  # fmt: skip
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, model_state

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          model_state={**state.model_state, **model_state})  # fmt: skip
    return state, loss


def train_chunk(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    rows: jax.Array,
    first_step: jax.Array,
    num_steps: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    batch_size: int,
    batch_sharding: NamedSharding | None = None,
    permutation: Callable[[jax.Array, int], jax.Array] = shuffle.epoch_permutation,
    augment: augment_lib.Augment | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Runs steps `first_step` (== state.step) .. `first_step + num_steps - 1`.

    Training example i is row `rows[i]` of `images`/`labels` (one copy of the data serves every
    member of a sweep, each with its own split). An outer loop visits each epoch the chunk
    touches, draws that epoch's `permutation` once (by default a keyed Feistel cipher,
    `shuffle.epoch_permutation`, 18x cheaper than `jax.random.permutation`) and gathers its
    rows; the inner loop takes consecutive batches of them. `first_step` is passed apart from
    `state.step` so that the loop bounds stay unbatched when a sweep vmaps the state. Returns
    the state and the chunk's statistics: the first non-finite loss's step (-1: none);
    `state.loss_sum` adds up the batch losses. `augment` goes to every `train_step`.
    """
    num_train = rows.shape[0]
    spe, end = num_train // batch_size, first_step + num_steps
    shuffle_key = jax.random.fold_in(state.rng, SHUFFLE)

    def epoch_body(epoch, carry):
        perm = permutation(jax.random.fold_in(shuffle_key, epoch), num_train)
        batches = _epoch_batches(
            images, labels, rows[perm[: spe * batch_size]], batch_size, batch_sharding
        )
        lo = jnp.maximum(first_step, epoch * spe)
        hi = jnp.minimum(end, (epoch + 1) * spe)
        return _run_steps(carry, batches, lo, hi, model=model, tx=tx, augment=augment)

    first_epoch = first_step // spe
    last_epoch = jnp.where(num_steps > 0, (end - 1) // spe + 1, first_epoch)
    init = (state, state.loss_sum, jnp.int32(-1))
    state, loss_sum, bad_step = jax.lax.fori_loop(first_epoch, last_epoch, epoch_body, init)
    return state.replace(loss_sum=loss_sum), {"nonfinite_step": bad_step}


def _run_steps(carry: tuple, batches: tuple, lo: jax.Array, hi: jax.Array, *, model, tx,
               augment: augment_lib.Augment | None = None):  # fmt: skip
    """Steps `lo` .. `hi - 1` on an epoch's batches (step s takes batch s % steps); `carry`
    is (state, loss sum, first non-finite loss's step or -1)."""
    epoch_images, epoch_labels = batches
    spe = epoch_labels.shape[0]

    def step_body(step, carry):
        state, loss_sum, bad_step = carry
        x = jax.lax.dynamic_index_in_dim(epoch_images, step % spe, keepdims=False)
        y = jax.lax.dynamic_index_in_dim(epoch_labels, step % spe, keepdims=False)
        state, loss = train_step(state, x, y, model=model, tx=tx, augment=augment)
        bad_step = jnp.where((bad_step < 0) & ~jnp.isfinite(loss), step, bad_step)
        return state, loss_sum + loss, bad_step

    return jax.lax.fori_loop(lo, hi, step_body, carry)


def _epoch_batches(
    images: jax.Array,
    labels: jax.Array,
    epoch_rows: jax.Array,
    batch_size: int,
    batch_sharding: NamedSharding | None,
) -> tuple[jax.Array, jax.Array]:
    """An epoch's rows gathered at once as (steps, batch, ...): one large gather is cheaper
    than one per step; with a batch sharding each device gathers only its shard of every
    batch."""
    idx = epoch_rows.reshape(-1, batch_size)
    if batch_sharding is not None:
        idx = jax.lax.with_sharding_constraint(
            idx, NamedSharding(batch_sharding.mesh, P(None, *batch_sharding.spec))
        )
    return images[idx], labels[idx]


def eval_sums(
    variables: Any,
    images: jax.Array,
    labels: jax.Array,
    size: jax.Array,
    *,
    model: nn.Module,
    tta_shift: int = 0,
) -> dict[str, jax.Array]:
    """Summed log-loss, correct count, confusion matrix and calibration bins (example count,
    summed top-class confidence and correct count per `scores.CALIBRATION_BINS` equal-width
    confidence bin) over the first `size` examples of a split padded to whole batches: images
    (batches, batch, 784), labels (batches, batch). `scores` turns them into metrics.
    `tta_shift` > 0 scores the mean softmax of each image and 4 copies shifted that many
    pixels (`augment.tta_logits`)."""
    num_batches, batch = labels.shape
    valid = (jnp.arange(num_batches * batch) < size).reshape(num_batches, batch)
    bins = scores.CALIBRATION_BINS

    def apply(x):
        return model.apply(variables, scale_images(x), train=False)

    def body(totals, xs):
        x, y, w = xs
        logits = augment_lib.tta_logits(apply, x, tta_shift)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        pred = jnp.argmax(logits, -1)
        right = w & (pred == y)
        confidence = jnp.exp(jnp.max(logits, -1) - jax.nn.logsumexp(logits, -1))
        # Elementwise one-hot sums: no scatter order, no reduced-precision matmul on any backend.
        in_bin = jax.nn.one_hot(jnp.minimum(confidence * bins, bins - 1).astype(jnp.int32), bins)
        in_bin = in_bin * w[:, None]
        return {
            "loss_sum": totals["loss_sum"] + jnp.sum(jnp.where(w, loss, 0.0)),
            "correct": totals["correct"] + jnp.sum(right),
            "confusion": totals["confusion"].at[y, pred].add(w.astype(jnp.int32)),
            "bin_count": totals["bin_count"] + jnp.sum(in_bin, 0).astype(jnp.int32),
            "bin_confidence": totals["bin_confidence"] + jnp.sum(confidence[:, None] * in_bin, 0),
            "bin_correct": totals["bin_correct"]
            + jnp.sum(in_bin * right[:, None], 0).astype(jnp.int32),
        }, None

    totals = jax.tree_util.tree_map(jnp.asarray, scores.zero_sums(models.num_classes(model), bins))
    totals, _ = jax.lax.scan(body, totals, (images, labels, valid))
    return totals


def predict_probs(variables: Any, images: jax.Array, *, model: nn.Module) -> jax.Array:
    """Class probabilities (n, classes) of uint8 images (n, 784); `variables` as from
    `variables_of(state)` (model state as it is: BatchNorm's running averages)."""
    return jax.nn.softmax(model.apply(variables, scale_images(images), train=False))


def chunk_program(
    model,
    tx,
    batch_size: int,
    placement: Placement,
    vectorize: str,
    members: int,
    augment: augment_lib.Augment | None = None,
):
    """The jitted program every run calls: `(states, images, labels, rows, first, n)` ->
    `(states, stats)` with a leading member axis on states, rows and stats; states donated.
    With member groups (`Placement.for_members`) states and rows are split over them.
    `augment`: the training transforms (`augment.from_config`; None: off)."""
    chunk = functools.partial(train_chunk, model=model, tx=tx, batch_size=batch_size,
                              batch_sharding=placement.batch, augment=augment)  # fmt: skip
    fn = member_axis(chunk, vectorize, members, placement.member_groups)
    if placement.member_groups == 1:
        return jax.jit(fn, donate_argnums=0)
    split, whole = placement.members, placement.replicated
    return jax.jit(
        fn, donate_argnums=0, in_shardings=(split, whole, whole, split, whole, whole),
        out_shardings=(split, whole),
    )  # fmt: skip


def member_axis(chunk, vectorize: str, num_members: int, groups: int = 1):
    """`chunk(state, images, labels, rows, first, n)` over a leading member axis of `state`
    and `rows`: `vmap` (members in parallel: the speed on accelerators) or `map` (one after
    another inside the program). On CPU, XLA compiles a vmapped matmul of 4 or more members
    with other roundings than a single run's, so `auto` maps there, keeping every member equal
    to its single run to the bit; elsewhere it vmaps. One member is the plain chunk.
    `groups` > 1 (which must divide `num_members`): the axis is cut into that many blocks,
    vmapped over the `member` mesh axis (one block per row of devices), each block mapped or
    vmapped as above."""
    if vectorize == "auto":
        vectorize = "map" if jax.default_backend() == "cpu" else "vmap"
    if vectorize not in ("vmap", "map"):
        raise UserError(f"--vectorize={vectorize}: choose auto, vmap or map")
    inner = _one_block(chunk, vectorize, num_members // groups)
    if groups == 1:
        return inner
    blocks = jax.vmap(inner, in_axes=(0, None, None, 0, None, None), spmd_axis_name="member")

    def grouped(state, images, labels, rows, first, n):
        def cut(x):
            return x.reshape(groups, -1, *x.shape[1:])

        out = blocks(jax.tree_util.tree_map(cut, state), images, labels, cut(rows), first, n)
        return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), out)

    return grouped


def _one_block(chunk, vectorize: str, num_members: int):
    if num_members == 1:

        def single(state, images, labels, rows, first, n):
            one = jax.tree_util.tree_map(lambda x: x[0], state)
            one, stats = chunk(one, images, labels, rows[0], first, n)
            return jax.tree_util.tree_map(lambda x: x[None], (one, stats))

        return single
    if vectorize == "vmap":
        return jax.vmap(chunk, in_axes=(0, None, None, 0, None, None))

    def mapped(state, images, labels, rows, first, n):
        return jax.lax.map(lambda sr: chunk(sr[0], images, labels, sr[1], first, n), (state, rows))

    return mapped
