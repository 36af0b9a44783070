"""The classic linear baseline: softmax regression from zero weights, Adagrad + clip 5.0."""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "linear"
    c.model.hidden_units = ()
    c.model.kernel_init = "zeros"  # As TF's LinearClassifier.
    c.batch_size = 100
    c.num_steps = 5000
    c.num_periods = 10
    c.optimizer.name = "adagrad"
    c.optimizer.learning_rate = 0.05
    c.optimizer.clip_norm = 5.0
    return c
