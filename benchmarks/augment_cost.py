"""What on-device augmentation costs per training step, each transform off and on.

    python benchmarks/augment_cost.py                 # fast_mlp and fast_cnn, best of 3
    python benchmarks/augment_cost.py --quick         # CI: tiny sizes, checks that it runs

For each model (configs/fast_mlp.py: MLP 784-512-10, batch 200; configs/fast_cnn.py: the CNN,
batch 128) and each augmentation (off, shift, affine, elastic, all), it times the program the
run driver calls (`step.chunk_program`, `augment.from_config` as the driver builds it) over
device-resident random uint8 data of MNIST's shape, and the transform alone on one batch.
Prints one JSON line per (model, augmentation): ms per step, its ratio to the same model with
augmentation off (measured in this process, the settings interleaved), and ms of the transform
alone on one batch. Timings exclude compilation and are the best of `--repeats` calls.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from mnist_jax import augment, config as config_lib, models, optim, step
from mnist_jax.sharding import Placement

AUGMENTS = {
    "off": {},
    "shift": {"max_shift": 2},
    "affine": {"max_rotation": 10.0, "max_scale": 0.1},
    "elastic": {"elastic_alpha": 34.0, "elastic_sigma": 4.0},
    "all": {"max_shift": 2, "max_rotation": 10.0, "max_scale": 0.1, "elastic_alpha": 34.0,
            "elastic_sigma": 4.0},
}  # fmt: skip
CASES = ("fast_mlp", "fast_cnn")
STEPS = {"fast_mlp": 50, "fast_cnn": 5}  # Per timed call: about as long as each other.


def best_times(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Best wall time of each function (which blocks until its result is ready) over
    `repeats` rounds, the functions interleaved within a round so that a machine whose load
    drifts slows them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def chunk_runner(config, fields: dict, images, labels, steps: int):
    """A warm, timed call of `steps` steps of the driver's program with `fields` set."""
    aug_config = config.augment.copy_and_resolve_references()
    for name, value in fields.items():
        aug_config[name] = value
    aug = augment.from_config(aug_config)
    model = models.create_model(config.model)
    tx = optim.make_optimizer(config.optimizer, 10**6)
    p = Placement()
    x, y = p.put(images), p.put(labels)
    rows = p.put_members(np.arange(len(labels), dtype=np.int32)[None])
    program = step.chunk_program(model, tx, config.batch_size, p, "auto", 1, aug)
    holder = [p.stack_members([step.init_state(model, tx, 0)]), 0]
    program = program.lower(holder[0], x, y, rows, 0, 0).compile()  # As the driver does.

    def run():
        holder[0], stats = program(holder[0], x, y, rows, holder[1], steps)
        holder[1] += steps
        jax.block_until_ready(stats)

    run()  # Warm-up.
    return run, aug


def transform_runner(aug, batch: np.ndarray):
    """A warm, timed call of the transform alone (jitted) on one batch."""
    fn = jax.jit(aug)
    key = jax.random.PRNGKey(0)
    x = jax.device_put(batch)
    fn(key, x).block_until_ready()
    return lambda: fn(key, x).block_until_ready()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed call (0: auto)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats, n = (1, 1000) if args.quick else (args.repeats, 55_000)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    for case in args.cases.split(","):
        config = config_lib.load(case)
        steps = 2 if args.quick else args.steps or STEPS[case]
        if args.quick:
            config.batch_size = 20
        runs, alone = {}, {}
        for name, fields in AUGMENTS.items():
            runs[name], aug = chunk_runner(config, fields, images, labels, steps)
            if aug is not None:
                alone[name] = transform_runner(aug, images[: config.batch_size])
        step_s, alone_s = best_times(runs, repeats), best_times(alone, repeats)
        for name, fields in AUGMENTS.items():
            ms = 1000 * step_s[name] / steps
            row = {
                "case": case,
                "batch_size": config.batch_size,
                "augment": name,
                "fields": fields,
                "ms_per_step": round(ms, 3),
                "ratio_to_off": round(step_s[name] / step_s["off"], 3),
                "transform_alone_ms": round(1000 * alone_s.get(name, 0.0), 3),
                "steps_per_call": steps,
                "repeats": repeats,
                "backend": jax.default_backend(),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
