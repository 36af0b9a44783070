"""Command line: `python -m mnist_jax.main --config=configs/dnn.py --workdir=runs/dnn`.

Thin on purpose: flags in, `train.train_and_evaluate` (or evaluation of a saved run) out.
A UserError becomes one line on stderr and exit status 1; a SIGTERM/SIGINT after its checkpoint
is saved exits with 128+signal. `--verbosity=1` (or higher) shows tracebacks too.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mnist_jax.errors import UserError

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


class _QuietLibraries(logging.logging.Filter):
    """Keeps orbax's and jax's INFO chatter (dozens of lines per checkpoint) out of the run log;
    their warnings and errors still pass. `--verbosity=1` shows everything."""

    def filter(self, record) -> bool:
        noisy = "/orbax/" in record.pathname or "/jax/_src/" in record.pathname
        return not noisy or record.levelno >= logging.logging.WARNING


def run(argv: list[str]) -> int:
    """Runs the requested mode; returns the process exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if logging.get_verbosity() < logging.DEBUG:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    from mnist_jax import distributed, evaluate, train  # Imported after flags parse.

    distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _INIT_TIMEOUT.value
    )

    config = _CONFIG.value
    if _MODE.value == "eval":
        evaluate.evaluate_workdir(_WORKDIR.value, config)
    else:
        train.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value)
    return 0


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parse, with every failure (bad file, unknown field, bad type) as one line."""
    try:
        config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        if config_file and not os.path.isfile(config_file.split(":")[0]):
            raise FileNotFoundError(config_file)
        return flags.FLAGS(argv)
    except Exception as e:
        print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
        sys.exit(1)


def _flag_error(e: Exception, argv: list[str]) -> str:
    config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if isinstance(e, flags.Error):
        return str(e).splitlines()[0]
    if config_file and not os.path.isfile(config_file.split(":")[0]):
        return f"config file {config_file} not found"
    if isinstance(e, SyntaxError):
        return f"cannot load config file {config_file}: {e.msg} (line {e.lineno})"
    if isinstance(e, AttributeError) and "get_config" in str(e):
        return f"config file {config_file} has no get_config() function"
    if isinstance(e, (AttributeError, KeyError)):
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        field = str(e).strip("\"'")
        bad = [o for o in overrides if o.split(".")[-1] == field] or overrides
        return (
            f"unknown config field {', '.join(bad)}: {config_file} has no field {field!r}"
            if bad
            else f"{config_file}: {type(e).__name__}: {e}"
        )
    return f"cannot load config {config_file}: {type(e).__name__}: {e}".splitlines()[0]


def main(argv: list[str]) -> None:
    from mnist_jax.train import Interrupted

    try:
        sys.exit(run(argv))
    except UserError as e:
        if logging.get_verbosity() >= logging.DEBUG:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        logging.warning("%s", e)
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
