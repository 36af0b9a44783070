"""Multi-process JAX: start the distributed runtime, and agree on host-side decisions.

Everything else about scale lives in JAX itself: `train.Engine` puts a 1-D `data` mesh over
`jax.devices()` (all devices of all processes), replicates the state and the device-resident
data, and shards each batch over the mesh, so the same code runs on 1 CPU, 8 GPUs or a pod.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from mnist_jax.errors import UserError


def auto_detected() -> bool:
    """Whether the environment describes a multi-process job JAX can configure itself from
    (a TPU pod slice, or a SLURM job of more than one task)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def initialize(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    timeout_s: int = 300,
) -> None:
    """Calls `jax.distributed.initialize` when flags or the environment ask for several
    processes; a no-op for a single-process run. Must run before any JAX computation."""
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(
                f"--coordinator_address needs --num_processes >= 1 and 0 <= --process_id < "
                f"num_processes (got {num_processes}, {process_id})"
            )
        kwargs = {
            "coordinator_address": coordinator_address,
            "num_processes": num_processes,
            "process_id": process_id,
        }
    elif auto_detected():
        kwargs = {}
    else:
        return
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s)
    except Exception as e:  # JAX raises RuntimeError/XlaRuntimeError on timeouts.
        raise UserError(f"jax.distributed.initialize failed: {str(e).splitlines()[0]}") from None
    logging.info(
        "process %d of %d; %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (e.g. one host got SIGTERM), so that all
    processes take the same branch and no collective is left waiting."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def min_over_processes(value: int) -> int:
    """The smallest of every process's `value` (all processes must agree on loop bounds)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.min(multihost_utils.process_allgather(np.int64(value))))
