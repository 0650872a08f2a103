"""Triggers of global windows (`ps.windows.Global(trigger=...)`): when a key's window fires.

>>> Count(96)
Count(96)
>>> EventTimeInterval("1h")
EventTimeInterval('1h')
"""

from __future__ import annotations

from ._duration import format_duration, parse_duration


class Trigger:
    code: int

    def _params(self):
        return (type(self).__name__, self.value)

    def __eq__(self, other):
        return isinstance(other, Trigger) and self._params() == other._params()

    def __hash__(self):
        return hash(self._params())


class Count(Trigger):
    """Fires a key's window at every n-th event of that key since its last firing."""

    code = 0

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"Count trigger needs a positive int (a number of events), got {n!r}")
        self.value = n

    def __repr__(self):
        return f"Count({self.value})"


class EventTimeInterval(Trigger):
    """Fires every key that received events since its last firing whenever the watermark
    passes a multiple of `interval` (aligned to the epoch), and at end of input."""

    code = 1

    def __init__(self, interval):
        self.value = parse_duration(interval, "trigger interval")
        if self.value <= 0:
            raise ValueError(f"trigger interval must be > 0, got {interval!r}")

    def __repr__(self):
        return f"EventTimeInterval({format_duration(self.value)!r})"


class ProcessingTimeInterval(EventTimeInterval):
    """Fires every key that received events since its last firing whenever the wall clock
    (the runtime's clock) passes a multiple of `interval`, and at end of input."""

    code = 2

    def __repr__(self):
        return f"ProcessingTimeInterval({format_duration(self.value)!r})"


__all__ = ["Trigger", "Count", "EventTimeInterval", "ProcessingTimeInterval"]
