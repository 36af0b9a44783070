"""mnist-jax: linear and MLP classifiers for MNIST in JAX/Flax."""

__version__ = "0.1.0"
