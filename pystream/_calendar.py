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
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def zone(name: str):
    """The ZoneInfo for an IANA name, with a clear error for unknown names."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name:
        raise ValueError(f"time zone must be an IANA name such as 'Europe/Berlin', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Berlin' or 'UTC'") from None


@functools.lru_cache(maxsize=128)
def transitions(tz_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(UTC seconds where the zone's offset changes, the offset in seconds from each on). The
    first entry stands for everything before the table. Found by probing the offset every 7
    days and bisecting each change to the second (offset changes less than a week apart would
    be missed; the IANA database has none since 1900)."""
    tz = zone(tz_name)
    lo = int(dt.datetime(FIRST_DAY.year, 1, 1, tzinfo=dt.timezone.utc).timestamp()) - 86_400
    hi = int(dt.datetime(LAST_DAY.year, LAST_DAY.month, LAST_DAY.day, tzinfo=dt.timezone.utc).timestamp()) + 2 * 86_400

    def offset_at(s: int) -> int:  # at a UTC instant: never ambiguous
        return int(dt.datetime.fromtimestamp(s, tz).utcoffset().total_seconds())

    probes = np.arange(lo, hi + 7 * 86_400, 7 * 86_400)
    offs = np.fromiter((offset_at(int(p)) for p in probes), dtype=np.int64, count=len(probes))
    at, values = [np.iinfo(np.int64).min // 2], [int(offs[0])]
    for i in np.flatnonzero(offs[1:] != offs[:-1]):
        a, b = int(probes[i]), int(probes[i + 1])  # the offset changes in (a, b]
        while b - a > 1:
            mid = (a + b) // 2
            if offset_at(mid) == offs[i]:
                a = mid
            else:
                b = mid
        at.append(b)
        values.append(offset_at(b))
    out = np.array(at, dtype=np.int64), np.array(values, dtype=np.int64)
    out[0].flags.writeable = out[1].flags.writeable = False
    return out


@functools.lru_cache(maxsize=128)
def day_starts(tz_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ordinal of each local day, its start in UTC ns), skipped days removed. Vectorized from
    the zone's transitions: the instants whose wall clock reads local midnight W are W - O_k
    for the offset intervals k that contain them; the earliest wins (a repeated midnight), and
    when there is none (midnight in a gap) the day starts at the transition ending the gap."""
    at, off = transitions(tz_name)
    first, last = FIRST_DAY.toordinal(), LAST_DAY.toordinal()
    ords = np.arange(first, last + 1, dtype=np.int64)
    wall = (ords - _EPOCH_ORDINAL) * 86_400  # local midnight as seconds on the local "epoch"
    nxt = np.append(at[1:], np.iinfo(np.int64).max // 2)  # where each interval ends
    local_start, local_end = at + off, nxt + off
    k = np.searchsorted(local_start, wall, side="right") - 1  # last interval starting (locally) by W
    prev = np.maximum(k - 1, 0)
    in_prev = (k > 0) & (wall < local_end[prev])  # a repeated midnight: the earlier one
    in_k = wall < local_end[k]
    starts = np.where(in_prev, wall - off[prev], np.where(in_k, wall - off[k], nxt[k]))
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
