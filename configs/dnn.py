"""An MLP with clipped Adagrad (TF1 settings) that reaches >= 98% test accuracy on MNIST."""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "mlp"
    c.model.hidden_units = (512, 256)
    c.model.dropout_rate = 0.0
    c.batch_size = 100
    c.num_steps = 20_000
    c.num_periods = 10
    c.optimizer.name = "adagrad"
    c.optimizer.learning_rate = 0.05
    c.optimizer.clip_norm = 5.0
    return c
