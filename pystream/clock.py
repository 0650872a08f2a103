"""Clocks: wall time for processing time, idleness and quiet streams.

The runtime asks `current()` for the time, so tests can swap in `ps.testing.ManualClock` and
step idle timeouts and processing-time windows deterministically, without sleeping.
"""

from __future__ import annotations

import time as _time


class SystemClock:
    """The local wall clock (ns since the epoch)."""

    def now_ns(self) -> int:
        return _time.time_ns()


_current = SystemClock()


def current():
    return _current


def use(clock):
    """Installs `clock` for the duration of a run; returns the previous one."""
    global _current
    previous, _current = _current, clock
    return previous
