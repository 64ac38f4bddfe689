"""The errors a user can fix: one base, :class:`MaxsimError`, under every one of them.

Each message says what is wrong and how to fix it. The command line turns exactly these (and
the operating system's own, such as a full disk) into one ``error: ...`` line; anything else is
a bug and keeps its traceback. Each class also derives from the built-in exception it refines
(``ValueError``, ``FileExistsError``, ...), so code that catches those keeps working.
"""

from __future__ import annotations


class MaxsimError(Exception):
    """Something the user can fix; the message names it and says how."""


class SettingsError(MaxsimError, ValueError):
    """A setting or argument that cannot be honoured (a bad value, two that contradict)."""


class OutputExistsError(MaxsimError, FileExistsError):
    """An output that would replace something it must not (a file, a folder we did not write)."""


class LockedError(MaxsimError, RuntimeError):
    """Another process holds the lock of what we are about to write."""


class UnknownIdError(MaxsimError, KeyError):
    """Ids asked for that are not there (documents to delete, say)."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0]) if self.args else ""


def validation_message(err) -> str:
    """One line from a pydantic ``ValidationError``: ``field: problem; field: problem``."""
    problems = []
    for e in err.errors():
        where = ".".join(map(str, e["loc"]))
        message = str(e["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
