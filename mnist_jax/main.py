"""Train (or resume, or score) an MNIST classifier.

    python -m mnist_jax.main --config=configs/dnn.py --workdir=runs/dnn
    python -m mnist_jax.main --config=configs/dnn.py --workdir=runs/lr01 \\
        --config.optimizer.learning_rate=0.1
    python -m mnist_jax.main --config=configs/dnn.py --show_config   # every field, explained
    python -m mnist_jax.main --workdir=runs/dnn --mode=eval           # the run's own test set

Rerunning the same command resumes from the latest checkpoint; a finished run is left as it is.
Process-wide settings (signal handlers, JAX's compilation cache, jax.distributed) are made here,
in the command line, never by the library that `mnist_jax.train` is.
"""

from __future__ import annotations

from absl import app, flags

from mnist_jax import cli

_WORKDIR, _CONFIG = cli.define_flags(
    "Directory for checkpoints, metrics, plots.",
    "A config file (configs/dnn.py) or shipped name; override any field with "
    "--config.FIELD=VALUE (see --show_config).",
)
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"], "train (resuming if the workdir has a checkpoint), or "
    "eval: score the workdir's latest checkpoint on its own test data (--config optional)."
)  # fmt: skip
_SHOW = flags.DEFINE_bool("show_config", False, "Print every config field and exit.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose config.json differs; the new "
    "learning rate, clip norm and weight decay take effect."
)  # fmt: skip
_FALLBACK = flags.DEFINE_bool(
    "fallback_checkpoint", False, "If the latest checkpoint is corrupt, resume from the "
    "newest intact older one instead of stopping."
)  # fmt: skip
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, for a multi-process run by hand."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0-based.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for all processes to join."
)
_PEER_TIMEOUT = flags.DEFINE_float(
    "peer_timeout", 30, "Seconds a silent process of a multi-process run is taken for lost."
)


def run(argv: list[str], overrides: dict) -> int:
    """Runs the requested mode (`overrides`: the --config.FIELD values given); returns the
    process exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from mnist_jax import config as config_lib
    from mnist_jax.errors import UserError

    config = _CONFIG.value
    if _SHOW.value:
        if config is None:
            raise UserError("--show_config needs --config=FILE")
        print(config_lib.describe(config))
        return 0
    if not _WORKDIR.value:
        raise UserError("--workdir is required (where the run's files go)")
    if not flags.FLAGS["config"].present and _MODE.value == "train":
        raise UserError("--config is required to train (e.g. --config=configs/dnn.py)")

    import gc

    import jax

    from mnist_jax import api, distributed  # Imported after flags parse: jax.

    # The modules are loaded: the collector need not walk their objects again at every full
    # collection (a few tenths of a second per run); garbage made from here on is collected.
    gc.freeze()

    distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _INIT_TIMEOUT.value,
        _PEER_TIMEOUT.value,
    )  # fmt: skip
    if _MODE.value == "eval":
        _evaluate(config, overrides)
        return 0
    api.enable_compilation_cache()
    if jax.process_count() > 1 and config.plots:
        config = config.copy_and_resolve_references()
        config.plots = False  # Figures need the whole test set in one process: plot it after.
    result = api.train(
        config,
        _WORKDIR.value,
        allow_config_change=_ALLOW_CHANGE.value,
        fallback_checkpoint=_FALLBACK.value,
        t0=process_start_time(),
    )
    if jax.process_index() == 0:
        print(result.summary())
    return 0


def _evaluate(config, overrides: dict) -> None:
    """--mode=eval: scores the workdir's latest checkpoint on its own test data, or on other
    data named by --config.data.FIELD flags; any other field must be the run's own."""
    from mnist_jax import config as config_lib, evaluate
    from mnist_jax.errors import UserError
    from mnist_jax.rundir import RunDir

    other = [k for k in overrides if not k.startswith("data.")]
    if flags.FLAGS["config"].present:  # Allowed when it describes the run's own model.
        saved = RunDir(_WORKDIR.value).saved_config()
        if saved is not None:
            fields = config_lib.differing_fields(
                config_lib.to_dict(saved), config_lib.to_dict(config)
            )
            other += [f for f in fields if not f.startswith("data.")
                      and f not in config_lib.RESUMABLE_FIELDS]  # fmt: skip
    if other:
        raise UserError(
            f"config.{other[0]} differs from the run's: eval scores the run's own model; "
            "give only --config.data.FIELD=VALUE flags (or no --config)"
        )
    data = {k.removeprefix("data."): v for k, v in overrides.items() if k.startswith("data.")}
    evaluate.evaluate_workdir(_WORKDIR.value, data)


def process_start_time() -> float:
    """When this process started (Linux: /proc, to 10 ms), so wall times include imports. Both
    the start and /proc/uptime count from boot; /proc/stat's boot time is whole seconds only."""
    import os
    import time

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


if __name__ == "__main__":
    cli.run(run)
