"""CNN to >= 99.2% test accuracy: two 5x5 conv + 2x2 max-pool layers (16 and 32 filters), a
256-unit dense layer with dropout 0.25, Adam with a one-cycle schedule, 6 epochs of batch 128.

Trades time for accuracy: about 3x the training compute of configs/fast_cnn.py (a wider dense
layer, dropout, 3x the epochs). conv_impl auto trains with conv.py's cpu form on CPU.
"""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "cnn"
    c.model.conv_features = (16, 32)
    c.model.hidden_units = (256,)
    c.model.dropout_rate = 0.25
    c.model.conv_impl = "auto"  # cpu form on CPU, nn.Conv elsewhere: the same parameters.
    c.batch_size = 128
    c.num_steps = 0
    c.num_epochs = 6.0
    c.num_periods = 6
    c.eval_batch_size = 1000  # Bounds conv activation memory per eval batch.
    c.eval_train_examples = 5000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 0.01
    c.optimizer.clip_norm = 0.0
    c.optimizer.schedule = "one_cycle"
    c.optimizer.warmup_fraction = 0.25
    return c
