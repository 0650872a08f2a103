"""A plain-Python, one-event-at-a-time model of DESIGN.md's window semantics.

Deliberately naive: every window is a list of the events in it, every event is judged on its
own, every aggregate is recomputed from the list. No slices, no rings, no batching. The
native engine must agree with it (tests/test_engine_model.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

NAN = float("nan")


def windows_of(t, size, slide, offset):
    """Every window index j with start_j <= t < start_j + size, start_j = j*slide + offset."""
    j = (t - offset) // slide  # Python's // floors, as the definition wants
    out = []
    while j * slide + offset + size > t:
        out.append(j)
        j -= 1
    return sorted(out)


def aggregate(kind, events, ddof=1):
    """events: list of (t, arrival, value)."""
    vals = [v for _, _, v in events]
    if kind == "count":
        return len(events)
    if kind == "sum":
        return NAN if any(math.isnan(v) for v in vals) else math.fsum(vals)
    if kind == "min":
        return NAN if any(math.isnan(v) for v in vals) else min(vals)
    if kind == "max":
        return NAN if any(math.isnan(v) for v in vals) else max(vals)
    if kind == "mean":
        return aggregate("sum", events) / len(vals)
    if kind == "first":
        return min(events, key=lambda e: (e[0], e[1]))[2]
    if kind == "last":
        return max(events, key=lambda e: (e[0], e[1]))[2]
    if kind in ("var", "std"):
        n = len(vals)
        if n <= ddof or any(math.isnan(v) for v in vals):
            return NAN
        mu = math.fsum(vals) / n
        var = math.fsum((v - mu) ** 2 for v in vals) / (n - ddof)
        return var if kind == "var" else math.sqrt(var)
    raise ValueError(kind)


@dataclass
class Row:
    key: object
    j: int
    start: int
    end: int
    values: tuple
    update: bool
    early: bool = False


@dataclass
class RefWindows:
    size: int
    slide: int
    offset: int
    ooo: int
    lateness: int
    max_future: int | None
    aggs: list  # [(kind, ddof)]
    keyed: bool = True
    early_every: int | None = None

    wm: int | None = None
    arrival: int = 0
    key_order: dict = field(default_factory=dict)
    contents: dict = field(default_factory=dict)  # (key, j) -> [(t, arrival, value_tuple)]
    rows: list = field(default_factory=list)
    late: list = field(default_factory=list)
    invalid: list = field(default_factory=list)
    part_max: dict = field(default_factory=dict)  # partition -> max event time (None: none yet)
    idle: set = field(default_factory=set)
    part: object = 0  # the partition of the events being fed

    # -- window geometry (subclasses change it) ------------------------------------------------
    def windows(self, key, t):
        """Ids of the windows of an event of `key` at t."""
        return windows_of(t, self.size, self.slide, self.offset)

    def bounds(self, j):
        """(start, end) of window id j."""
        start = j * self.slide + self.offset
        return start, start + self.size

    def end(self, j):
        return self.bounds(j)[1]

    def _row(self, key, j, update):
        evs = self.contents[(key, j)]
        vals = tuple(aggregate(kind, [(t, a, v[i]) for t, a, v in evs], ddof) for i, (kind, ddof) in enumerate(self.aggs))
        start, end = self.bounds(j)
        return Row(key, j, start, end, vals, update)

    def _fire_in_order(self, windows, early=False):
        """Rows of the given windows: by window end, then keys by first appearance."""
        for e in sorted({self.end(j) for j in windows}):
            cells = sorted(((k, jj) for (k, jj) in self.contents if jj in windows and self.end(jj) == e),
                           key=lambda c: self.key_order[c[0]])
            for k, j in cells:
                row = self._row(k, j, False)
                row.early = early
                self.rows.append(row)

    def event(self, index, key, t, values):
        """One event. `values` holds one value per aggregation (ignored for count)."""
        key = key if self.keyed else None
        self.key_order.setdefault(key, len(self.key_order))
        arrival = self.arrival
        self.arrival += 1
        W = self.wm
        if W is not None and self.max_future is not None and t > W + self.max_future:
            self.invalid.append(index)
            return
        wins = self.windows(key, t)
        accepted = [j for j in wins if W is None or self.end(j) - 1 + self.lateness > W]
        if not accepted:
            self.late.append(index)
        for j in accepted:
            self.contents.setdefault((key, j), []).append((t, arrival, tuple(values)))
            end = self.end(j)
            if W is not None and end - 1 <= W:
                # Late but within allowed lateness: the window fires again at once.
                self.rows.append(self._row(key, j, True))
        self.seen(t)

    def seen(self, t):
        """An accepted event time of the current partition: the watermark moves with it."""
        self.part_max.setdefault(self.part, None)
        if self.part_max[self.part] is None or t > self.part_max[self.part]:
            self.part_max[self.part] = t
        self._recompute()

    def batch_from(self, partition):
        """The following events come from `partition`, which is active again if it was idle."""
        self.part = partition
        self.part_max.setdefault(partition, None)
        self.idle.discard(partition)

    def set_idle(self, partition, idle):
        self.part_max.setdefault(partition, None)
        (self.idle.add if idle else self.idle.discard)(partition)
        self._recompute()

    def _recompute(self):
        """W = min over active partitions of (max - ooo - 1); never backwards; no active -> unchanged."""
        active = [m for p, m in self.part_max.items() if p not in self.idle]
        if not active or any(m is None for m in active):
            return
        cand = min(active) - self.ooo - 1
        if self.wm is None or cand > self.wm:
            self.advance(cand)

    def advance(self, w):
        """The watermark moves to w: windows whose end - 1 it passes fire now (on time), in
        order of window end, keys in order of first appearance; expired windows are dropped.
        A window that passes with no data never fires on time; data that reaches it later
        (within allowed lateness) produces update rows only."""
        prev = self.wm
        self.wm = w
        due = {j for (_, j) in self.contents if (prev is None or self.end(j) - 1 > prev) and self.end(j) - 1 <= w}
        self._fire_in_order(due)
        # Early firings: when the watermark passes an early instant (a multiple of early_every),
        # every window with data that has not fired yet emits its current value, final=False.
        # (The first watermark passes nothing: there was no earlier one to pass from.)
        if self.early_every and prev is not None and (w // self.early_every) > (prev // self.early_every):
            self._fire_in_order({j for (_, j) in self.contents if self.end(j) - 1 > w}, early=True)
        for (k, j) in list(self.contents):
            if self.end(j) - 1 + self.lateness <= w:
                del self.contents[(k, j)]

    def flush(self):
        self.advance(2**70)


# -- calendar windows ------------------------------------------------------------------------


def _local_date(t_ns, tz):
    return dt.datetime.fromtimestamp(t_ns // 1_000_000_000, tz).date()


@functools.lru_cache(maxsize=None)
def first_instant_on_or_after(day, tz_name, lo_s, hi_s):
    """Bisection for the first second whose local date is >= day, given date(lo) < day <= date(hi).
    Independent of pystream._calendar, which constructs local midnights instead."""
    tz = ZoneInfo(tz_name)
    lo, hi = lo_s, hi_s
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).date() >= day:
            hi = mid
        else:
            lo = mid
    return hi * 1_000_000_000


def calendar_window(t_ns, tz_name, unit, week_start=0):
    """(start, end) in ns of the calendar window holding t in zone tz_name."""
    tz = ZoneInfo(tz_name)
    d = _local_date(t_ns, tz)
    if unit == "day":
        first, nxt, span = d, d + dt.timedelta(days=1), 2
    elif unit == "week":
        first = d - dt.timedelta(days=(d.weekday() - week_start) % 7)
        nxt, span = first + dt.timedelta(days=7), 9
    elif unit == "month":
        first = d.replace(day=1)
        nxt, span = (first + dt.timedelta(days=32)).replace(day=1), 33
    else:
        first = d.replace(month=1, day=1)
        nxt, span = first.replace(year=first.year + 1), 368
    t = t_ns // 1_000_000_000
    # Bracket each start between a second well before it and one on or after it.
    start = first_instant_on_or_after(first, tz_name, t - span * 86_400, t)
    end = first_instant_on_or_after(nxt, tz_name, t, t + span * 86_400)
    return start, end


@dataclass
class RefCalendar(RefWindows):
    """Calendar windows: each key lives in the zone of its first event (`zone_of_row`)."""

    unit: str = "day"
    week_start: int = 0
    key_zone: dict = field(default_factory=dict)
    invalid_zone: list = field(default_factory=list)

    def calendar_event(self, index, key, t, values, zone):
        k = key if self.keyed else None
        z = self.key_zone.setdefault(k, zone)
        if z != zone:
            # Invalid for its zone, but its time (where not too far ahead) moves the watermark.
            self.key_order.setdefault(k, len(self.key_order))
            self.arrival += 1
            self.invalid.append(index)
            W = self.wm
            if W is not None and self.max_future is not None and t > W + self.max_future:
                return
            self.invalid_zone.append(index)
            self.seen(t)
            return
        self.event(index, key, t, values)

    def windows(self, key, t):
        return [calendar_window(t, self.key_zone[key if self.keyed else None], self.unit, self.week_start)]

    def bounds(self, j):
        return j
