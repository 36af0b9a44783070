"""The classic exercise as one sweep: the linear model's learning rate x batch size grid, each
trained for 10, 100 and 1000 steps (first_layer_by_steps.png shows the weights side by side).

    python -m mnist_jax.sweep --config=configs/linear_sweep.py --workdir=runs/linear_sweep
"""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "linear"
    c.model.hidden_units = ()
    c.model.kernel_init = "zeros"
    c.num_steps = 1000
    c.num_periods = 10
    c.optimizer.name = "adagrad"
    c.optimizer.clip_norm = 5.0
    c.sweep = (
        "optimizer.learning_rate=0.003,0.03,0.3",
        "batch_size=10,50,100",
        "num_steps=10,100,1000",
    )
    return c
