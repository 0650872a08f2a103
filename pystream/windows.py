"""Window assigners: immutable, validated configuration objects.

Windows are half-open [start, end) and aligned to the epoch plus `offset`. A window is
identified by an integer (its index from the aligned origin), never by an object; the
native core does the arithmetic (slices of gcd(size, slide)).
"""

from __future__ import annotations

from ._duration import format_duration, parse_duration


class Window:
    """Base class of window assigners."""

    size: int
    slide: int
    offset: int
    #: Every key's windows share their bounds (so "the current window" is one window for all
    #: keys); False where bounds are per key (sessions, counts, global windows, zones per key).
    aligned = True

    def _params(self):
        return (type(self).__name__, self.size, self.slide, self.offset)

    def __eq__(self, other):
        return isinstance(other, Window) and self._params() == other._params()

    def __hash__(self):
        return hash(self._params())

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"{type(self).__name__} is immutable")
        object.__setattr__(self, name, value)


class Tumbling(Window):
    """Fixed-size, non-overlapping windows: [k*size + offset, (k+1)*size + offset).

    >>> Tumbling("15m")
    Tumbling('15m')
    """

    def __init__(self, size, offset="0s"):
        self.size = parse_duration(size, "window size")
        if self.size <= 0:
            raise ValueError(f"window size must be > 0, got {size!r}")
        self.slide = self.size
        self.offset = parse_duration(offset, "window offset", allow_negative=True)
        self._frozen = True

    def __repr__(self):
        off = f", offset={format_duration(self.offset)!r}" if self.offset else ""
        return f"Tumbling({format_duration(self.size)!r}{off})"


class Sliding(Window):
    """Windows of `size` starting every `slide` (hopping windows); each instant belongs to
    about size/slide windows, including windows that begin before the first event.

    >>> Sliding("1h", "15m")
    Sliding('1h', '15m')
    """

    def __init__(self, size, slide, offset="0s"):
        self.size = parse_duration(size, "window size")
        self.slide = parse_duration(slide, "window slide")
        if self.size <= 0:
            raise ValueError(f"window size must be > 0, got {size!r}")
        if self.slide <= 0 or self.slide > self.size:
            raise ValueError(
                f"slide must be > 0 and <= size, got slide={format_duration(self.slide)} size={format_duration(self.size)}"
                + ("; a slide larger than the size would leave gaps between windows" if self.slide > self.size else ""))
        self.offset = parse_duration(offset, "window offset", allow_negative=True)
        self._frozen = True

    def __repr__(self):
        off = f", offset={format_duration(self.offset)!r}" if self.offset else ""
        return f"Sliding({format_duration(self.size)!r}, {format_duration(self.slide)!r}{off})"


class Session(Window):
    """Session windows per key: an event opens [t, t + gap); sessions that touch merge (two
    events exactly `gap` apart share a session, gap + 1 apart do not); an out-of-order event
    can bridge two sessions. window_start is the first event time, window_end the last event
    time + gap.

    >>> Session("30m")
    Session('30m')
    """

    sessions = True
    aligned = False

    def __init__(self, gap):
        self.size = self.slide = parse_duration(gap, "session gap")
        if self.size <= 0:
            raise ValueError(f"session gap must be > 0, got {gap!r}")
        self.offset = 0
        self._frozen = True

    def __repr__(self):
        return f"Session({format_duration(self.size)!r})"


