"""Durations: "15m", "1h30m", "500ms", datetime.timedelta or numpy.timedelta64 -> int64 ns."""

from __future__ import annotations

import datetime as _dt
import re

import numpy as np

from . import _core

NS_PER = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "min": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 7 * 86_400_000_000_000,
}

_PART = re.compile(r"(\d+)\s*(ns|us|µs|ms|min|s|m|h|d|w)")


def parse_duration(value, name: str = "duration", *, allow_negative: bool = False) -> int:
    """Nanoseconds for a duration given as a string ("15m", "1h30m", "500ms"), a
    datetime.timedelta or a numpy.timedelta64. Plain numbers are refused: their unit would
    be a guess."""
    if isinstance(value, str):
        text = value.strip()
        sign = 1
        if text.startswith("-"):
            sign, text = -1, text[1:].strip()
        pos, total = 0, 0
        for m in _PART.finditer(text):
            if m.start() != pos and text[pos:m.start()].strip():
                break
            total += int(m.group(1)) * NS_PER[m.group(2)]
            pos = m.end()
        if pos == 0 or text[pos:].strip():
            raise ValueError(
                f"{name}: cannot parse duration {value!r}; use a number and a unit, e.g. '15m', '1h30m', "
                f"'500ms' (units: ns, us, ms, s, m, h, d, w)")
        ns = sign * total
    elif isinstance(value, _dt.timedelta):
        ns = (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    elif isinstance(value, np.timedelta64):
        if np.isnat(value):
            raise ValueError(f"{name}: duration must not be NaT")
        ns = int(value.astype("timedelta64[ns]").astype(np.int64))
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a duration string like '15m' or a datetime.timedelta, got {type(value).__name__} {value!r}")
    else:
        raise TypeError(
            f"{name}: got the bare number {value!r}; give a unit, e.g. '{value}ms' or '{value}s', or a datetime.timedelta")
    if ns < 0 and not allow_negative:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if abs(ns) > _core.MAX_DURATION:
        raise ValueError(f"{name} must be at most 2^60 ns (about 36 years), got {value!r}")
    return ns


def format_duration(ns: int) -> str:
    """The shortest exact spelling of a duration, for messages and reprs."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    for unit in ("w", "d", "h", "m", "s", "ms", "us", "ns"):
        if ns % NS_PER[unit] == 0:
            return f"{sign}{ns // NS_PER[unit]}{unit}"
    return f"{sign}{ns}ns"  # pragma: no cover - "ns" always divides
