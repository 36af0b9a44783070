"""Fast MLP: 784-512-10, Adam with a one-cycle schedule, batch 200, 4 epochs. Provisional."""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "mlp"
    c.model.hidden_units = (512,)
    c.batch_size = 200
    c.num_steps = 0
    c.num_epochs = 4.0
    c.num_periods = 2
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 0.01
    c.optimizer.clip_norm = 0.0
    c.optimizer.schedule = "one_cycle"
    c.optimizer.warmup_fraction = 0.25
    return c
