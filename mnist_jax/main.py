"""Command line: `python -m mnist_jax.main --config=configs/dnn.py --workdir=runs/dnn`.

Thin on purpose: flags in, `train.train_and_evaluate` (or evaluation of a saved run) out;
`cli.run` turns errors into one line and an exit status.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from mnist_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file in configs/.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and resume) or eval only.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir even if its config.json differs."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, for a multi-process run by hand."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0-based.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for all processes to join."
)
flags.mark_flags_as_required(["config", "workdir"])


def run(argv: list[str]) -> int:
    """Runs the requested mode; returns the process exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import jax

    from mnist_jax import distributed, evaluate, train  # Imported after flags parse: jax.

    distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _INIT_TIMEOUT.value
    )

    config = _CONFIG.value
    if _MODE.value == "eval":
        evaluate.evaluate_workdir(_WORKDIR.value, config)
    else:
        train.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value)
        if config.plots and jax.process_count() == 1:
            from mnist_jax import plot

            plot.plot_workdir(_WORKDIR.value)
        elif config.plots:  # Restoring for plots would wait on the other processes' orbax.
            logging.info("multi-process run: plot it with python -m mnist_jax.plot --workdir=...")
    return 0


if __name__ == "__main__":
    cli.run(run)
