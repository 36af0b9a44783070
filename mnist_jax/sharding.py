"""Where arrays live: a 1-D `data` mesh over every device of every process.

The training set is replicated (each step gathers its batch on device); each batch is sharded
over `data` (data parallelism by automatic sharding); evaluation splits are padded to whole
batches whose size divides by the device count, and sharded the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mnist_jax import data as data_lib
from mnist_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """A split on device, padded to whole eval batches: images (batches, batch, 784)."""

    images: jax.Array
    labels: jax.Array
    size: int


class Placement:
    """The mesh and the shardings of a run's arrays."""

    def __init__(self, devices: list | None = None):
        devices = jax.devices() if devices is None else devices
        self.mesh = Mesh(np.asarray(devices), ("data",))
        self.num_devices = self.mesh.size
        self.replicated = NamedSharding(self.mesh, P())
        self.batch = NamedSharding(self.mesh, P("data"))
        self._eval = NamedSharding(self.mesh, P(None, "data"))

    def check_batch(self, batch_size: int, num_train: int) -> None:
        if batch_size % self.num_devices:
            raise UserError(
                f"config.batch_size={batch_size} must divide by the {self.num_devices} devices"
            )
        if batch_size > num_train:
            raise UserError(
                f"config.batch_size={batch_size} is larger than the training split ({num_train})"
            )

    def put(self, x: np.ndarray) -> jax.Array:
        """A host array on every device (each process passes the same full array)."""
        x = np.asarray(x)
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
        sharding = self._eval

        def put(x):
            return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

        return EvalSplit(put(images), put(labels), n)
