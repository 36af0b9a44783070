"""The exceptions the command line turns into one line and an exit status."""

import difflib
import signal
from typing import Any

# The signals that stop a run: checkpointed at the current step, exit 128+signal. SIGHUP (the
# terminal closed) and SIGUSR1 (SLURM's and other schedulers' early warning) count as SIGTERM.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


class UserError(Exception):
    """A problem with the user's input (files, config, workdir) rather than a bug.

    `main` prints `error: <message>` and exits with status 1 instead of a traceback, so the
    message must name the thing at fault and say what to do about it.
    """


class Interrupted(Exception):
    """A stop signal (`STOP_SIGNALS`), honoured after saving; the command line exits 128+signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Diverged(UserError):
    """A single run's loss turned non-finite: it stops, the last good checkpoint is kept."""


class PeerLost(UserError):
    """Another process of a multi-process run died or stopped responding; the command line
    exits at once (JAX's runtime cannot shut down cleanly without it)."""


def did_you_mean(name: str, candidates: Any) -> str:
    """'; did you mean X?' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else ""
