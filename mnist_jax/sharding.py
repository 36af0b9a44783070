"""Where arrays live: a 1-D `data` mesh over every device of every process.

The training set is replicated (each step gathers its batch on device); each batch is sharded
over `data` (data parallelism by automatic sharding); evaluation splits are padded to whole
batches whose size divides by the device count, and sharded the same way.

A group of K sweep members on D devices (`for_members`) uses a 2-D mesh (`member`, `data`) of
G x D/G devices, G = gcd(K, D): the member axis of the state is split into G blocks, one per
row of devices, and each member's batch is sharded over its row's D/G devices. No member is
padded, so no device trains a member that is thrown away; K = 3 on 8 devices (G = 1) falls
back to data parallelism alone. A multiple of D members (`--max_parallel`) gives G = D.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
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
    """The mesh and the shardings of a run's arrays; `member_groups` > 1: a (member, data)
    mesh whose rows each train a block of the members."""

    def __init__(self, devices: list | None = None, member_groups: int = 1):
        self.devices = list(jax.devices() if devices is None else devices)
        self.member_groups = member_groups
        if member_groups == 1:
            self.mesh = Mesh(np.asarray(self.devices), ("data",))
            every = "data"
        else:
            grid = np.asarray(self.devices).reshape(member_groups, -1)
            self.mesh = Mesh(grid, ("member", "data"))
            every = ("member", "data")
        self.num_devices = self.mesh.size
        self.replicated = NamedSharding(self.mesh, P())
        self.batch = NamedSharding(self.mesh, P("data"))
        split = P("member") if member_groups > 1 else P()
        self.members = NamedSharding(self.mesh, split)  # A leading member axis.
        self._eval = NamedSharding(self.mesh, P(None, every))

    def for_members(self, num_members: int) -> Placement:
        """The placement of a group of `num_members`: gcd(members, devices) member groups."""
        groups = math.gcd(num_members, self.num_devices)
        return self if groups == self.member_groups else Placement(self.devices, groups)

    def stack_members(self, states: list[Any]) -> Any:
        """Per-member pytrees stacked on a leading member axis, split over the member groups."""
        if self.member_groups == 1:
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
        return jax.tree_util.tree_map(
            lambda *xs: self.put_members(np.stack([np.asarray(x) for x in xs])), *states
        )

    def put_members(self, x: np.ndarray) -> jax.Array:
        """A host array with a leading member axis, split over the member groups."""
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self.members, lambda idx: x[idx])

    def member(self, stacked: Any, k: int) -> Any:
        """Member `k` of a stacked pytree, whole on every device (as a single run holds it)."""
        if self.member_groups == 1:
            return jax.tree_util.tree_map(lambda x: x[k], stacked)
        return self._take(stacked, k)

    @functools.cached_property
    def _take(self):
        return jax.jit(
            lambda tree, k: jax.tree_util.tree_map(lambda x: x[k], tree),
            out_shardings=self.replicated,
        )

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
