"""Training throughput: the project's loop vs a hand-written scan (the ceiling) vs a per-step loop.

    python benchmarks/throughput.py            # full mode: MNIST-sized random data, 3 epochs
    python benchmarks/throughput.py --quick    # CI: tiny sizes, checks that it runs

Prints one JSON line per (model, loop) with examples/s and its ratio to the other loops, all
measured in this process on the same data, then eval throughput and compile times. Every
timing excludes compilation (a warm-up call compiles first) and waits for the device.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax import config as config_lib, data, models, optim, step
from mnist_jax.sharding import Placement

CASES = {
    "tflearn_dnn": {"hidden_units": (342, 68), "optimizer": "sgd", "learning_rate": 0.1},
    "dnn": {"hidden_units": (512, 256), "optimizer": "adagrad", "learning_rate": 0.05},
    "linear": {"hidden_units": (), "optimizer": "adagrad", "learning_rate": 0.05},
}


def build(case: dict, batch_size: int):
    c = config_lib.get_config()
    c.model.name = "mlp" if case["hidden_units"] else "linear"
    c.model.hidden_units = case["hidden_units"]
    c.optimizer.name = case["optimizer"]
    c.optimizer.learning_rate = case["learning_rate"]
    c.optimizer.clip_norm = 5.0 if case["optimizer"] == "adagrad" else 0.0
    c.batch_size = batch_size
    return models.create_model(c.model), optim.make_optimizer(c.optimizer)


def timed(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls of `fn` (which blocks until its result is ready)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _members(model, tx, images, labels, k):
    """Device data and K stacked fresh states, placed as the driver places them."""
    p = Placement().for_members(k)  # Members split over the devices, as in a sweep.
    x, y = p.put(images), p.put(labels)
    rows = p.put_members(np.stack([np.arange(len(labels), dtype=np.int32)] * k))
    states = [step.init_state(model, tx, s) for s in range(k)]
    return p, x, y, rows, p.stack_members(states)


def project_loop(model, tx, images, labels, batch_size, steps):
    """The program the run driver calls (step.chunk_program), over device-resident data."""
    p, x, y, rows, state = _members(model, tx, images, labels, 1)
    program = step.chunk_program(model, tx, batch_size, p, "auto", 1)
    t = time.perf_counter()
    compiled = program.lower(state, x, y, rows, 0, steps).compile()
    compile_s = time.perf_counter() - t
    holder = [state, 0]

    def run():
        holder[0], stats = compiled(holder[0], x, y, rows, holder[1], steps)
        holder[1] += steps
        jax.block_until_ready(stats)

    run()  # Warm-up.
    return run, compile_s, p, holder


def scan_loop(model, tx, images, labels, batch_size, steps):
    """The ceiling: a minimal lax.scan over pre-shuffled, pre-batched float32 device data."""
    n = steps * batch_size
    order = np.random.default_rng(0).permutation(len(labels))
    order = np.resize(order, n)
    xb = jnp.asarray(images[order].reshape(steps, batch_size, -1), jnp.float32) / 255.0
    yb = jnp.asarray(labels[order].reshape(steps, batch_size))
    params = model.init(jax.random.PRNGKey(0), xb[0])["params"]
    opt_state = tx.init(params)

    @jax.jit
    def epoch(params, opt_state):
        def step(carry, batch):
            params, opt_state = carry
            x, y = batch

            def loss_fn(p):
                logits = model.apply({"params": p}, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (xb, yb))
        return params, opt_state, losses

    holder = [params, opt_state]

    def run():
        holder[0], holder[1], losses = epoch(holder[0], holder[1])
        jax.block_until_ready(losses)

    run()
    return run


def per_step_loop(model, tx, images, labels, batch_size, steps):
    """The common style: one jitted step per batch, batches sliced on the host."""
    x_host = images.astype(np.float32) / 255.0
    params = model.init(jax.random.PRNGKey(0), x_host[:1])["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    order = np.random.default_rng(0).permutation(len(labels))
    holder = [params, opt_state]

    def run():
        p, o = holder
        for i in range(steps):
            idx = order[(i * batch_size) % len(order) :][:batch_size]
            p, o, loss = step(p, o, x_host[idx], labels[idx])
        jax.block_until_ready(loss)
        holder[:] = [p, o]

    step(params, opt_state, x_host[:batch_size], labels[:batch_size])  # Compile.
    return run


def sweep_case(model, tx, images, labels, batch_size, steps, k, vectorize, repeats):
    """Model-examples/s of K members in one program (`step.member_axis`)."""
    p, x, y, rows, state = _members(model, tx, images, labels, k)
    program = step.chunk_program(model, tx, batch_size, p, vectorize, k)
    compiled = program.lower(state, x, y, rows, 0, steps).compile()
    holder = [state, 0]

    def run():
        holder[0], stats = compiled(holder[0], x, y, rows, holder[1], steps)
        holder[1] += steps
        jax.block_until_ready(stats)

    run()
    return k * steps * batch_size / timed(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--sweep_sizes", default="1,8,32", help="K members for the sweep case")
    parser.add_argument("--sweep_steps", type=int, default=200, help="steps per sweep timing")
    args = parser.parse_args()
    n = 2_000 if args.quick else 55_000
    epochs = 1 if args.quick else args.epochs
    repeats = 1 if args.quick else args.repeats
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    steps = epochs * (n // args.batch_size)
    device = str(jax.devices()[0].device_kind)
    header = {"device": device, "num_devices": jax.device_count(), "jax": jax.__version__}

    for name in args.cases.split(","):
        case = CASES[name]
        model, tx = build(case, args.batch_size)
        run_project, compile_s, placement, holder = project_loop(
            model, tx, images, labels, args.batch_size, steps
        )
        rates = {"project": steps * args.batch_size / timed(run_project, repeats)}
        run_scan = scan_loop(model, tx, images, labels, args.batch_size, steps)
        rates["hand_written_scan"] = steps * args.batch_size / timed(run_scan, repeats)
        run_step = per_step_loop(model, tx, images, labels, args.batch_size, steps)
        rates["per_step_jit"] = steps * args.batch_size / timed(run_step, repeats)
        for loop, rate in rates.items():
            row = {**header, "case": name, "batch_size": args.batch_size, "loop": loop}
            row["examples_per_sec"] = round(rate)
            row.update({f"ratio_to_{k}": round(rate / v, 3) for k, v in rates.items() if k != loop})
            print(json.dumps(row), flush=True)

        split = placement.put_eval(data.Split(images, labels), 10_000)
        sums = jax.jit(functools.partial(step.eval_sums, model=model))
        params = {"params": jax.tree_util.tree_map(lambda a: a[0], holder[0].params)}

        evaluate = functools.partial(
            lambda f, *a: jax.block_until_ready(f(*a)),
            sums, params, split.images, split.labels, split.size,
        )  # fmt: skip
        evaluate()
        eval_rate = n / timed(evaluate, repeats)
        row = {**header, "case": name, "loop": "eval", "examples_per_sec": round(eval_rate)}
        row["train_compile_s"] = round(compile_s, 3)
        print(json.dumps(row), flush=True)

    # Sweeps: K tflearn_dnn models in one program vs K runs one after another.
    model, tx = build(CASES["tflearn_dnn"], args.batch_size)
    sweep_steps = 20 if args.quick else args.sweep_steps
    sizes = [1, 2] if args.quick else [int(k) for k in args.sweep_sizes.split(",")]
    single = sweep_case(model, tx, images, labels, args.batch_size, sweep_steps, 1, "map", repeats)
    for k in sizes:
        for vectorize in ("vmap", "map"):
            rate = sweep_case(
                model, tx, images, labels, args.batch_size, sweep_steps, k, vectorize, repeats
            )
            row = {**header, "case": "sweep_tflearn_dnn", "loop": f"sweep_{vectorize}", "k": k}
            row["model_examples_per_sec"] = round(rate)
            row["ratio_to_k_sequential_runs"] = round(rate / single, 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
