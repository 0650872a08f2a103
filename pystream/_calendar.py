"""Calendar window bounds from the IANA time zone database (zoneinfo).

A local day D starts at the first instant whose local date is D or later (Java's
`LocalDate.atStartOfDay(zone)`): the local midnight when it exists, the end of the gap when
a transition skips midnight (e.g. America/Sao_Paulo, 2018-11-04 00:00 -> 01:00), the first
occurrence when midnight happens twice. A day that a zone skips entirely (Pacific/Apia,
2011-12-30) has no window. Weeks start on `week_start` (0 = Monday), months on the 1st,
years on January 1st, each at that day's start. Tables span 1900-01-01 .. 2116-02-19 (the
native engine's time range ends 2116-02-20) and are computed once per zone (~0.1 s).
"""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np

FIRST_DAY = dt.date(1900, 1, 1)
LAST_DAY = dt.date(2116, 2, 19)
UNITS = ("day", "week", "month", "year")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NS = 1_000_000_000


def zone(name: str):
    """The ZoneInfo for an IANA name, with a clear error for unknown names."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name:
        raise ValueError(f"time zone must be an IANA name such as 'Europe/Berlin', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin' or 'UTC'") from None


def _day_start(day: dt.date, tz) -> int:
    """UTC seconds of the first instant whose local date is `day` or later."""
    s = int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
    local = dt.datetime.fromtimestamp(s, tz)
    if local.date() == day and local.time() == dt.time(0):
        return s
    # Midnight falls in a gap: fold=0 resolved it past the gap's start; search back for the
    # transition (the first instant on this date or later).
    lo, hi = s - 86_400 * 2, s
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).date() >= day:
            hi = mid
        else:
            lo = mid
    return hi


@functools.lru_cache(maxsize=128)
def day_starts(tz_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ordinal of each local day, its start in UTC ns), skipped days removed."""
    tz = zone(tz_name)
    first, last = FIRST_DAY.toordinal(), LAST_DAY.toordinal()
    ords = np.arange(first, last + 1, dtype=np.int64)
    starts = np.fromiter((_day_start(dt.date.fromordinal(o), tz) for o in range(first, last + 1)), dtype=np.int64,
                         count=len(ords))
    # A skipped day starts where the next one does: keep the later day.
    keep = np.ones(len(starts), dtype=bool)
    keep[:-1] = starts[:-1] < starts[1:]
    ords, starts = ords[keep], starts[keep] * _NS
    ords.flags.writeable = starts.flags.writeable = False
    return ords, starts


@functools.lru_cache(maxsize=256)
def bounds(tz_name: str, unit: str, week_start: int = 0) -> np.ndarray:
    """Window bounds in UTC ns: window j is [bounds[j], bounds[j + 1])."""
    ords, starts = day_starts(tz_name)
    if unit == "day":
        return starts
    # Weekday/day-of-month of each ordinal, vectorised: ordinal 1 (0001-01-01) is a Monday.
    if unit == "week":
        sel = (ords - 1) % 7 == week_start
    else:
        days = (ords - dt.date(1970, 1, 1).toordinal()).astype("datetime64[D]")
        if unit == "month":
            sel = days == days.astype("datetime64[M]").astype("datetime64[D]")
        elif unit == "year":
            sel = days == days.astype("datetime64[Y]").astype("datetime64[D]")
        else:
            raise ValueError(f"calendar unit must be one of {UNITS}, got {unit!r}")
    out = starts[sel]
    out.flags.writeable = False
    return out
