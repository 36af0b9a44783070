"""The one exception type that the command line turns into a one-line message."""


class UserError(Exception):
    """A problem with the user's input (files, config, workdir) rather than a bug.

    `main` prints `error: <message>` and exits with status 1 instead of a traceback, so the
    message must name the thing at fault and say what to do about it.
    """
