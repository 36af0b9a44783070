"""What the shipped model families share: their weight initializers and the config field that
picks one."""

from __future__ import annotations

import flax.linen as nn

from mnist_jax.fields import Choice, FieldSpec

KERNEL_INITS = {
    "zeros": nn.initializers.zeros,  # TF's LinearClassifier starts from zero weights.
    "glorot_uniform": nn.initializers.glorot_uniform(),  # TF/Keras Dense default.
    "lecun_normal": nn.initializers.lecun_normal(),  # Flax default.
    "he_normal": nn.initializers.he_normal(),
    "truncated_normal": nn.initializers.truncated_normal(0.02),  # TFLearn's default.
}

FIELDS = (
    FieldSpec(
        "model.kernel_init",
        "glorot_uniform",
        Choice(lambda: tuple(KERNEL_INITS)),
        "Initializer of every weight matrix (the shipped models).",
    ),
)


def positive_int(v: object) -> bool:
    """An int (not a bool) above zero."""
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
