"""LeNet-5 (LeCun et al. 1998) for 20 epochs, the paper's length, every training image shifted
by up to 2 pixels: batch 128, Adam with a one-cycle schedule (peak 0.003).

Measured on full MNIST on 2026-12-08 (2-core AMD EPYC VM, CPU only, shared with 3 other jobs, load
8-10; jax 0.10.2): seed 0 reached 99.24% validation and 99.14% test (0.86% error; the paper:
0.95% without distortions, 0.8% with); seed 1: 99.16% and 99.24%; seed 2: 99.14% and 99.19%.
The whole command took 1112.8 s (seed 1, load 5-9) and 622.7 s (seed 2, load 6-8). Without
the shift it reached 98.86% validation and 98.73% test (100% train from epoch 16: overfits).
On the quiet machine with the cpu form (commit 9c32c8b, load 0.3-2; benchmarks/README.md):
seed 0, 99.16% test in 189.4 s whole command.

The shift was chosen on the validation split, by `python -m mnist_jax.sweep --config=lenet5
--config.augment.max_shift=2 --sweep=augment.max_rotation=0,10 --sweep=augment.max_scale=0,0.1`
(two members trained, --shard=0/4 and 3/4): the shift alone and the shift with rotation +-10
degrees and scale +-10% both reached 99.24%; the shift alone had the lower validation log-loss
(0.0222 vs 0.0232), and is exact and cheaper, so it was kept.

What differs from the paper's recipe: minibatch Adam, not per-example stochastic diagonal
Levenberg-Marquardt with a hand-stepped rate (0.0005 down to 0.00001); softmax cross-entropy on
a dense output layer, not RBF units and the MAP criterion (see mnist_jax/models/lenet5.py); the
paper's distortions were 540,000 affine copies (translation, scaling, squeezing, horizontal
shearing) drawn once and added to the 60,000 originals, here each step draws a new whole-pixel
shift of each image of its batch on the device (no scaling, squeezing or shearing, no
undistorted copies); the last 5,000 training images are held out for validation (the paper
trains on all 60,000). conv_impl auto trains with conv.py's cpu form on CPU (slices for C1's one
input channel, vjp for C3); the figures under load above were measured with the slices form
for both, the quiet one with the cpu form.
"""

from mnist_jax import config as base


def get_config():
    c = base.get_config()
    c.model.name = "lenet5"
    c.model.lenet5_c3 = "paper"
    c.model.kernel_init = "glorot_uniform"
    c.model.conv_impl = "auto"
    c.augment.max_shift = 2  # Chosen by validation over rotation and scale too (docstring).
    c.batch_size = 128
    c.num_steps = 0
    c.num_epochs = 20.0
    c.num_periods = 5
    c.eval_batch_size = 1000
    c.eval_train_examples = 5000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 0.003
    c.optimizer.clip_norm = 0.0
    c.optimizer.schedule = "one_cycle"
    c.optimizer.warmup_fraction = 0.25
    return c
