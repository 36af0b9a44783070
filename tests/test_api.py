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
    if x.size and x.dtype.kind == "f":
        assert x.max() > 1  # [0, 1] floats are refused, not read as near-black pixels.


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
