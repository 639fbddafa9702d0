"""One exception type for everything a user can get wrong.

The CLI prints an ``EdgesrmError`` as a single ``error: ...`` line and exits non-zero;
anything else reaching the top is a bug in edgesrm.
"""


class EdgesrmError(Exception):
    """A problem with the user's input or environment, explained in one line.

    ``cli`` is the same sentence in the command line's words (``--force`` where the Python API
    says ``force=True``); the CLI prints it instead of the message when it is given.
    """

    def __init__(self, message: str, *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli


class EdgesrmWarning(UserWarning):
    """Something allowed but likely unintended (a context longer than the model was trained
    for...). The CLI prints it as one ``warning: ...`` line; Python shows each one once."""
