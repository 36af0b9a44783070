"""The TFLearn notebook's DNN: 784-342-68-10 ReLU, SGD lr 0.1, batch 100, 30 epochs, 10% val."""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "mlp"
    c.model.hidden_units = (342, 68)
    c.model.kernel_init = "truncated_normal"  # TFLearn's fully_connected default (stddev 0.02).
    c.batch_size = 100
    c.num_steps = 0
    c.num_epochs = 30.0
    c.num_periods = 30  # One evaluation per epoch, as TFLearn's show_metric.
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.clip_norm = 0.0
    c.data.validation_size = 0.1  # TFLearn's validation_set=0.1.
    return c
