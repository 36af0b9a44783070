"""What every command-line tool here shares: flag parsing, config loading, one-line errors,
signals and exit codes.

`run(fn)` is `absl.app.run` with these differences: every bad input (a flag, a config file, a
config field) prints one `error: ...` line and exits 1; `--config=dnn` names a shipped config;
a repeated `--config.x=` flag replaces the earlier one (the last wins); the config is complete
and validated before `fn` runs; `fn(argv, overrides)` gets the `--config.FIELD` values given.
A stop signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1) prints one line and exits 128+signal: during
start-up at once, later after the training loop saved its checkpoint. `--verbosity=1` shows
tracebacks. The command line, not the library, sets process-wide state (signal handlers here,
JAX's compilation cache in each tool's main).
A closed stdout (`... | head -1`) ends the command quietly with status 1.
"""

from __future__ import annotations

import ast
import errno
import functools
import gc
import os
import signal
import sys
import unicodedata
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

from mnist_jax.errors import STOP_SIGNALS, PeerLost, UserError


class Stopped(BaseException):
    """A stop signal outside the training loop, which handles its own."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def install_startup_handlers() -> None:
    """Until `run` hands over to the command, a stop signal prints one line and exits
    128+signal at once: nothing has been written yet, and no traceback is wanted."""
    _install(_exit_during_startup)


def _install(handler: Callable[[int, Any], None], sigint: Any = None) -> None:
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup and `cmd &` keep theirs.
            signal.signal(sig, sigint if sig == signal.SIGINT and sigint else handler)


def _exit_during_startup(signum: int, frame: Any) -> None:
    del frame
    name = signal.Signals(signum).name
    os.write(2, f"interrupted by {name} during start-up; nothing was written\n".encode())
    os._exit(128 + signum)


def _raise_stopped(signum: int, frame: Any) -> None:
    del frame
    raise Stopped(signum)


class _QuietLibraries(logging.logging.Filter):
    """Keeps orbax's and jax's INFO chatter (dozens of lines per checkpoint) out of the log;
    their warnings and errors still pass."""

    def filter(self, record) -> bool:
        noisy = "/orbax/" in record.pathname or "/jax/_src/" in record.pathname
        if noisy and record.exc_info:  # Our one-line error says it; no library traceback.
            record.exc_info, record.exc_text = None, None
        return not noisy or record.levelno >= logging.logging.WARNING


_PATH_FORM_ERRORS = (errno.ENAMETOOLONG, errno.ELOOP)  # A name too long; a symlink loop.


def run(fn: Callable[[list[str], dict[str, Any]], int | None]) -> None:
    """Runs `fn(argv, overrides)` as the program's main."""
    install_startup_handlers()
    overrides: dict[str, Any] = {}  # Filled by parse_flags.

    def main(argv: list[str]) -> None:
        gc.enable()  # Off while `python -m` loaded the modules (mnist_jax/__init__.py).
        _install(_raise_stopped, sigint=signal.default_int_handler)
        verbose = logging.get_verbosity() >= logging.DEBUG
        if not verbose:
            logging.get_absl_handler().addFilter(_QuietLibraries())
            # After a failed async save, tensorstore's callbacks hit orbax's closed event
            # loop and Python would print a traceback for each; one line each is enough.
            sys.unraisablehook = _one_line_unraisable
        try:
            code = fn(argv, dict(overrides)) or 0
        except UserError as e:
            if verbose:
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            _exit(1, now=isinstance(e, PeerLost))
        except OSError as e:  # A path the OS refuses by its form, met by any check.
            if e.errno not in _PATH_FORM_ERRORS or verbose:
                raise
            print(f"error: {one_line(f'{e.filename}: {e.strerror}')}", file=sys.stderr)
            _exit(1)
        except (KeyboardInterrupt, Stopped) as e:  # Outside the training loop.
            signum = getattr(e, "signum", signal.SIGINT)
            print(
                f"interrupted by {signal.Signals(signum).name}; saved checkpoints are intact",
                file=sys.stderr,
            )
            _exit(128 + signum)
        except Exception as e:
            if type(e).__name__ != "Interrupted" or not hasattr(e, "signum"):
                raise
            # The training loop stopped on a signal after saving its checkpoint.
            print(str(e), file=sys.stderr)
            _exit(128 + e.signum)
        _exit(code)

    try:
        app.run(main, flags_parser=functools.partial(parse_flags, overrides=overrides))
    except BrokenPipeError:  # stdout's reader left early (`| head -1`): exit quietly.
        _quiet_broken_pipe()


