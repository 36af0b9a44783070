"""The training loop against ceilings that do the same work, and what the shuffle costs.

    python benchmarks/linear_loop.py            # 55,000 x 784 uint8 (full MNIST's training
                                                # rows if $MNIST_JAX_DATA_DIR holds it), 3 epochs
    python benchmarks/linear_loop.py --quick    # CI: tiny sizes, checks that it runs

For configs/linear.py (784->10, batch 100, Adagrad + clip) and, for context, configs/
tflearn_dnn.py (784-342-68-10), on data resident on the device, it times one jitted call that
trains `--epochs` epochs with:
  project         the driver's chunk program, as a run calls it (shuffle.epoch_permutation);
  project_jax_permutation  the same chunk with jax.random.permutation swapped in (the old loop);
  ceiling_{jax,feistel}_{epoch,batch}_gather
                  a hand-written `lax.scan` over batches with a fresh on-device shuffle per
                  epoch (jax.random.permutation or shuffle.epoch_permutation), timed, and the
                  epoch's rows gathered at once or batch by batch; `fair_ceiling` (`_feistel`)
                  in the ratios is the faster gather style of that permutation;
  preshuffled     the same scan over batches gathered beforehand (no shuffle, no gather timed).
It also times the parts of the gap: one epoch's permutation (each kind) and one epoch's gather.
Every figure is the best of `--repeats` calls after a warm-up call, waiting for the device;
the calls of the loops alternate, round by round.
Prints one JSON line per measurement, then one line of ratios per model (examples/s of the
first named loop over examples/s of the second).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax import data, datasets, models, shuffle, step
from mnist_jax.optim import make_optimizer
from mnist_jax.sharding import Placement

REPO = Path(__file__).resolve().parents[1]
CASES = {"linear": "linear", "mlp_342_68": "tflearn_dnn"}  # name -> configs/<file>.py
Permutation = Callable[[jax.Array, int], jax.Array]
PERMUTATIONS: dict[str, Permutation] = {
    "jax": jax.random.permutation,
    "feistel": shuffle.epoch_permutation,
}


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each fn over `repeats` rounds, after a warm-up call of each. The
    rounds interleave the fns, so that a load that comes and goes (a shared machine) weighs
    on all of them alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def project_runner(model, tx, images, labels, batch_size, steps, permutation=None):
    """One call of the driver's chunk program training `steps` steps, continuing each time;
    `permutation` swaps the epoch permutation (the rest of the chunk is the project's)."""
    p = Placement()
    x, y = p.put(images), p.put(labels)
    rows = p.put(np.arange(len(labels), dtype=np.int32)[None])
    state = jax.tree_util.tree_map(lambda a: a[None], step.init_state(model, tx, 0))
    if permutation is None:
        program = step.chunk_program(model, tx, batch_size, p, "auto", 1)
    else:
        chunk = functools.partial(step.train_chunk, model=model, tx=tx, batch_size=batch_size,
                                  batch_sharding=p.batch, permutation=permutation)  # fmt: skip
        program = jax.jit(step.member_axis(chunk, "auto", 1), donate_argnums=0)
    compiled = program.lower(state, x, y, rows, 0, steps).compile()
    holder = {"state": state, "step": 0}

    def run():
        holder["state"], stats = compiled(holder["state"], x, y, rows, holder["step"], steps)
        holder["step"] += steps
        return stats

    return run


def scan_step(model, tx):
    """The ceiling's step: the same model, loss and optimizer as `step.train_step`."""

    def update(carry, batch):
        params, opt_state = carry
        images, labels = batch

        def loss_fn(p):
            logits = model.apply({"params": p}, step.scale_images(images))
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return update


def epoch_batches(permutation: Permutation, key, images, labels, epoch, batch_size):
    """The epoch's order from `permutation`, and its rows gathered into (steps, batch) form."""
    n = labels.shape[0]
    spe = n // batch_size
    order = permutation(jax.random.fold_in(key, epoch), n)[: spe * batch_size]
    idx = order.reshape(spe, batch_size)
    return images[idx], labels[idx]


def ceiling_runner(model, tx, images, labels, batch_size, epochs, permutation, gather="epoch"):
    """A hand-written scan over each epoch's batches. With a `permutation`, each epoch draws
    its order on device inside the timed call and gathers its rows either at once (`gather=
    "epoch"`) or batch by batch in the scan (`"batch"`); with None, the batches of every epoch
    (ordered by jax.random.permutation) are gathered beforehand, untimed."""
    x, y = jnp.asarray(images), jnp.asarray(labels)
    state = step.init_state(model, tx, 0)
    key = jax.random.fold_in(state.rng, step.SHUFFLE)
    one_step = scan_step(model, tx)

    def scan_epoch(carry, batches):
        carry, losses = jax.lax.scan(one_step, carry, batches)
        return carry, losses.sum()

    def gather_step(carry, idx):
        return one_step(carry, (x[idx], y[idx]))

    def train_epoch(carry, epoch):
        if gather == "epoch":
            return scan_epoch(carry, epoch_batches(permutation, key, x, y, epoch, batch_size))
        spe = len(labels) // batch_size
        order = permutation(jax.random.fold_in(key, epoch), len(labels))[: spe * batch_size]
        carry, losses = jax.lax.scan(gather_step, carry, order.reshape(spe, batch_size))
        return carry, losses.sum()

    if permutation is None:
        gather = jax.jit(lambda e: epoch_batches(jax.random.permutation, key, x, y, e, batch_size))
        batches = [gather(e) for e in range(epochs)]
        xs = jnp.stack([b[0] for b in batches])
        ys = jnp.stack([b[1] for b in batches])

        @jax.jit
        def run_epochs(params, opt_state):
            (params, opt_state), losses = jax.lax.scan(scan_epoch, (params, opt_state), (xs, ys))
            return params, opt_state, losses.sum()

    else:

        @jax.jit
        def run_epochs(params, opt_state):
            def body(epoch, carry):
                carry, loss_sum = carry
                carry, loss = train_epoch(carry, epoch)
                return carry, loss_sum + loss

            init = ((params, opt_state), jnp.float32(0))
            (params, opt_state), loss_sum = jax.lax.fori_loop(0, epochs, body, init)
            return params, opt_state, loss_sum

    holder = [state.params, state.opt_state]

    def run():
        holder[0], holder[1], loss_sum = run_epochs(holder[0], holder[1])
        return loss_sum

    return run


def part_runners(images, labels, batch_size) -> dict[str, Callable[[], object]]:
    """The parts of the gap to the pre-shuffled ceiling, one epoch each."""
    x, n = jnp.asarray(images), len(labels)
    key = jax.random.PRNGKey(0)
    perm = jax.jit(lambda k: jax.random.permutation(k, n))
    feistel = jax.jit(lambda k: shuffle.epoch_permutation(k, n))
    order = perm(key)
    spe = n // batch_size
    gather = jax.jit(lambda o: x[o[: spe * batch_size].reshape(spe, batch_size)])
    return {
        "permutation_jax_random": lambda: perm(key),
        "permutation_feistel": lambda: feistel(key),
        "gather_epoch_rows": lambda: gather(order),
    }


def load_images(n: int, quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """Full MNIST's first `n` training rows if $MNIST_JAX_DATA_DIR holds it, else random."""
    directory = os.environ.get("MNIST_JAX_DATA_DIR", "")
    if directory and not quick and datasets.has_files(datasets.get("mnist"), directory):
        split, _ = data.load_idx(directory)
        return split.images[:n], split.labels[:n].astype(np.int32), "mnist"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, data.NUM_PIXELS), dtype=np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int32), "random_uint8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    args = parser.parse_args()
    n = 2_000 if args.quick else 55_000
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    images, labels, source = load_images(n, args.quick)
    header = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "data": source}
    header.update(n=n, epochs=epochs, repeats=repeats, load_avg_1m=os.getloadavg()[0])

    for name, seconds in best_times(part_runners(images, labels, 100), repeats).items():
        print(json.dumps({**header, "part": name, "ms_per_epoch": round(1e3 * seconds, 3)}))

    for case in args.cases.split(","):
        config = load_config(CASES[case])
        bs = config.batch_size
        steps = epochs * (n // bs)
        model = models.create_model(config.model, 10)
        tx = make_optimizer(config.optimizer, steps)
        args_ = (model, tx, images, labels, bs)
        runners = {
            "project": project_runner(*args_, steps),
            "project_jax_permutation": project_runner(*args_, steps, jax.random.permutation),
        }
        for perm_name, permutation in PERMUTATIONS.items():
            for gather in ("epoch", "batch"):
                runners[f"ceiling_{perm_name}_{gather}_gather"] = ceiling_runner(
                    *args_, epochs, permutation, gather
                )
        runners["preshuffled"] = ceiling_runner(*args_, epochs, None)
        rates = {}
        for loop, seconds in best_times(runners, repeats).items():
            rates[loop] = steps * bs / seconds
            row = {**header, "case": case, "batch_size": bs, "loop": loop}
            row.update(
                examples_per_sec=round(rates[loop]), ms_per_epoch=round(1e3 * seconds / epochs, 2)
            )
            print(json.dumps(row), flush=True)
        # The fair ceiling of a permutation: the faster of its two gather styles.
        for perm_name in PERMUTATIONS:
            suffix = "" if perm_name == "jax" else f"_{perm_name}"
            rates[f"fair_ceiling{suffix}"] = max(
                rates[f"ceiling_{perm_name}_{g}_gather"] for g in ("epoch", "batch")
            )
        pairs = [
            ("project_jax_permutation", "fair_ceiling"),
            ("project", "fair_ceiling"),
            ("project", "fair_ceiling_feistel"),
            ("fair_ceiling", "preshuffled"),
            ("fair_ceiling_feistel", "preshuffled"),
            ("project_jax_permutation", "preshuffled"),
            ("project", "preshuffled"),
        ]
        ratios = {f"{a}/{b}": round(rates[a] / rates[b], 3) for a, b in pairs}
        print(json.dumps({**header, "case": case, "ratios": ratios}), flush=True)


if __name__ == "__main__":
    main()
