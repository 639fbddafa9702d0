"""One exception type for everything a user can get wrong.

The CLI prints an ``EdgesrmError`` as a single ``error: ...`` line and exits non-zero;
anything else reaching the top is a bug in edgesrm.
"""


class EdgesrmError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class EdgesrmWarning(UserWarning):
    """Something allowed but likely unintended (a context longer than the model was trained
    for...). The CLI prints it as one ``warning: ...`` line; Python shows each one once."""
