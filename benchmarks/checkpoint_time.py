"""Checkpoint save and restore time for a config's full train state (orbax, local disk).

python benchmarks/checkpoint_time.py --config=configs/dnn.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax

from mnist_jax import checkpoint, config as config_lib, models, optim, step as step_lib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/dnn.py")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = config_lib.load(args.config)
    model = models.create_model(config.model)
    state = step_lib.init_state(model, optim.make_optimizer(config.optimizer), config.seed)
    size = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
    saves, restores = [], []
    with tempfile.TemporaryDirectory() as d, checkpoint.Checkpointer(Path(d), 100) as ckpt:
        for step in range(1, args.repeats + 1):
            t = time.perf_counter()
            ckpt.save(step, state)
            blocking = time.perf_counter() - t
            ckpt.wait()
            saves.append((blocking, time.perf_counter() - t))
            t = time.perf_counter()
            jax.block_until_ready(ckpt.restore(jax.eval_shape(lambda: state), step))
            restores.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "config": args.config,
                "state_bytes": size,
                "save_blocking_s": round(min(s[0] for s in saves), 4),
                "save_total_s": round(min(s[1] for s in saves), 4),
                "restore_s": round(min(restores), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
