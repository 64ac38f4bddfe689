"""Durations as people write them: parsed from ``90m``, ``1h30m`` or ``HH:MM:SS``, and written back."""

from __future__ import annotations

import math
import re

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value) -> float:
    """Seconds from a duration: a number of seconds, ``"90m"``, ``"1h30m"``, ``"2h"``, ``"45s"``,
    ``"1d"``, or ``"HH:MM:SS"`` / ``"DD:HH:MM:SS"`` (PyTorch Lightning's ``max_time``).

    >>> parse_duration("1h30m"), parse_duration("00:10:00"), parse_duration(90), parse_duration("2.5m")
    (5400.0, 600.0, 90.0, 150.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif re.fullmatch(r"(\d+:){1,3}\d+(\.\d+)?", text):
            seconds = 0.0
            for part, unit in zip(reversed(text.split(":")), (1.0, 60.0, 3600.0, 86400.0)):
                seconds += float(part) * unit
        elif re.fullmatch(r"(\d+(\.\d+)?[dhms])+", text):
            seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", text))
        else:
            raise ValueError(f"{value!r} is not a duration: give seconds (5400), units (90m, 1h30m, 2h, 45s) or "
                             "HH:MM:SS")
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"a time budget must be more than 0 seconds, got {value!r}")
    return seconds


def describe(seconds: float) -> str:
    """A duration as people write it.

    >>> describe(5400), describe(42.4)
    ('1h30m', '42s')
    """
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"
