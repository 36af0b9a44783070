"""What every command-line tool here shares: flag parsing and errors as one line, exit codes.

`run(fn)` is `absl.app.run` with two differences: a parse failure (missing config file, unknown
field, bad type) and a UserError each print one `error: ...` line and exit 1, and a run stopped
by SIGTERM/SIGINT exits 128+signal after its checkpoint is saved. `--verbosity=1` shows
tracebacks and the libraries' INFO logs too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from mnist_jax.errors import UserError


class _QuietLibraries(logging.logging.Filter):
    """Keeps orbax's and jax's INFO chatter (dozens of lines per checkpoint) out of the log;
    their warnings and errors still pass."""

    def filter(self, record) -> bool:
        noisy = "/orbax/" in record.pathname or "/jax/_src/" in record.pathname
        if noisy and record.exc_info:  # Our one-line error says it; no library traceback.
            record.exc_info, record.exc_text = None, None
        return not noisy or record.levelno >= logging.logging.WARNING


def run(fn: Callable[[list[str]], int | None]) -> None:
    """Runs `fn(argv)` as the program's main."""

    def main(argv: list[str]) -> None:
        from mnist_jax.driver import Interrupted  # Imports jax: after flags are parsed.

        verbose = logging.get_verbosity() >= logging.DEBUG
        if not verbose:
            logging.get_absl_handler().addFilter(_QuietLibraries())
            # After a failed async save, tensorstore's callbacks hit orbax's closed event
            # loop and Python would print a traceback for each; one line each is enough.
            sys.unraisablehook = _one_line_unraisable
        try:
            code = fn(argv) or 0
        except UserError as e:
            if verbose:
                raise
            print(f"error: {e}", file=sys.stderr)
            _exit(1)
        except Interrupted as e:
            print(str(e), file=sys.stderr)
            _exit(128 + e.signum)
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading, compiling).
            print(
                "interrupted outside the training loop; saved checkpoints are intact",
                file=sys.stderr,
            )
            _exit(130)
        _exit(code)

    app.run(main, flags_parser=parse_flags)


def _exit(code: int) -> None:
    """Exits with `code`; if a library left a non-daemon thread running (orbax after a failed
    save), ends the process anyway rather than hang at shutdown."""
    import threading

    sys.stdout.flush()
    sys.stderr.flush()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(t.is_alive() and not t.daemon for t in others):
        logging.flush()
        os._exit(code)
    sys.exit(code)


def _one_line_unraisable(unraisable) -> None:
    exc = unraisable.exc_value
    logging.warning("ignored in a library callback: %s: %s", type(exc).__name__, exc)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parse, with every failure (bad file, unknown field, bad type) as one line."""
    try:
        config_file = _config_file(argv)
        if config_file and not os.path.isfile(config_file.split(":")[0]):
            raise FileNotFoundError(config_file)
        return flags.FLAGS(argv)
    except Exception as e:
        print(f"error: {_flag_error(e, argv)}", file=sys.stderr)
        sys.exit(1)


def _config_file(argv: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")


def _flag_error(e: Exception, argv: list[str]) -> str:
    config_file = _config_file(argv)
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
        if bad:
            return f"unknown config field {', '.join(bad)}: {config_file} has no field {field!r}"
    return f"cannot load config {config_file}: {type(e).__name__}: {e}".splitlines()[0]
