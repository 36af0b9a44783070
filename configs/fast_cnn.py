"""Fast CNN: >= 99.0% test accuracy in about a minute on a 2-core CPU. Two 5x5 conv + 2x2
max-pool layers (16 and 32 filters), a 128-unit dense layer, Adam with a one-cycle schedule
(peak 0.01), 2 epochs of batch 128, one evaluation period.

Trades accuracy and observability for time: no dropout, few epochs (configs/cnn.py goes on to
>= 99.2%), one train/validation evaluation at the end, a 5,000-example train-accuracy subset.
"""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "cnn"
    c.model.conv_features = (16, 32)
    c.model.hidden_units = (128,)
    c.model.dropout_rate = 0.0
    c.model.conv_impl = "auto"  # slices on CPU, nn.Conv elsewhere: the same parameters.
    c.batch_size = 128
    c.num_steps = 0
    c.num_epochs = 2.0
    c.num_periods = 1
    c.eval_batch_size = 1000  # Bounds conv activation memory per eval batch.
    c.eval_train_examples = 5000  # Same shape as the validation split: one eval compile.
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 0.01
    c.optimizer.clip_norm = 0.0
    c.optimizer.schedule = "one_cycle"
    c.optimizer.warmup_fraction = 0.25
    return c
