"""Progress that reads well wherever it goes: a live bar on a terminal, log lines in a file.

On a terminal :func:`progress` is a tqdm bar. When standard error is not a terminal (a log
file, a pipe, a CI job), carriage-return frames and cursor movements would fill the log with
hundreds of half-lines, so it becomes a :class:`LogProgress`: one logged line every
``interval`` seconds and one at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("maxsim.progress")

LOG_INTERVAL_S = 30.0


class LogProgress:
    """The part of tqdm's interface maxsim uses (update, set_postfix, close), as log lines."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0,
                 interval: float = LOG_INTERVAL_S, final_line: bool = True) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self.final_line = interval, final_line
        self.started = self.last = time.monotonic()
        self.start_n = initial
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._log(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.final_line and self.n > self.start_n:
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        elapsed = now - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        logger.info("%s: %d%s %s, %.0f s, %.2f %s/s%s", self.desc, self.n, of, self.unit, elapsed, rate,
                    self.unit, extra)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where tqdm draws its bars as widgets)."""
    return "ipykernel" in sys.modules


def progress(total: int | None, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0,
             leave: bool = True):
    """A tqdm bar on a terminal or in a notebook, a :class:`LogProgress` otherwise, or a silent one
    if not ``enabled``.

    ``leave=False`` (a bar inside another one) also leaves out the final log line when it is short.
    """
    from tqdm.auto import tqdm

    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty() or in_notebook():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True)
    return LogProgress(total, desc, unit, initial, final_line=leave)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-file bars ("Loading weights", "Writing model shards") for the block;
    they say nothing useful for one local folder and litter logs. Restores the setting after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
