"""The epoch shuffle: a true permutation of range(n) for every n, a pure function of the key,
different every epoch, with no visible structure, and one batch computable alone."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax.shuffle import batch_indices, epoch_permutation

# Each new n compiles (~0.5 s), so examples are few; the sizes strategy favours the edge cases.
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)

# Sizes where the cipher's domain is exact, one past it (the worst walk) and one short of it.
EDGES = [m for k in (1, 2, 3, 4, 7, 10, 15, 16) for m in (2**k - 1, 2**k, 2**k + 1)]
PRIMES = [2, 3, 5, 7, 11, 13, 97, 101, 997, 7919, 54_959, 65_521, 99_991]
SIZES = st.one_of(st.sampled_from([1, 55_000, 100_000, *EDGES, *PRIMES]), st.integers(1, 100_000))
SEEDS = st.integers(0, 2**32 - 1)


@functools.cache
def _jitted(n: int):
    """One compiled permutation per size (hypothesis revisits sizes)."""
    return jax.jit(lambda key: epoch_permutation(key, n))


def perm(seed: int, n: int, epoch: int = 0) -> np.ndarray:
    return np.asarray(_jitted(n)(jax.random.fold_in(jax.random.PRNGKey(seed), epoch)))


@SETTINGS
@given(n=SIZES, seed=SEEDS)
def test_is_a_permutation_of_range_n(n, seed):
    p = perm(seed, n)
    assert p.dtype == np.int32 and p.shape == (n,)
    np.testing.assert_array_equal(np.sort(p), np.arange(n))


@SETTINGS
@given(n=SIZES, seed=SEEDS)
def test_deterministic_for_a_key(n, seed):
    np.testing.assert_array_equal(perm(seed, n), perm(seed, n))


def test_the_order_of_a_seed_is_pinned():
    """The same seed gives the same order in every version (runs resume and reproduce)."""
    np.testing.assert_array_equal(
        epoch_permutation(jax.random.PRNGKey(0), 10), [1, 8, 7, 6, 4, 9, 2, 3, 0, 5]
    )


@SETTINGS
@given(n=SIZES.filter(lambda n: n >= 8), seed=SEEDS, epoch=st.integers(0, 1000))
def test_different_epochs_give_different_orders(n, seed, epoch):
    assert not np.array_equal(perm(seed, n, epoch), perm(seed, n, epoch + 1))


@settings(SETTINGS, max_examples=6)
@given(
    n=st.sampled_from([1000, 55_000, 65_537]),
    seed=SEEDS,
    batch=st.sampled_from([7, 100]),
    data=st.data(),
)
def test_a_batch_computed_alone_is_that_slice_of_the_epoch(n, seed, batch, data):
    step = data.draw(st.integers(0, n // batch - 1), label="step")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    alone = jax.jit(batch_indices, static_argnums=(1, 3))(key, n, step, batch)
    np.testing.assert_array_equal(alone, perm(seed, n)[step * batch : (step + 1) * batch])


def test_vmaps_over_keys():
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    batched = jax.vmap(lambda k: epoch_permutation(k, 1000))(keys)
    for k, row in zip(keys, batched, strict=True):
        np.testing.assert_array_equal(row, _jitted(1000)(k))


@pytest.mark.parametrize("n", [10_000, 55_000, 65_537])
def test_order_looks_random(n):
    """No rank correlation with index order or between consecutive epochs; the first batch
    draws evenly from the ten deciles of the index range; fixed points are as rare as chance."""
    epochs = [perm(0, n, e) for e in range(4)]
    ranks = np.arange(n)
    limit = 4 / np.sqrt(n)  # ~4 standard errors of a rank correlation under independence.
    for a, b in itertools.pairwise(epochs):
        assert abs(np.corrcoef(ranks, a)[0, 1]) < limit
        assert abs(np.corrcoef(a, b)[0, 1]) < limit
        assert np.mean(a == b) < 10 / n
    first = np.concatenate([e[:1000] for e in epochs])
    counts = np.bincount(first * 10 // n, minlength=10)
    chi2 = np.sum((counts - len(first) / 10) ** 2 / (len(first) / 10))
    assert chi2 < 30  # chi-square, 9 degrees of freedom: P(> 30) ~ 4e-4.
    assert sum(int(np.sum(e == ranks)) for e in epochs) < 15  # ~Poisson(1) per epoch.


@pytest.mark.parametrize("n", [0, -1, 2**31])
def test_rejects_sizes_outside_one_to_2_31(n):
    with pytest.raises(ValueError, match="n must be"):
        epoch_permutation(jax.random.PRNGKey(0), n)


def test_rejects_a_traced_size():
    with pytest.raises(TypeError, match="static"):
        jax.jit(epoch_permutation)(jax.random.PRNGKey(0), jnp.int32(5))
