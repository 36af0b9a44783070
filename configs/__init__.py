"""The shipped configs; installed as `mnist_jax.configs` (see pyproject.toml), so that
`mnist_jax.config.load("dnn")` and `import mnist_jax.configs.dnn` work from any directory."""
