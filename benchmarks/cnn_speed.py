"""CNN training speed at the CPU's limit: each convolution form, inside the fused training loop.

    python benchmarks/cnn_speed.py                      # every form x network, then the levers
    python benchmarks/cnn_speed.py --nets=fast_cnn --forms=native,vjp --steps=10
    python benchmarks/cnn_speed.py --xla_settings=default,use_onednn   # subprocess per setting
    python benchmarks/cnn_speed.py --torch              # PyTorch side by side (if installed)
    python benchmarks/cnn_speed.py --quick              # CI: tiny sizes, checks that it runs

For each network (the shapes of configs/fast_cnn.py, configs/cnn.py, the cheaper tuomaso
network: conv 24@5x5, pool, conv 32@3x3, pool, 256 dense, and bn_cnn's convolutions without its
BatchNorm) and each convolution form (`native`: nn.Conv; `slices`, `vjp` and `cpu`:
mnist_jax/conv.py), trains on random uint8 data of MNIST's shape with the project's own loop,
`step.train_chunk` (one jitted `lax.fori_loop` with the epoch shuffle and gather, Adam with a
one-cycle schedule), and prints one JSON line: training examples/s, GFLOP/s (2 FLOP per
multiply-add, forward + backward counted as 3x the forward's multiply-adds),
`ratio_to_matmul_ceiling` (GFLOP/s over the GFLOP/s of a float32 (2048 x 2048) @ (2048 x 2048)
matmul measured in the same process) and `forward_examples_per_sec`: the inference forward
(train=False: conv.layer's choice, as evaluation and predict run it) over `--forward_batches`
batches of 1,000 (0: not timed). Levers: `--dtypes=bfloat16` (compute in bfloat16, parameters
float32), `--batch_sizes`, `--pools=reduce_window` (nn.max_pool instead of the models'
conv.max_pool2), `--xla_settings` (XLA_FLAGS must be set before JAX starts, so each setting
runs this script again as a subprocess). Timings are the best of `--repeats` calls after a
warm-up call that compiles.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from throughput import timed  # benchmarks/ is on the path when a script here runs.

from mnist_jax import conv, optim, step

REPO = Path(__file__).resolve().parents[1]
# (conv features, kernel sizes, dense units, dropout): the shipped CNN configs and tuomaso's.
NETS = {
    "fast_cnn": ((16, 32), (5, 5), (128,), 0.0),
    "cnn": ((16, 32), (5, 5), (256,), 0.25),
    "tuomaso": ((24, 32), (5, 3), (256,), 0.0),
    "bn_cnn": ((32, 64), (3, 3), (128,), 0.0),  # Its conv shapes; no BatchNorm here.
}
FORMS = ("native", *conv.FORMS)
XLA_SETTINGS = {
    "default": "",
    "use_onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "onednn_dot_fusion": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
}
CEILING_SIDE = 2048


class Net(nn.Module):
    """conv -> ReLU -> 2x2 max-pool per layer, ReLU dense layers, classifier; (n, 784) input.
    Parameters float32; `dtype` is the compute type; `pool` the max-pool's form."""

    features: Sequence[int]
    kernels: Sequence[int]
    hidden: Sequence[int]
    dropout: float
    form: str
    dtype: str = "float32"
    pool: str = "max_pool2"  # The models' conv.max_pool2, or nn.max_pool ("reduce_window").

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dt = jnp.dtype(self.dtype)
        x = x.reshape(x.shape[0], 28, 28, 1).astype(dt)
        for f, k in zip(self.features, self.kernels, strict=True):
            init = nn.initializers.lecun_normal()
            c = conv.layer(f, k, self.form, train=train, kernel_init=init, dtype=dt)
            x = nn.relu(c(x))
            pooled = conv.max_pool2(x) if self.pool == "max_pool2" else None
            x = nn.max_pool(x, (2, 2), strides=(2, 2)) if pooled is None else pooled
        x = x.reshape(x.shape[0], -1)
        for units in self.hidden:
            x = nn.relu(nn.Dense(units, dtype=dt)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(10, dtype=dt)(x).astype(jnp.float32)


def forward_macs(net: str) -> int:
    """Multiply-adds of one example's forward pass."""
    features, kernels, hidden, _ = NETS[net]
    side, channels, macs = 28, 1, 0
    for f, k in zip(features, kernels, strict=True):
        macs += side * side * k * k * channels * f
        side, channels = side // 2, f
    width = side * side * channels
    for units in (*hidden, 10):
        macs, width = macs + width * units, units
    return macs


def optimizer(steps: int):
    """configs/cnn.py's optimizer (Adam 0.01, one-cycle), loaded by path (not a package)."""
    spec = importlib.util.spec_from_file_location("cnn", REPO / "configs" / "cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return optim.make_optimizer(module.get_config().optimizer, steps)


def train_rate(model: nn.Module, batch: int, steps: int, repeats: int) -> tuple[float, float]:
    """(examples/s, compile s) of `steps` steps of `step.train_chunk` in one call."""
    rng = np.random.default_rng(0)
    n = batch * steps
    images = jnp.asarray(rng.integers(0, 256, (n, 784)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
    tx = optimizer(steps)
    state = step.init_state(model, tx, 0)
    rows, first, num = jnp.arange(n), jnp.int32(0), jnp.int32(steps)

    def chunk(state, images, labels, rows, first, num):
        return step.train_chunk(
            state, images, labels, rows, first, num, model=model, tx=tx, batch_size=batch
        )

    args = (state, images, labels, rows, first, num)
    t = time.perf_counter()
    compiled = jax.jit(chunk).lower(*args).compile()
    compile_s = time.perf_counter() - t
    go = lambda: jax.block_until_ready(compiled(*args))  # noqa: E731
    go()  # Warm-up.
    return n / timed(go, repeats), compile_s


def forward_rate(model: nn.Module, batches: int, repeats: int) -> float:
    """Examples/s of the inference forward (train=False, as evaluation and predict run it) over
    `batches` batches of 1,000 in one jitted scan."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (batches, 1000, 784))
    params = model.init(jax.random.PRNGKey(1), x[0])

    def run(params, x):
        count = lambda n, xb: (n + jnp.sum(jnp.argmax(model.apply(params, xb), -1)), None)  # noqa: E731
        return jax.lax.scan(count, jnp.int32(0), x)[0]

    compiled = jax.jit(run).lower(params, x).compile()
    go = lambda: jax.block_until_ready(compiled(params, x))  # noqa: E731
    go()  # Warm-up.
    return batches * 1000 / timed(go, repeats)


def matmul_ceiling(repeats: int, side: int = CEILING_SIDE) -> float:
    """GFLOP/s of a float32 (side x side) @ (side x side) matmul, 4 in one jitted call."""
    a = jax.random.normal(jax.random.PRNGKey(0), (side, side), jnp.float32)
    f = jax.jit(lambda a: jax.lax.fori_loop(0, 4, lambda i, m: (m @ a) * 1e-3, a))
    jax.block_until_ready(f(a))
    return 4 * 2 * side**3 / timed(lambda: jax.block_until_ready(f(a)), repeats) / 1e9


def torch_rate(net: str, batch: int, steps: int, repeats: int) -> float | None:
    """PyTorch's training examples/s for the same network, Adam, 2 threads; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    features, kernels, hidden, dropout = NETS[net]
    layers, channels = [], 1
    for f, k in zip(features, kernels, strict=True):
        layers += [torch.nn.Conv2d(channels, f, k, padding=k // 2), torch.nn.ReLU()]
        layers.append(torch.nn.MaxPool2d(2))
        channels = f
    layers.append(torch.nn.Flatten())
    width = channels * (28 // 2 ** len(features)) ** 2
    for units in hidden:
        layers += [torch.nn.Linear(width, units), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = units
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (steps, batch, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (steps, batch), generator=g)

    def run():
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[i].float() / 255.0), y[i])
            loss.backward()
            opt.step()

    run()  # Warm-up.
    return batch * steps / timed(run, repeats)


def in_process(args, header: dict) -> None:
    """One JSON line per (net, form, dtype, batch size) in this process, plus torch's."""
    ceiling = matmul_ceiling(args.repeats)
    print(json.dumps({**header, "case": "matmul_ceiling", "gflops": round(ceiling, 1)}))
    for net in args.nets.split(","):
        features, kernels, hidden, dropout = NETS[net]
        gflop = 3 * 2 * forward_macs(net) / 1e9  # Per example, forward + backward.
        for batch in map(int, args.batch_sizes.split(",")):
            for form, dtype, pool in itertools.product(*(args.forms, args.dtypes, args.pools)):
                model = Net(features, kernels, hidden, dropout, form, dtype, pool)
                rate, compile_s = train_rate(model, batch, args.steps, args.repeats)
                row = {**header, "net": net, "form": form, "dtype": dtype, "batch": batch}
                row.update({"pool": pool} if pool != "max_pool2" else {})
                row.update(examples_per_sec=round(rate), gflops=round(rate * gflop, 1))
                row.update(ratio_to_matmul_ceiling=round(rate * gflop / ceiling, 3))
                if args.forward_batches:
                    forward = forward_rate(model, args.forward_batches, args.repeats)
                    row["forward_examples_per_sec"] = round(forward)
                print(json.dumps({**row, "compile_s": round(compile_s, 2)}), flush=True)
            if args.torch:
                rate = torch_rate(net, batch, args.steps, args.repeats)
                row = {**header, "net": net, "form": "torch", "batch": batch}
                if rate is None:
                    print(json.dumps({**row, "skipped": "torch is not installed"}), flush=True)
                    continue
                row.update(examples_per_sec=round(rate), gflops=round(rate * gflop, 1))
                row.update(ratio_to_matmul_ceiling=round(rate * gflop / ceiling, 3))
                print(json.dumps(row), flush=True)


def check_args(args: argparse.Namespace) -> None:
    """Every list flag names known entries and every count fits, before anything is timed:
    else one `error:` line and exit 1."""
    chosen = {"nets": args.nets.split(","), "forms": args.forms, "pools": args.pools,
              "xla_settings": list(filter(None, args.xla_settings.split(",")))}  # fmt: skip
    known = {"nets": NETS, "forms": FORMS, "pools": ("max_pool2", "reduce_window"),
             "xla_settings": XLA_SETTINGS}  # fmt: skip
    for flag, names in chosen.items():
        for name in names:
            if name not in known[flag]:
                sys.exit(f"error: --{flag}: {name!r} is not one of {', '.join(known[flag])}")
    for name in args.dtypes:
        if name not in ("float32", "bfloat16", "float16"):
            sys.exit(f"error: --dtypes: {name!r} is not one of float32, bfloat16, float16")
    if not all(b.strip().isdigit() and int(b) > 0 for b in args.batch_sizes.split(",")):
        sys.exit(f"error: --batch_sizes={args.batch_sizes}: must be positive ints")
    for flag, value, least in (("steps", args.steps, 1), ("repeats", args.repeats, 1),
                               ("forward_batches", args.forward_batches, 0)):  # fmt: skip
        if value < least:
            sys.exit(f"error: --{flag}={value}: must be at least {least}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--dtypes", default="float32", help="compute types, e.g. float32,bfloat16")
    parser.add_argument("--pools", default="max_pool2", help="max_pool2 and/or reduce_window")
    parser.add_argument("--batch_sizes", default="256")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--forward_batches", type=int, default=2, help="batches of 1,000 in the inference timing"
    )
    parser.add_argument("--torch", action="store_true", help="also time PyTorch, if installed")
    parser.add_argument("--xla_settings", default="", help=f"subset of {','.join(XLA_SETTINGS)}")
    args = parser.parse_args()
    args.forms, args.dtypes, args.pools = (
        a.split(",") for a in (args.forms, args.dtypes, args.pools)
    )
    check_args(args)
    if args.quick:
        args.nets, args.steps, args.repeats, args.batch_sizes = "tuomaso", 2, 1, "8"
        args.forward_batches = 1
    for name in filter(None, args.xla_settings.split(",")):
        env = {**os.environ, "XLA_FLAGS": XLA_SETTINGS[name], "CNN_SPEED_SETTING": name}
        argv = [a for a in sys.argv[1:] if not a.startswith("--xla_settings")]
        subprocess.run([sys.executable, __file__, *argv], env=env, check=True)
    if args.xla_settings:
        return
    header = {
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "xla_setting": os.environ.get("CNN_SPEED_SETTING", "default"),
    }
    in_process(args, header)


if __name__ == "__main__":
    main()
