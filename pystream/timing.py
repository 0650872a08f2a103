"""Time notions. Inside the engine time is int64 nanoseconds since the Unix epoch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._duration import NS_PER, format_duration, parse_duration

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


@dataclass(frozen=True)
class TimeRepr:
    """How the input time column was represented, so window bounds go back out the same way."""

    kind: str  # "int" or "datetime"
    unit: str  # ns, us, ms, s (datetime64 may also be m, h, D...)

    @property
    def factor(self) -> int:
        return _DT_FACTORS[self.unit]

    def output_divisor(self, *durations_ns: int) -> int:
        """Divisor from ns to this representation's unit when every duration is a multiple of
        it; otherwise 1 (datetime64 output then falls back to ns)."""
        f = self.factor
        if all(d % f == 0 for d in durations_ns):
            return f
        if self.kind == "int":
            bad = next(d for d in durations_ns if d % f)
            raise ValueError(
                f"window parameter {format_duration(bad)} is not a whole number of {self.unit}, the unit of the "
                f"int64 time column; window bounds could not be given in that unit")
        return 1

    def to_output(self, ns_values: np.ndarray, divisor: int) -> np.ndarray:
        """Engine output already divided by `divisor` -> the input representation."""
        if self.kind == "int":
            return ns_values
        unit = self.unit if divisor == self.factor else "ns"
        return ns_values.view(f"datetime64[{unit}]")


_DT_FACTORS = {
    "ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
    "m": NS_PER["m"], "h": NS_PER["h"], "D": NS_PER["d"], "W": NS_PER["w"],
}


def _positive(value, name):
    if value is None:
        return None
    ns = parse_duration(value, name)
    if ns <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return ns


class EventTime:
    """Event time taken from a column of the records.

    Args:
        column: name of the time column: datetime64 (any unit) or an integer column with `unit`.
        unit: unit of an integer time column: "ns", "us", "ms" or "s".
        max_out_of_orderness: bounded disorder d; the watermark is max_ts - d - 1 (Flink's rule).
        max_future: if set, an event more than this ahead of the current watermark (a meter
            whose clock says 2099) is sent to the `invalid` side output with a reason instead of
            dragging the watermark forward. The first event of a stream has no watermark to be
            judged against and is always accepted.
        idleness: a source partition that sends nothing for this long (wall clock) is marked
            idle and stops holding the watermark back; it rejoins when it sends again.
        close_idle_after: when no data at all arrives for this long (wall clock), event time
            is advanced by the wall clock since the last event, so open windows still fire on a
            quiet stream.
    """

    follows_clock = False

    def __init__(self, column: str, unit: str | None = None, max_out_of_orderness="0s", max_future=None,
                 idleness=None, close_idle_after=None):
        if not isinstance(column, str):
            raise TypeError(f"EventTime column must be a column name (str), got {type(column).__name__}")
        if unit is not None and unit not in _UNITS:
            raise ValueError(f"EventTime unit must be one of {sorted(_UNITS)}, got {unit!r}")
        self.column = column
        self.unit = unit
        self.max_out_of_orderness = parse_duration(max_out_of_orderness, "max_out_of_orderness")
        self.max_future = None if max_future is None else parse_duration(max_future, "max_future")
        self.idleness = _positive(idleness, "idleness")
        self.close_idle_after = _positive(close_idle_after, "close_idle_after")

    def __repr__(self):
        extra = "".join(f", {name}={format_duration(v)!r}" for name, v in
                        (("max_future", self.max_future), ("idleness", self.idleness),
                         ("close_idle_after", self.close_idle_after)) if v is not None)
        return (f"EventTime({self.column!r}, unit={self.unit!r}, "
                f"max_out_of_orderness={format_duration(self.max_out_of_orderness)!r}{extra})")

    def repr_for(self, arr: np.ndarray) -> TimeRepr:
        kind = arr.dtype.kind
        if kind == "M":
            unit = np.datetime_data(arr.dtype)[0]
            if unit not in _DT_FACTORS:
                raise ValueError(f"time column {self.column!r} has unsupported datetime64 unit {unit!r}")
            return TimeRepr("datetime", unit)
        if kind in "iu":
            if self.unit is None:
                raise ValueError(
                    f"time column {self.column!r} is {arr.dtype}; declare its unit, e.g. EventTime({self.column!r}, unit='ms')")
            return TimeRepr("int", self.unit)
        raise TypeError(
            f"time column {self.column!r} must be datetime64 or integer with a declared unit, got dtype {arr.dtype}")

    def extract(self, batch) -> tuple[np.ndarray, TimeRepr]:
        """The time column as int64 in its own unit (no copy for int64 and datetime64 columns),
        and its representation; the engine scales by `rep.factor` to ns as it reads. Raises
        (naming the rule and the values) on a missing column, a wrong dtype or NaT; the engine
        rejects values outside the supported range before touching any state."""
        if self.column not in batch:
            raise KeyError(f"unknown time column {self.column!r}; the batch has {batch.columns}")
        arr = batch[self.column]
        rep = self.repr_for(arr)
        if rep.kind == "datetime":
            nat = np.isnat(arr)
            if nat.any():
                row = int(np.flatnonzero(nat)[0])
                raise ValueError(f"time column {self.column!r} has a missing timestamp (NaT) at row {row}; "
                                 f"every event needs an event time")
            return arr.view(np.int64), rep
        if arr.dtype == np.uint64 and len(arr) and int(arr.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"time column {self.column!r} holds {int(arr.max())}, beyond the int64 range")
        return np.ascontiguousarray(arr, dtype=np.int64), rep


class ProcessingTime:
    """Processing time: each event is stamped with the runtime clock when it reaches the
    window operator, and windows fire as the wall clock passes their end (even with no new
    data). Not replay-deterministic by nature. Window bounds come out as datetime64[ns]."""

    column = None
    unit = None
    max_out_of_orderness = 0
    max_future = None
    idleness = None
    close_idle_after = None
    follows_clock = True

    def __repr__(self):
        return "ProcessingTime()"

    def extract(self, batch):
        from . import clock

        return np.full(len(batch), clock.current().now_ns(), dtype=np.int64), TimeRepr("datetime", "ns")


class IngestionTime(EventTime):
    """Ingestion time: when the record entered pystream.

    With `column`, a time the source itself assigned on append (a Kafka log-append timestamp,
    a Redis stream id time), so replays see the same times and results are deterministic.
    Without it, the local clock when the batch is read: not replay-deterministic. Either way
    the times never go backwards, so nothing is late; windows fire as ingestion time moves
    (and by the wall clock when `close_idle_after` is set)."""

    follows_clock = False

    def __init__(self, column: str | None = None, unit: str | None = None, close_idle_after=None):
        self._from_clock = column is None
        super().__init__(column or "_ingestion_time", unit=unit, close_idle_after=close_idle_after)

    def __repr__(self):
        return "IngestionTime()" if self._from_clock else f"IngestionTime({self.column!r}, unit={self.unit!r})"

    def extract(self, batch):
        if self._from_clock:
            from . import clock

            return np.full(len(batch), clock.current().now_ns(), dtype=np.int64), TimeRepr("datetime", "ns")
        return super().extract(batch)
