"""The one exception type for expected failures.

An `HdapError` carries a single readable sentence that names what to fix. The CLI prints it
without a traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""


class HdapError(Exception):
    """An expected failure with a message meant for the user."""
