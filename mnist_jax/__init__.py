"""mnist-jax: MNIST classifiers in JAX/Flax, from the command line or from Python.

import mnist_jax as mj
run = mj.train(mj.load_config("dnn", num_steps=2000), "runs/dnn")
"""

import sys

__version__ = "0.1.0"
__all__ = ["Run", "load_config", "load_run", "train"]

if sys.argv[:1] == ["-m"]:  # `python -m mnist_jax.X`: Ctrl-C during imports is one line.
    import gc as _gc

    # Loading JAX and the rest makes almost no garbage, but a second of collections on a
    # 2-core CPU; `cli.run` turns the collector back on once the flags are parsed.
    _gc.disable()
    from mnist_jax import cli as _cli

    _cli.install_startup_handlers()


def __getattr__(name: str):
    """The API, imported on first use (so that `python -m` tools start without JAX)."""
    if name in __all__:
        from mnist_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'mnist_jax' has no attribute {name!r}")
