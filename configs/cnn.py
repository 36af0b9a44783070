"""A small CNN (two 5x5 conv + 2x2 max-pool layers, 32 and 64 filters, a 512-unit dense layer)
with Adam and a one-cycle schedule. Provisional: being tuned."""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "cnn"
    c.model.conv_features = (32, 64)
    c.model.hidden_units = (512,)
    c.model.dropout_rate = 0.25
    c.model.conv_impl = "auto"  # slices on CPU, nn.Conv elsewhere: same parameters.
    c.batch_size = 100
    c.num_steps = 0
    c.num_epochs = 8.0
    c.num_periods = 8
    c.eval_batch_size = 1000  # The slices form holds 25x the conv input per eval batch.
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 0.002
    c.optimizer.clip_norm = 0.0
    c.optimizer.schedule = "one_cycle"
    c.optimizer.warmup_fraction = 0.2
    return c
