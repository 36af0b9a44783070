"""On-device data augmentation of training batches, and the shifted copies of test-time
augmentation (TTA).

`Augment` (from `config.augment`; None when every transform is off) maps a uint8 batch
(n, 784) to a uint8 batch inside the jitted step: per example, a random whole-pixel shift
(`max_shift`), a random rotation and scale about the centre (`max_rotation` degrees,
`max_scale` a fraction), and an elastic distortion (Simard et al. 2003: a uniform random
displacement field smoothed by a Gaussian of `elastic_sigma` px and scaled by `elastic_alpha`
px). They compose into one map of sampling coordinates and one bilinear sampling
(`jax.scipy.ndimage.map_coordinates`, zero outside the image), so the image is resampled once;
a shift alone samples whole pixels and is exact. The result is rounded back to uint8: the
step's input contract (uint8 pixels, scaled inside the step) stays the one every batch has.

Randomness: the step passes `fold_in(fold_in(rng, AUGMENT), step)`; each transform folds in its
own index, so turning one on does not change what another draws. Every draw has the batch's
full shape, so the values do not depend on how the batch is sharded over devices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

from mnist_jax.errors import UserError

SIDE = 28  # Images are SIDE x SIDE, stored flat (n, SIDE * SIDE).
CENTRE = (SIDE - 1) / 2
_SHIFT, _AFFINE, _ELASTIC = range(3)  # fold_in indices: one stream per transform.


@dataclasses.dataclass(frozen=True)
class Augment:
    """The training transforms; a zero leaves its transform out of the program."""

    max_shift: int = 0
    max_rotation: float = 0.0  # Degrees.
    max_scale: float = 0.0  # Fraction: scale factor in [1 - max_scale, 1 + max_scale].
    elastic_alpha: float = 0.0  # Pixels.
    elastic_sigma: float = 0.0  # Pixels.

    def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """The batch `images` (n, 784) uint8, each example transformed with parameters drawn
        from `key`."""
        return warp(images, self.coordinates(key, images.shape[0]))

    def coordinates(self, key: jax.Array, n: int) -> jax.Array:
        """Where each output pixel samples its input: (n, 2, 28, 28) (row, column)."""
        grid = jnp.stack(jnp.meshgrid(*(jnp.arange(SIDE, dtype=jnp.float32),) * 2, indexing="ij"))
        coords = jnp.broadcast_to(grid, (n, 2, SIDE, SIDE))
        if self.max_shift:
            k = self.max_shift
            t = jax.random.randint(jax.random.fold_in(key, _SHIFT), (n, 2), -k, k + 1)
            coords = coords - t.astype(jnp.float32)[:, :, None, None]
        if self.max_rotation or self.max_scale:
            inverse = _inverse_affine(jax.random.fold_in(key, _AFFINE), n, self)
            centred = coords - CENTRE
            coords = jnp.einsum("nij,njhw->nihw", inverse, centred, precision="highest") + CENTRE
        if self.elastic_alpha:
            coords = coords + elastic_field(
                jax.random.fold_in(key, _ELASTIC), n, self.elastic_alpha, self.elastic_sigma
            )
        return coords


def from_config(c: Any) -> Augment | None:
    """The transforms of `config.augment`, or None when all are off (the step is unchanged)."""
    aug = Augment(
        int(c.max_shift),
        float(c.max_rotation),
        float(c.max_scale),
        float(c.elastic_alpha),
        float(c.elastic_sigma),
    )
    on = aug.max_shift or aug.max_rotation or aug.max_scale or aug.elastic_alpha
    return aug if on else None


def validate_config(c: Any) -> None:
    """The rules tying `config.augment` fields together (UserError)."""
    if c.elastic_alpha > 0 and c.elastic_sigma <= 0:
        raise UserError(
            f"config.augment.elastic_alpha={c.elastic_alpha} needs augment.elastic_sigma > 0 "
            "(the smoothing of the displacement field; Simard et al. 2003 use 4 with alpha 34)"
        )


def warp(images: jax.Array, coords: jax.Array) -> jax.Array:
    """Bilinear samples of `images` (n, 784) uint8 at `coords` (n, 2, 28, 28), 0 outside the
    image, rounded to uint8 (n, 784)."""
    pixels = images.reshape(-1, SIDE, SIDE).astype(jnp.float32)

    def one(image, c):
        return map_coordinates(image, [c[0], c[1]], order=1, mode="constant", cval=0.0)

    out = jax.vmap(one)(pixels, coords)
    return jnp.round(jnp.clip(out, 0, 255)).astype(jnp.uint8).reshape(images.shape)


def _inverse_affine(key: jax.Array, n: int, aug: Augment) -> jax.Array:
    """Per example, the inverse (output -> input) of a rotation by a uniform angle in
    +-max_rotation degrees and a scaling by a uniform factor in 1 +- max_scale: (n, 2, 2)."""
    k_angle, k_scale = jax.random.split(key)
    limit = math.radians(aug.max_rotation)
    angle = jax.random.uniform(k_angle, (n,), minval=-limit, maxval=limit)
    scale = jax.random.uniform(k_scale, (n,), minval=1 - aug.max_scale, maxval=1 + aug.max_scale)
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    return jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)


def gaussian_matrix(sigma: float) -> np.ndarray:
    """(28, 28) matrix G with G @ f the Gaussian smoothing (std `sigma` px) of a column f,
    zero beyond the image; the kernel sums to 1 over every offset the image holds."""
    offsets = np.arange(SIDE)[:, None] - np.arange(SIDE)[None, :]
    kernel = np.exp(-(offsets.astype(np.float64) ** 2) / (2 * sigma**2))
    norm = np.exp(-(np.arange(-SIDE + 1, SIDE, dtype=np.float64) ** 2) / (2 * sigma**2)).sum()
    return (kernel / norm).astype(np.float32)


def elastic_field(key: jax.Array, n: int, alpha: float, sigma: float) -> jax.Array:
    """Simard et al. 2003's displacement fields (n, 2, 28, 28): uniform in [-1, 1] per pixel
    and direction, smoothed by a separable Gaussian of std `sigma` px, times `alpha` px."""
    noise = jax.random.uniform(key, (n, 2, SIDE, SIDE), minval=-1.0, maxval=1.0)
    g = jnp.asarray(gaussian_matrix(sigma))
    smooth = jnp.einsum("ij,ncjk,lk->ncil", g, noise, g, precision="highest")
    return alpha * smooth


def shift(images: jax.Array, dy: int, dx: int) -> jax.Array:
    """`images` (n, 784) moved `dy` px down and `dx` px right (whole pixels, zero fill)."""
    square = images.reshape(-1, SIDE, SIDE)
    zero = jnp.zeros((), images.dtype)
    moved = jax.lax.pad(square, zero, [(0, 0, 0), (dy, -dy, 0), (dx, -dx, 0)])
    return moved.reshape(images.shape)


def tta_shifts(pixels: int) -> tuple[tuple[int, int], ...]:
    """The copies test-time augmentation averages: the image, then shifted `pixels` px down,
    up, right and left. 0: the image alone."""
    if not pixels:
        return ((0, 0),)
    s = pixels
    return ((0, 0), (s, 0), (-s, 0), (0, s), (0, -s))


def tta_record(pixels: int, scored: dict[str, Any]) -> dict[str, Any]:
    """results.json's (and eval_results.json's) `tta`: the shift, its copies, and the scores
    of each split (`scored`) with them."""
    return {"shift": pixels, "copies": [list(c) for c in tta_shifts(pixels)], **scored}


def tta_logits(
    apply: Callable[[jax.Array], jax.Array], images: jax.Array, pixels: int
) -> jax.Array:
    """`apply(images)` (logits), or with `pixels` > 0 the log of the mean softmax over the
    `tta_shifts(pixels)` copies: logits whose softmax is the averaged prediction."""
    if not pixels:
        return apply(images)
    copies = tta_shifts(pixels)
    logs = jnp.stack([jax.nn.log_softmax(apply(shift(images, dy, dx))) for dy, dx in copies])
    return jax.nn.logsumexp(logs, 0) - math.log(len(copies))
