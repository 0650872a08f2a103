"""Local wall-clock time from UTC event times, vectorized: IANA zones (zoneinfo) turned into
transition tables once per zone, then one searchsorted per batch.

>>> import numpy as np
>>> t = np.array([np.datetime64("2024-03-31T00:30", "ns"), np.datetime64("2024-03-31T01:30", "ns")])
>>> local_time(t.view("int64"), "Europe/Berlin").view("datetime64[ns]")
array(['2024-03-31T01:30:00.000000000', '2024-03-31T03:30:00.000000000'],
      dtype='datetime64[ns]')
"""

from __future__ import annotations

import numpy as np

from . import _calendar

_NS = 1_000_000_000


def transitions(tz_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(UTC ns where the zone's offset changes, the offset in ns from each on); the first entry
    stands for everything before the table (1900)."""
    at, off = _calendar.transitions(tz_name)
    return at * _NS, off * _NS


def local_time(ts_ns, tz) -> np.ndarray:
    """Local wall-clock time (int64 ns on the local "epoch") of UTC instants; `tz` is one zone
    name or an array of names aligned with `ts_ns`."""
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    if isinstance(tz, str):
        at, off = transitions(tz)
        return ts_ns + off[np.searchsorted(at, ts_ns, side="right") - 1]
    tz = np.asarray(tz)
    out = np.empty_like(ts_ns)
    names, which = np.unique(tz, return_inverse=True)
    for k, name in enumerate(names):
        sel = which == k
        out[sel] = local_time(ts_ns[sel], str(name))
    return out


def hour_and_weekday(ts_ns, tz) -> tuple[np.ndarray, np.ndarray]:
    """Local hour (0..23) and weekday (0 = Monday) of UTC instants."""
    local = local_time(ts_ns, tz)
    days = np.floor_divide(local, 86_400 * _NS)
    return (local - days * 86_400 * _NS) // (3_600 * _NS), (days + 3) % 7  # 1970-01-01 was a Thursday
