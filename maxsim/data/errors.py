"""The error raised for bad input files: it names the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
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
