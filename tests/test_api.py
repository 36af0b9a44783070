"""The Python API's inputs: what `Run.predict` takes, found by a search over arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from mnist_jax import api
from mnist_jax.errors import UserError

DTYPES = st.sampled_from(
    [np.uint8, np.int32, np.int64, np.float32, np.float64, np.bool_, np.complex64]
)
SHAPES = st.sampled_from([(784,), (28, 28), (0, 784), (3, 784), (2, 28, 28), (5,), (2, 783), ()])


@given(hnp.arrays(DTYPES, SHAPES, elements={"allow_nan": True, "allow_infinity": True}))
def test_predict_inputs_are_pixels_or_one_clear_error(x):
    try:
        out = api.as_pixels(x)
    except UserError as e:
        assert str(e).startswith("images:")
        return
    assert out.dtype == np.uint8 and out.ndim == 2 and out.shape[1] == 784
    assert x.dtype.kind in "uif" and np.all(np.isfinite(x))
    if x.size and x.dtype.kind == "f":  # [0, 1] floats are refused, not read as near-black;
        peaks = x.reshape(len(out), -1).max(axis=1)  # an all-black image is valid in both.
        assert np.all((peaks == 0) | (peaks > 1))


@given(
    black=st.integers(0, 3),
    scaled=st.sampled_from([None, 1.0, 0.5, 1e-6]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_all_black_float_images_are_valid_and_scaled_ones_are_named(black, scaled, dtype):
    batch = np.zeros((black + 2, 784), dtype)
    batch[0, :10] = 255  # One ordinary 0-255 image.
    if scaled is not None:
        batch[-1, 100] = scaled  # The last image is [0, 1] scaled.
    if scaled is None:
        out = api.as_pixels(batch)
        assert out.dtype == np.uint8 and not out[1:].any() and out[0, 0] == 255
    else:
        with pytest.raises(UserError, match=rf"image {len(batch) - 1} has floats in \[0, 1\]"):
            api.as_pixels(batch)
    assert not api.as_pixels(np.zeros((28, 28), dtype)).any()  # One black image.


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.full((2, 784), 0.5), r"floats in \[0, 1\]"),
        (np.full((2, 784), np.nan), "finite"),
        (np.zeros((2, 10)), "expected"),
        ("hello", "expected numbers"),
        (None, "expected numbers"),
    ],
)
def test_predict_refuses_what_it_cannot_read(images, message):
    with pytest.raises(UserError, match=message):
        api.as_pixels(images)


def test_predict_takes_one_image_in_either_shape():
    img = np.arange(784).reshape(28, 28) % 256
    assert np.array_equal(api.as_pixels(img), api.as_pixels(img.reshape(784)))
    assert api.as_pixels(np.zeros((0, 784), np.uint8)).shape == (0, 784)