def _quiet_broken_pipe() -> None:
    """Python's documented SIGPIPE practice: point stdout at /dev/null so that the flush at
    shutdown cannot fail again, and exit 1 without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def _exit(code: int, now: bool = False) -> None:
    """Exits with `code`; if a library left a non-daemon thread running (orbax after a failed
    save), or `now` (a lost peer: JAX's shutdown would wait for it, then abort), ends the
    process at once rather than hang or abort at shutdown. Otherwise the interpreter shuts
    down as usual (atexit handlers, then module teardown), except that its garbage collector
    no longer walks the objects alive now (`gc.freeze`): with JAX, Flax, orbax and matplotlib
    loaded that walk took about a second, and nothing of ours waits on it (every file is
    written and closed before this point)."""
    import threading

    sys.stdout.flush()
    sys.stderr.flush()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if now or any(t.is_alive() and not t.daemon for t in others):
        logging.flush()
        os._exit(code)
    gc.freeze()
    sys.exit(code)


def one_line(message: object) -> str:
    """A message as one line of plain text: a control character inside a value (a path, a
    flag: newline, carriage return, NUL, escape) or a Unicode line separator is shown
    escaped (`\\n`, `\\x00`, `\\x1b`, `\\u2028`), so it can neither break the line nor
    drive the terminal."""
    return "".join(_escaped(c) for c in str(message))


def _escaped(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    if unicodedata.category(c) in ("Cc", "Zl", "Zp"):
        code = ord(c)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return c


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _one_line_unraisable(unraisable) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, (Stopped, KeyboardInterrupt)):  # A signal that landed in a finaliser:
        import threading  # deliver it again once this hook has returned (raised in the hook,

        signum = getattr(exc, "signum", signal.SIGINT)  # it is lost, with a traceback).
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    logging.warning("ignored in a library callback: %s: %s", type(exc).__name__, exc)


# ----------------------------------------------------------------------------- flags


def define_flags(
    workdir_help: str, config_help: str | None = None, *, optional_config: bool = False
) -> tuple[flags.FlagHolder, flags.FlagHolder | None]:
    """Every command's `--workdir` and, given its help, `--config` (a config file or shipped
    name, its fields overridden by `--config.FIELD=VALUE`, parsed by `split_config_args`);
    `optional_config`: without `--config`, the base config. Returns their holders."""
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    if config_help is None:
        return workdir, None
    from mnist_jax import config as config_lib

    default = config_lib.__file__ if optional_config else None
    return workdir, config_flags.DEFINE_config_file("config", default, config_help)


def parse_flags(argv: list[str], overrides: dict[str, Any] | None = None) -> list[str]:
    """absl's parse, with the config built by `split_config_args` (complete, overridden,
    validated; its overrides put in `overrides`) and every failure as one line."""
    install_startup_handlers()
    try:
        config = None
        if "config" in flags.FLAGS and not any(a in _HELP for a in argv):
            argv, config = split_config_args(argv, overrides)
        sys.argv = argv  # config_flags reads sys.argv: it must not see the overrides again.
        remaining = flags.FLAGS(argv)
        if config is not None:
            flags.FLAGS["config"].value = config
        return remaining
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
    except flags.Error as e:
        print(f"error: {one_line(str(e).splitlines()[0])}", file=sys.stderr)
    sys.exit(1)


_HELP = ("--help", "-help", "--helpfull", "-h", "-?", "--helpshort")


def split_config_args(
    argv: list[str], overrides: dict[str, Any] | None = None
) -> tuple[list[str], Any]:
    """(argv without the `--config.FIELD=VALUE` overrides, the validated config); the typed
    overrides go into `overrides` when given. The file is named by `--config=NAME_OR_PATH` (a
    shipped name or a path; two different files are an error); of a repeated override the last
    wins; a scalar for a tuple field is a one-tuple; an unknown field is an error."""
    from mnist_jax import config as config_lib

    argv = _joined_config_flag(argv)
    specs = [a.split("=", 1)[1] for a in argv if a.startswith(("--config=", "-config="))]
    if len(set(specs)) > 1:  # Neither file silently wins.
        raise UserError(f"--config is given {len(specs)} times ({', '.join(specs)}); give one")
    spec = specs[0] if specs else None
    if spec is None:  # Overrides alone (plot, predict, eval) apply to the base config.
        if not any(_override_name(a) for a in argv):
            return argv, None
        config, config_flag = config_lib.get_config(), ""
    else:  # The flag names the resolved file: config_flags loads it again, from any cwd.
        path, _, arg = spec.partition(":")
        resolved = config_lib.resolve(path)
        config = config_lib.load_file(resolved, arg or None)
        config_flag = f"--config={resolved}" + (f":{arg}" if arg else "")
    rest, values = _split_overrides(argv, config, config_flag)
    typed = {n: _typed(n, config_lib.field_value(config, n), raw) for n, raw in values.items()}
    config_lib.apply_overrides(config, typed)
    if overrides is not None:
        overrides.clear()
        overrides.update(typed)
    config_lib.validate(config)
    config.lock()
    return rest, config


def _split_overrides(argv: list[str], config: Any, config_flag: str) -> tuple[list, dict]:
    """(the other arguments, {field: the text of its last --config.FIELD flag}); an unknown
    field is an error."""
    from mnist_jax import config as config_lib

    known = config_lib.field_names(config)
    rest, values = [], {}
    args = iter(argv)
    for a in args:
        name = _override_name(a)
        if a.startswith(("--config=", "-config=")):
            a = config_flag
        if a == "--" or name is None:
            rest += [a, *args] if a == "--" else [a]
            continue
        if name not in known:
            leaves = config_lib.flatten(config_lib.to_dict(config))
            raise UserError(f"unknown config field {name}{config_lib.did_you_mean(name, leaves)}")
        if a.startswith(("--noconfig.", "-noconfig.")):
            raw = "false"
        elif "=" in a:
            raw = a.split("=", 1)[1]
        elif isinstance(config_lib.field_value(config, name), bool):
            raw = "true"
        else:
            raw = next(args, "")
        values.pop(name, None)
        values[name] = raw  # Only the last value is parsed: the others are replaced.
    return rest, values


def _joined_config_flag(argv: list[str]) -> list[str]:
    """`--config X` as `--config=X`."""
    out, args = [], iter(argv)
    for a in args:
        out.append(f"--config={next(args, '')}" if a in ("--config", "-config") else a)
    return out


def _override_name(arg: str) -> str | None:
    for prefix in ("--config.", "-config.", "--noconfig.", "-noconfig."):
        if arg.startswith(prefix):
            return arg[len(prefix) :].split("=", 1)[0]
    return None


def _typed(name: str, old: Any, raw: str) -> Any:
    try:
        return parse_value(raw, old)
    except ValueError as e:
        raise UserError(f"--config.{name}={raw!r}: expected {e}") from None


_PARSERS = (  # By the type of the field's value (bool before int: a bool is an int).
    (bool, flags.BooleanParser(), "true or false"),
    (int, flags.IntegerParser(), "an integer"),
    (float, flags.FloatParser(), "a number"),
    (tuple, tuple_parser.TupleParser(), "a tuple such as '(512, 256)'"),
)


def parse_value(raw: str, like: Any) -> Any:
    """The one parser of a config value given as text (`--config.FIELD=` and `--sweep`):
    `raw` as a value of `like`'s type, with absl's and ml_collections' flag parsers (a scalar
    for a tuple is a one-tuple); a str is the text itself; a section a dict literal of its
    fields; anything else a Python literal.
    Otherwise a ValueError whose text is what was expected ("an integer")."""
    parser, what = next(((p, w) for k, p, w in _PARSERS if isinstance(like, k)), (None, None))
    if isinstance(like, ml_collections.ConfigDict):
        what = "a dict of field names to values, such as {'name': ...}"
    try:
        if parser is not None:
            return parser.parse(raw)
        if isinstance(like, str):
            return raw
        value = ast.literal_eval(raw)
        if not isinstance(like, ml_collections.ConfigDict):
            return value
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError
        return ml_collections.ConfigDict(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, flags.Error):
        raise ValueError(what or "a Python literal") from None