class CountWindow(Window):
    """Windows by arrival order per key, independent of time. Output: window_start and
    window_end are the first and last event time in the window (both inclusive), `events`
    its number of events. A trailing group smaller than the trigger never fires."""

    counted = True
    aligned = False

    def _params(self):
        return (type(self).__name__, self.size, self.slide)

    @staticmethod
    def _count(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int (a number of events), got {value!r}")
        return value


class CountTumbling(CountWindow):
    """Fires at a key's n-th, 2n-th, ... event with the n events since the last firing.

    >>> CountTumbling(96)
    CountTumbling(96)
    """

    def __init__(self, n: int):
        self.size = self.slide = self._count(n, "count window size")
        self.offset = 0
        self._frozen = True

    def __repr__(self):
        return f"CountTumbling({self.size})"


class CountSliding(CountWindow):
    """Fires at every `slide`-th event of a key over its last min(seen, n) events (Flink's
    countWindow(n, slide)); the first firings hold fewer than n events.

    >>> CountSliding(96, 4)
    CountSliding(96, 4)
    """

    def __init__(self, n: int, slide: int):
        self.size = self._count(n, "count window size")
        self.slide = self._count(slide, "count window slide")
        if self.slide > self.size:
            raise ValueError(f"count slide must be <= size, got slide={slide} size={n}")
        self.offset = 0
        self._frozen = True

    def __repr__(self):
        return f"CountSliding({self.size}, {self.slide})"


class Calendar(Window):
    """Local calendar days, weeks, months or years in an IANA time zone: windows run from one
    local start of day to the next, so a day is 23 h or 25 h across DST and a month has its
    real length. `tz_column` takes each key's zone from a column instead (meters in several
    zones, each with its own local days, in one operator; a key keeps the zone of its first
    row). Weeks start on `week_start` (default Monday). See pystream._calendar for the exact
    start-of-day rule (gaps at midnight, skipped days).

    >>> Calendar("day", tz="Europe/Berlin")
    Calendar('day', tz='Europe/Berlin')
    >>> Calendar("month", tz_column="tz")
    Calendar('month', tz_column='tz')
    """

    calendar = True
    _NOMINAL = {"day": 86_400, "week": 7 * 86_400, "month": 31 * 86_400, "year": 366 * 86_400}

    def __init__(self, unit: str = "day", tz: str | None = None, tz_column: str | None = None, week_start="monday"):
        from . import _calendar

        if unit not in _calendar.UNITS:
            raise ValueError(f"calendar unit must be one of {_calendar.UNITS}, got {unit!r}")
        if tz is not None and tz_column is not None:
            raise ValueError("give either tz= (one zone) or tz_column= (a zone per key), not both")
        if tz_column is not None and (not isinstance(tz_column, str) or not tz_column):
            raise ValueError(f"tz_column must be a column name, got {tz_column!r}")
        if isinstance(week_start, str) and week_start.lower() in _calendar.WEEKDAYS:
            week_start = _calendar.WEEKDAYS.index(week_start.lower())
        if isinstance(week_start, bool) or not isinstance(week_start, int) or not 0 <= week_start <= 6:
            raise ValueError(f"week_start must be a weekday name or 0 (Monday) .. 6 (Sunday), got {week_start!r}")
        self.unit = unit
        self.tz = None if tz_column is not None else (tz or "UTC")
        if self.tz is not None:
            _calendar.zone(self.tz)  # unknown names fail here, at build time
        self.tz_column = tz_column
        self.week_start = week_start
        self.size = self.slide = self._NOMINAL[unit] * 1_000_000_000  # nominal, for display only
        self.offset = 0
        self._frozen = True

    @property
    def aligned(self):
        return self.tz_column is None

    def _params(self):
        return ("Calendar", self.unit, self.tz, self.tz_column, self.week_start)

    def bounds(self, tz: str):
        """Window bounds (UTC ns) of zone `tz`: window j is [b[j], b[j + 1])."""
        from . import _calendar

        return _calendar.bounds(tz, self.unit, self.week_start)

    def __repr__(self):
        where = f"tz_column={self.tz_column!r}" if self.tz_column else f"tz={self.tz!r}"
        ws = f", week_start={self.week_start}" if self.week_start else ""
        return f"Calendar({self.unit!r}, {where}{ws})"


class Global(Window):
    """One window per key that never ends, fired by a trigger (ps.triggers.Count(n),
    EventTimeInterval(d), ProcessingTimeInterval(d)). mode="accumulating" (default, as Flink)
    emits the key's whole window so far at each firing; mode="purging" clears it after each
    firing. Output: window_start / window_end are the first and last event time of the
    window's contents (by arrival), `events` their number. Nothing is late for a global
    window; a count trigger's trailing group never fires, time triggers fire once more at end
    of input.

    >>> from pystream import triggers
    >>> Global(triggers.Count(4), mode="purging")
    Global(Count(4), mode='purging')
    """

    globally = True
    aligned = False

    def __init__(self, trigger, mode: str = "accumulating"):
        from .triggers import Trigger

        if not isinstance(trigger, Trigger):
            raise TypeError(f"Global(trigger=...) expects a ps.triggers trigger such as Count(96), got {trigger!r}")
        if mode not in ("accumulating", "purging"):
            raise ValueError(f"mode must be 'accumulating' or 'purging', got {mode!r}")
        self.trigger = trigger
        self.mode = mode
        self.size = self.slide = self.offset = 0
        self._frozen = True

    def _params(self):
        return ("Global", self.trigger._params(), self.mode)

    def __repr__(self):
        return f"Global({self.trigger!r}, mode={self.mode!r})"


__all__ = ["Window", "Tumbling", "Sliding", "Session", "CountWindow", "CountTumbling", "CountSliding", "Calendar", "Global"]
