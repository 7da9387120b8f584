"""One exception type for every user-facing error: the CLI prints its message on one line and
exits with code 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user (file, recipe key, option). The message names the file/field."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class ProtocolError(RuntimeError):
    """Code asked for data the protocol forbids it (a loss policy measuring the evaluation split):
    a bug in that code, not bad input (README, "One protocol for every method")."""
