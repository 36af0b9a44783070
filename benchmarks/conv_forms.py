"""CNN training and forward throughput: native `nn.Conv` vs the slices-and-one-matmul form.

    python benchmarks/conv_forms.py            # batch 100, 20 steps per timing, best of 3
    python benchmarks/conv_forms.py --quick    # CI: tiny sizes, checks that it runs

Both forms train the same model (configs/cnn.py's layers and optimizer) on the same random
data of MNIST's shape, on the current backend, with one jitted `lax.scan` over the steps.
`forward` times the training form's forward pass alone (the model predicts with nn.Conv
whatever `conv_impl` says). Every timing is the best of `--repeats` calls after a warm-up
call that compiles; it waits for the device. Prints one JSON line per (form, mode) with
examples/s and compile seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from throughput import timed  # benchmarks/ is on the path when a script here runs.

from mnist_jax import models, optim

REPO = Path(__file__).resolve().parents[1]


def cnn_config():
    """configs/cnn.py (loaded by path: configs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cnn", REPO / "configs" / "cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def train_rate(model, tx, xb, yb, repeats: int) -> tuple[float, float]:
    """(examples/s, compile s) of one jitted scan over the batches `xb` (steps, batch, 784)."""
    params = model.init(jax.random.PRNGKey(0), xb[0])["params"]

    def run(params, opt_state, key):
        def step(carry, batch):
            params, opt_state, i = carry
            x, y = batch

            def loss_fn(p):
                rngs = {"dropout": jax.random.fold_in(key, i)}
                logits = model.apply({"params": p}, x, train=True, rngs=rngs)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, i + 1), loss

        (params, opt_state, _), losses = jax.lax.scan(step, (params, opt_state, 0), (xb, yb))
        return params, opt_state, losses

    args = (params, tx.init(params), jax.random.PRNGKey(1))
    t = time.perf_counter()
    compiled = jax.jit(run).lower(*args).compile()
    compile_s = time.perf_counter() - t
    go = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
    go()  # Warm-up.
    return xb.shape[0] * xb.shape[1] / timed(go, repeats), compile_s


def forward_rate(model, xe, repeats: int) -> tuple[float, float]:
    """(examples/s, compile s) of the training form's forward pass (train=True: the model's
    inference always uses nn.Conv) over every batch of `xe` (batches, batch, 784)."""
    params = model.init(jax.random.PRNGKey(0), xe[0])["params"]

    def run(params):
        def body(total, x):
            rngs = {"dropout": jax.random.PRNGKey(2)}
            logits = model.apply({"params": params}, x, train=True, rngs=rngs)
            return total + jnp.sum(jnp.argmax(logits, -1)), None

        return jax.lax.scan(body, jnp.int32(0), xe)[0]

    t = time.perf_counter()
    compiled = jax.jit(run).lower(params).compile()
    compile_s = time.perf_counter() - t
    go = lambda: jax.block_until_ready(compiled(params))  # noqa: E731
    go()
    return xe.shape[0] * xe.shape[1] / timed(go, repeats), compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--eval_batches", type=int, default=5, help="of 1,000 examples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forms", default="slices,native", help="comma-separated subset")
    args = parser.parse_args()
    c = cnn_config()
    steps, eval_batches, repeats = args.steps, args.eval_batches, args.repeats
    if args.quick:
        c.model.conv_features, c.model.hidden_units = (4, 8), (16,)
        steps, eval_batches, repeats = 2, 1, 1
    rng = np.random.default_rng(0)
    xb = jnp.asarray(rng.random((steps, args.batch_size, 784), np.float32))
    yb = jnp.asarray(rng.integers(0, 10, (steps, args.batch_size)), jnp.int32)
    xe = jnp.asarray(rng.random((eval_batches, 1000, 784), np.float32))
    tx = optim.make_optimizer(c.optimizer, steps)
    header = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "conv_features": list(c.model.conv_features),
        "hidden_units": list(c.model.hidden_units),
        "batch_size": args.batch_size,
    }
    for form in args.forms.split(","):
        c.model.conv_impl = form
        model = models.create_model(c.model)
        for mode, (rate, compile_s) in (
            ("train", train_rate(model, tx, xb, yb, repeats)),
            ("forward", forward_rate(model, xe, repeats)),
        ):
            row = {**header, "conv_impl": form, "mode": mode}
            row.update(examples_per_sec=round(rate), compile_s=round(compile_s, 2))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
