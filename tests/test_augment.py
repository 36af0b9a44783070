"""On-device augmentation and test-time shifts: what each transform may do to an image, that
it is keyed by (seed, step) alone, and that off means the program (and bits) of before."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mnist_jax import augment, config as config_lib, data, evaluate, models, optim, step
from mnist_jax.errors import UserError

from conftest import same_params, small_config, train_results

ON = {  # Every transform on, at strengths a CNN trains with.
    "augment.max_shift": 2,
    "augment.max_rotation": 10.0,
    "augment.max_scale": 0.1,
    "augment.elastic_alpha": 34.0,
    "augment.elastic_sigma": 4.0,
}
AUGMENTS = st.builds(
    augment.Augment,
    max_shift=st.integers(0, 27),
    max_rotation=st.floats(0, 180),
    max_scale=st.floats(0, 0.99),
    elastic_alpha=st.floats(0, 100),
    elastic_sigma=st.floats(0.1, 30),
)
KEYS = st.integers(0, 2**32 - 1).map(jax.random.PRNGKey)


def _batch(sample, start: int, n: int = 16) -> jax.Array:
    return jnp.asarray(sample.images[start : start + n])


def _pixels(x) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def _np_shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    square, out = x.reshape(-1, 28, 28), np.zeros((len(x), 28, 28), x.dtype)
    rows, cols = slice(max(dy, 0), 28 + min(dy, 0)), slice(max(dx, 0), 28 + min(dx, 0))
    out[:, rows, cols] = square[:, max(-dy, 0) : 28 - max(dy, 0), max(-dx, 0) : 28 - max(dx, 0)]
    return out.reshape(x.shape)


@given(k=st.integers(1, 4), key=KEYS, start=st.integers(0, 4000))
@settings(max_examples=10)
def test_a_shift_moves_each_image_by_whole_pixels_up_to_max_shift(sample, k, key, start):
    x = _batch(sample, start)
    y = np.asarray(augment.Augment(max_shift=k)(key, x))
    shifted = {(dy, dx): _np_shift(np.asarray(x), dy, dx)
               for dy in range(-k, k + 1) for dx in range(-k, k + 1)}  # fmt: skip
    moves = []
    for i in range(len(x)):
        found = [move for move, z in shifted.items() if np.array_equal(z[i], y[i])]
        assert found, f"example {i} is not a shift of at most {k} px"
        moves.append(found[0])
    assert len(set(moves)) > 1  # Each example draws its own shift.


@given(aug=AUGMENTS, key=KEYS)
@settings(max_examples=15)
def test_a_blank_image_stays_blank_under_any_transform(aug, key):
    assert not np.any(aug(key, jnp.zeros((3, 784), jnp.uint8)))


@given(aug=AUGMENTS, key=KEYS, start=st.integers(0, 4000))
@settings(max_examples=15)
def test_outputs_are_pixels_within_the_inputs_range(sample, aug, key, start):
    """Bilinear sampling is a convex combination: no value beyond the image's own (no
    uint8 wrap-around), and a uniform image stays uniform where its samples fall inside."""
    x = _batch(sample, start, 4)
    y = aug(key, x)
    assert y.dtype == jnp.uint8 and y.shape == x.shape
    assert np.all(_pixels(y).max(1) <= _pixels(x).max(1))
    for value in (1, 255):
        flat = aug(key, jnp.full((4, 784), value, jnp.uint8))
        c = np.asarray(aug.coordinates(key, 4))
        inside = np.all((c >= 0) & (c <= 27), axis=1).reshape(4, 784)
        assert np.all(np.asarray(flat)[inside] == value)


@pytest.mark.parametrize("sigma", [0.5, 4.0, 40.0])
def test_identity_parameters_give_the_identical_image(sample, sigma):
    x = _batch(sample, 100)
    key = jax.random.PRNGKey(3)
    grid = augment.Augment().coordinates(key, len(x))
    assert np.array_equal(augment.warp(x, grid), x)  # Sampling at the pixels themselves.
    assert np.array_equal(augment.shift(x, 0, 0), x)
    for dy, dx in ((1, 0), (-3, 2), (0, -27)):  # The test-time shift: whole pixels, zero fill.
        assert np.array_equal(augment.shift(x, dy, dx), _np_shift(np.asarray(x), dy, dx))
    # A transform at 0 is left out: elastic with alpha 0 (whatever sigma) is the identity.
    assert np.array_equal(augment.Augment(elastic_sigma=sigma)(key, x), x)
    assert augment.from_config(_augment_config(elastic_sigma=sigma)) is None


def _augment_config(**fields):
    c = config_lib.get_config().augment
    for name, value in fields.items():
        c[name] = value
    return c


@given(
    field=st.sampled_from(["max_shift", "max_rotation", "max_scale", "elastic_alpha"]),
    value=st.floats(0.01, 0.9),
)
def test_any_transform_turns_augmentation_on_and_none_leaves_it_off(field, value):
    value = 1 if field == "max_shift" else value
    assert augment.from_config(_augment_config(**{field: value, "elastic_sigma": 1.0}))
    assert augment.from_config(config_lib.get_config().augment) is None


def test_an_elastic_strength_without_smoothness_is_refused():
    c = small_config("", "dnn")
    c.augment.elastic_alpha = 34.0
    with pytest.raises(UserError, match=r"elastic_alpha=34.0 needs augment.elastic_sigma > 0"):
        config_lib.validate(c)


def _parts(config):
    model = models.create_model(config.model)
    return model, optim.make_optimizer(config.optimizer, 1000)


def test_the_step_and_seed_alone_key_the_augmentation(sample):
    """train_step augments with fold_in(fold_in(rng, AUGMENT), step): the same (seed, step)
    trains the same, another step or seed another (a linear model: only augmentation draws)."""
    c = small_config("", "linear", **ON)
    model, tx = _parts(c)
    aug = augment.from_config(c.augment)
    one = jax.jit(functools.partial(step.train_step, model=model, tx=tx, augment=aug))
    plain = jax.jit(functools.partial(step.train_step, model=model, tx=tx))
    x, y = sample.images[:50], sample.labels[:50]
    state = step.init_state(model, tx, 0)

    def params(s, at, rng=state.rng, fn=one):
        return fn(s.replace(step=jnp.int32(at), rng=rng), x, y)[0].params

    assert _tree_equal(params(state, 5), params(state, 5))
    assert not _tree_equal(params(state, 5), params(state, 6))
    assert not _tree_equal(params(state, 5), params(state, 5, rng=jax.random.PRNGKey(1)))
    assert _tree_equal(params(state, 5, fn=plain), params(state, 6, fn=plain))  # The control.
    # The step is the plain step on the batch augmented with that key.
    key = jax.random.fold_in(step.rng_stream(0, step.AUGMENT), 5)
    assert _tree_equal(
        params(state, 5), plain(state.replace(step=jnp.int32(5)), aug(key, x), y)[0].params
    )


def _tree_equal(a, b) -> bool:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return all(np.array_equal(u, v) for u, v in leaves)


def test_chunking_does_not_change_an_augmented_run(sample):
    """7 steps in one call == 3 + 4 == seven calls of one step, bit for bit, across epochs."""
    c = small_config("", "linear", **{"batch_size": 500, **ON})
    model, tx = _parts(c)
    run = jax.jit(functools.partial(step.train_chunk, model=model, tx=tx, batch_size=500,
                                    augment=augment.from_config(c.augment)))  # fmt: skip
    images, labels, rows = sample.images, sample.labels, jnp.arange(1500)  # 3 steps an epoch.
    init = functools.partial(step.init_state, model, tx, 0)
    one, _ = run(init(), images, labels, rows, 0, 7)
    two, _ = run(init(), images, labels, rows, 0, 3)
    two, _ = run(two, images, labels, rows, 3, 4)
    many = init()
    for s in range(7):
        many, _ = run(many, images, labels, rows, s, 1)
    assert _tree_equal(one, two) and _tree_equal(one, many)


def test_augmentation_off_is_the_program_of_before(sample):
    """All augment fields at 0: the step is not given a transform, so the compiled chunk is
    the one without augmentation (same program, same bits; no compile-time cost)."""
    c = small_config("", "dnn", **{"augment.elastic_sigma": 4.0})
    model, tx = _parts(c)
    assert augment.from_config(c.augment) is None
    args = (step.init_state(model, tx, 0), sample.images, sample.labels, jnp.arange(5000), 0, 3)

    def program(**kwargs):
        fn = functools.partial(step.train_chunk, model=model, tx=tx, batch_size=20, **kwargs)
        return str(jax.make_jaxpr(fn)(*args))

    assert program(augment=augment.from_config(c.augment)) == program()
    assert program(augment=augment.from_config(c.augment)) != program(
        augment=augment.Augment(max_shift=1)
    )


def test_an_augmented_run_resumes_to_the_straight_runs_bits(tmp_path, idx_dir):
    config = small_config(idx_dir, "linear", **{"num_steps": 40, "num_periods": 2, **ON})
    train_results(config, tmp_path / "straight")
    config.num_steps = 20
    train_results(config, tmp_path / "resumed")
    config.num_steps = 40
    results = train_results(config, tmp_path / "resumed")
    assert results["resumed_from_step"] == 20
    assert same_params(tmp_path / "straight", tmp_path / "resumed")


def test_test_time_shifts_are_recorded_and_equal_the_averaged_prediction(tmp_path, idx_dir):
    config = small_config(idx_dir, "linear", **{"augment.tta_shift": 2})
    results = train_results(config, tmp_path / "run")
    tta = results["tta"]
    assert tta["shift"] == 2 and tta["copies"] == [[0, 0], [2, 0], [-2, 0], [0, 2], [0, -2]]
    assert set(tta) == {"shift", "copies", "validation", "test"}
    # By hand, through the inference path: the softmax of each shifted copy, averaged.
    model, params, _ = evaluate.restore_model(tmp_path / "run")
    test = data.load_test(config.data)[0]
    probs = np.mean([evaluate.predict_probs(model, params, _np_shift(test.images, dy, dx))
                     for dy, dx in tta["copies"]], axis=0)  # fmt: skip
    assert tta["test"]["size"] == len(test) == results["final"]["test"]["size"]
    assert tta["test"]["accuracy"] == np.mean(probs.argmax(1) == test.labels)
    log_loss = -np.mean(np.log(probs[np.arange(len(test)), test.labels]))
    np.testing.assert_allclose(tta["test"]["log_loss"], log_loss, rtol=1e-5)
    plain = evaluate.predict_probs(model, params, test.images)
    assert results["final"]["test"]["accuracy"] == np.mean(plain.argmax(1) == test.labels)
    # --mode=eval scores the checkpoint with the run's shift, the same way.
    evaluated = evaluate.evaluate_workdir(tmp_path / "run")["tta"]
    assert evaluated == {k: tta[k] for k in ("shift", "copies", "test")}
    assert "tta" not in train_results(small_config(idx_dir, "linear"), tmp_path / "off")
