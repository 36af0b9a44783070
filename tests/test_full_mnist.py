"""The accuracy each config promises, on full MNIST (about 80 s on a 2-core CPU).

Skipped unless $MNIST_JAX_DATA_DIR holds the four MNIST IDX files: the promise is about full
MNIST, and the 5,000-digit sample cannot check it. `.ci/run` points it at ../shared/data/mnist.
"""

from __future__ import annotations

import pytest

from conftest import REPO, full_mnist_dir, train_results

pytestmark = pytest.mark.skipif(
    full_mnist_dir() is None, reason="needs full MNIST: set MNIST_JAX_DATA_DIR to the IDX files"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "minimum"),
    [("linear", 0.91), ("dnn", 0.98), ("tflearn_dnn", 0.97), ("fast_mlp", 0.98)],
)
def test_config_reaches_its_accuracy(tmp_path, name, minimum):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.source = "idx"
    config.data.dir = full_mnist_dir()
    config.tensorboard = False
    results = train_results(config, tmp_path)
    assert results["final"]["test"]["size"] == 10_000
    assert results["final"]["test"]["accuracy"] >= minimum
