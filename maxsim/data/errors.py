"""The error raised for bad input files: it names the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

from maxsim.errors import MaxsimError


class DataError(MaxsimError, ValueError):
    """Bad input, found before any long work starts.

    The message reads ``FILE:LINE: what is wrong. Fix: what to do``.
    """

    def __init__(self, path: str | Path, line: int | None, problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        self.fix = fix
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        message = f"{where}: {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


def encoding_error(path: str | Path) -> DataError:
    """A DataError naming the first line of ``path`` that is not valid UTF-8."""
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return DataError(path, number, f"byte 0x{raw[err.start]:02x} at column {err.start + 1} is not "
                                 "valid UTF-8", "save the file as UTF-8 (in a spreadsheet: CSV UTF-8)")
    return DataError(path, None, "the file is not valid UTF-8", "save the file as UTF-8")
