"""The exceptions the command line turns into one line and an exit status."""


class UserError(Exception):
    """A problem with the user's input (files, config, workdir) rather than a bug.

    `main` prints `error: <message>` and exits with status 1 instead of a traceback, so the
    message must name the thing at fault and say what to do about it.
    """


class Interrupted(Exception):
    """A SIGTERM/SIGINT, honoured after saving; the command line exits 128+signum."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Diverged(UserError):
    """A single run's loss turned non-finite: it stops, the last good checkpoint is kept."""
