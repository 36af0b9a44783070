"""Best CNN: aims at >= 99.6% test accuracy within 15 minutes (the whole command) on a 2-core
CPU: configs/bn_cnn.py's BatchNorm CNN trained 10 epochs on images
shifted by up to 2 pixels, rotated up to 10 degrees and scaled up to 10%, then scored with
test-time augmentation (the mean softmax of each image and 4 copies shifted 1 pixel).

Not chosen by a full sweep (no time for one on the shared machine): a BatchNorm CNN with affine
augmentation and a one-cycle schedule is the usual recipe for 99.5-99.7% on MNIST. Two
lengths compared on the validation split, seed 0, full MNIST, each measured once while the
machine was shared (so the times are not this config's):
- 10 epochs (this config; 2026-12-07, load 8-14, 2-core Intel Xeon VM): validation 99.62%,
  test 99.50%, with TTA 99.57%, 2,312 s;
- 20 epochs (2026-12-08, load 6-10, 2-core AMD EPYC VM, conv.py's vjp kernel gradient by rows
  and max_pool2): validation 99.56%, test 99.56%, with TTA 99.56%, 2,416 s at 240-930 ex/s.
Both short of the 99.6% target; 10 epochs kept (the better validation figure, by 3 images).
"""

from mnist_jax.configs import bn_cnn


def get_config():
    c = bn_cnn.get_config()
    c.augment.max_shift = 2
    c.augment.max_rotation = 10.0
    c.augment.max_scale = 0.1
    c.augment.tta_shift = 1
    c.num_epochs = 10.0
    c.num_periods = 5
    return c
