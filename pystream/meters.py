"""Smart-meter operators: cumulative register reads -> interval usage, de-duplication of re-sent
readings, and gap detection. Keyed, vectorized per batch (NumPy plus native helpers for the
per-event watermark and the seen-pairs set), checkpointed.

    readings.key_by("meter_id").dedupe(horizon="6h")
    readings.key_by("meter_id").register_deltas("register_kwh", modulus=1e6, out="kwh")
    readings.key_by("meter_id").gaps(every="15m")

Register deltas and gaps need each meter's readings in event-time order, while readings arrive
out of order: rows wait in a buffer until the watermark passes them (W = max event time -
max_out_of_orderness - 1, per partition, as for windows), then go out sorted by (meter, time).
A reading that arrives behind the watermark can no longer be put in order: it goes to the
`late` side output. Results are therefore independent of batch size. Readings more than
`max_future` ahead of the watermark go to `invalid`.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._duration import parse_duration
from ._order import stable_argsort, stable_order
from ._keys import KeyEncoder
from .batch import Batch

_EMPTY_I64 = np.empty(0, dtype=np.int64)


class KeyedOperator:
    """Base of the keyed, multi-output operators here: key slots (native KeyIndex), per-event
    watermark and classification (native EventClock), per-slot state arrays that grow with the
    keys. Subclasses implement `_on_batch` and say which output ports they have."""

    ports: tuple[str, ...] = ("out",)

    def __init__(self, keys: tuple[str, ...], time):
        if not keys:
            raise ValueError(f"{type(self).__name__} works per key: key the stream first, e.g. .key_by('meter_id')")
        self.keys, self.time = tuple(keys), time
        self._encoder = KeyEncoder(self.keys)
        self._index = _core.KeyIndex()
        mf = -1 if time.max_future is None else time.max_future
        self._clock = _core.EventClock(time.max_out_of_orderness, mf)
        self._repr = None
        self._state: dict[str, np.ndarray] = {}
        self.history = None

    # -- per-key state --------------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        for name, arr in self._state.items():
            if len(arr) < n:
                grown = np.full(max(n, 2 * len(arr), 1024), self._defaults()[name], dtype=arr.dtype)
                grown[:len(arr)] = arr
                self._state[name] = grown

    def _defaults(self) -> dict:
        return {}

    # -- runtime protocol ----------------------------------------------------------------------
    def declare_partitions(self, partitions) -> None:
        for p in partitions:
            self._clock.set_partition_idle(int(p), False)

    def _classify(self, batch: Batch, partition: int):
        ts, rep = self.time.extract(batch)
        if self._repr is None:
            self._repr = rep
        elif rep != self._repr:
            raise TypeError(f"time column {self.time.column!r} changed representation from {self._repr} to {rep}")
        keys = self._encoder.encode(batch)
        try:
            status, before = self._clock.classify(ts, rep.factor, partition)
        except ValueError as e:
            raise ValueError(f"time column {self.time.column!r}: {e}") from None
        self._wm_before = before
        return ts * rep.factor, keys, status

    def process(self, batch: Batch, partition: int = 0) -> dict[str, Batch]:
        ts_ns, keys, status = self._classify(batch, partition)
        out = {}
        behind, future = status == 1, status == 2
        if future.any():
            out["invalid"] = batch.filter(future).with_columns(
                reason=np.full(int(future.sum()), "timestamp more than max_future ahead of the watermark", dtype=object))
        ok = status != 2
        out.update(self._on_batch(batch, ts_ns, keys, ok, behind))
        return {k: v for k, v in out.items() if v is not None and len(v)}

    def set_partition_idle(self, partition: int, idle: bool) -> dict[str, Batch]:
        self._clock.set_partition_idle(int(partition), bool(idle))
        return self._release()

    def raise_partition(self, partition: int, max_ts: int) -> dict[str, Batch]:
        """Events of `partition` up to `max_ts` (ns) were seen upstream (an operator above this
        one passes its watermark on as a partition of its own): its max rises to that."""
        self._clock.raise_partition(int(partition), int(max_ts))
        return self._release()

    def advance_watermark(self, watermark_ns: int) -> dict[str, Batch]:
        self._clock.advance(int(watermark_ns))
        return self._release()

    def finish(self) -> dict[str, Batch]:
        self._clock.advance(2**62)
        return self._release()

    def _release(self) -> dict[str, Batch]:
        return {}

    @property
    def watermark(self):
        return self._clock.watermark

    @property
    def max_event_time(self):
        seen = [m for m in _partitions(self._clock.snapshot()) if m is not None]
        return max(seen) if seen else None

    def stats(self) -> dict:
        return {"watermark": self._clock.watermark, "num_keys": len(self._index), "state_bytes":
                sum(a.nbytes for a in self._state.values()), "open_windows": 0}

    def snapshot(self) -> dict:
        return {"kind": type(self).__name__, "keys": self._encoder.snapshot(), "index": self._index.keys(),
                "clock": self._clock.snapshot(), "state": {k: v.copy() for k, v in self._state.items()},
                "repr": None if self._repr is None else (self._repr.kind, self._repr.unit)}

    def restore(self, state: dict) -> None:
        from .timing import TimeRepr

        if state["kind"] != type(self).__name__:
            raise ValueError(f"snapshot of a {state['kind']} cannot restore a {type(self).__name__}")
        self._encoder.restore(state["keys"])
        self._index.assign(np.asarray(state["index"], dtype=np.int64))
        self._clock.restore(state["clock"])
        self._state = {k: np.array(v) for k, v in state["state"].items()}
        self._repr = None if state["repr"] is None else TimeRepr(*state["repr"])

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        slots = self._index.intern(keys)
        self._grow(len(self._index))
        return slots

    def _times_out(self, ns: np.ndarray) -> np.ndarray:
        """ns -> the time column's own representation."""
        rep = self._repr
        if rep.kind == "int":
            return ns // rep.factor
        return (ns // rep.factor).view(f"datetime64[{rep.unit}]")


def _partitions(clock_state: dict):
    return [int(m) if h else None for m, h in zip(clock_state["part_max"], clock_state["part_has"])]


class Dedupe(KeyedOperator):
    """Drops re-sent readings: a row whose (key, event time) was seen before goes to the
    `duplicates` side output instead of `out`; arrival order decides which copy is kept (the
    first). Pairs are remembered while their time is within `horizon` of the watermark; a row
    arriving with time + horizon <= the watermark before it can no longer be checked and goes
    to `late` (so the answer never depends on when pairs were forgotten, nor on batch size)."""

    ports = ("out", "duplicates", "late", "invalid")
    #: Its output rows are its input rows as they came (the runtimes keep their partitions).
    PASSES_ROWS = True

    def __init__(self, keys, time, horizon):
        super().__init__(keys, time)
        self.horizon = parse_duration(horizon, "dedupe horizon")
        if self.horizon <= 0:
            raise ValueError(f"dedupe horizon must be > 0, got {horizon!r}")
        self._seen = _core.PairSet()

    def _on_batch(self, batch, ts_ns, keys, ok, behind):
        too_old = ok & (ts_ns <= self._wm_before - self.horizon) & (self._wm_before > np.iinfo(np.int64).min // 2)
        idx = np.flatnonzero(ok & ~too_old)
        dup = self._seen.insert(keys[idx], ts_ns[idx]).view(bool)
        keep = np.zeros(len(batch), dtype=bool)
        keep[idx[~dup]] = True
        wm = self._clock.watermark
        if wm is not None:
            self._seen.expire(wm - self.horizon + 1)  # pairs with time + horizon <= wm are never asked for again
        return {"out": batch.filter(keep), "duplicates": batch.take(idx[dup]), "late": batch.filter(too_old)}

    def snapshot(self) -> dict:
        return {**super().snapshot(), "seen": self._seen.snapshot()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self._seen.restore(state["seen"])

    def stats(self) -> dict:
        return {**super().stats(), "num_keys": len(self._seen)}


class _InOrder(KeyedOperator):
    """Buffers accepted rows until the watermark passes them, then hands them to `_ordered`
    sorted by (key slot, event time, arrival). Rows behind the watermark go to `late`."""

    def __init__(self, keys, time):
        super().__init__(keys, time)
        self._buf: Batch | None = None
        self._buf_ts = _EMPTY_I64
        self._buf_slot = np.empty(0, dtype=np.int32)

    def _on_batch(self, batch, ts_ns, keys, ok, behind):
        take = ok & ~behind
        slots = self._slots(keys)
        rows = np.flatnonzero(take)
        if len(rows):
            new = batch.take(rows)
            self._buf = new if self._buf is None or not len(self._buf) else Batch.concat([self._buf, new])
            self._buf_ts = np.concatenate([self._buf_ts, ts_ns[rows]])
            self._buf_slot = np.concatenate([self._buf_slot, slots[rows]])
        out = self._release()
        late = ok & behind
        if late.any():
            out["late"] = batch.filter(late)
        return out

    def _release(self) -> dict[str, Batch]:
        wm = self._clock.watermark
        if wm is None or self._buf is None or not len(self._buf):
            return {}
        due = self._buf_ts <= wm
        if not due.any():
            return {}
        idx = np.flatnonzero(due)
        order = idx[stable_order(self._buf_slot[idx], self._buf_ts[idx])]  # by key, time, arrival
        rows, ts, slots = self._buf.take(order), self._buf_ts[order], self._buf_slot[order]
        keep = np.flatnonzero(~due)
        self._buf, self._buf_ts, self._buf_slot = self._buf.take(keep), self._buf_ts[keep], self._buf_slot[keep]
        # Computed key by key; emitted in time order (keys in slot order within a time), so a
        # downstream watermark sees the released rows in order.
        out = {}
        for port, b in self._ordered(rows, ts, slots).items():
            out[port] = b.take(stable_argsort(b[self._time_column(port)]))
        return out

    def _time_column(self, port: str) -> str:
        return self.time.column

    @staticmethod
    def _previous(values: np.ndarray, slots: np.ndarray, last: np.ndarray):
        """For rows sorted by slot: each row's previous value in its key (the state's last value
        for the first row of each key), and a mask of rows that start a key's run."""
        first = np.ones(len(slots), dtype=bool)
        first[1:] = slots[1:] != slots[:-1]
        prev = np.empty_like(values)
        prev[1:] = values[:-1]
        prev[first] = last[slots[first]]
        return prev, first

    @staticmethod
    def _store_last(values: np.ndarray, slots: np.ndarray, last: np.ndarray) -> None:
        """The state's last value per key := the last row of each key's run."""
        end = np.ones(len(slots), dtype=bool)
        end[:-1] = slots[:-1] != slots[1:]
        last[slots[end]] = values[end]

    def snapshot(self) -> dict:
        buf = None if self._buf is None else self._buf.to_dict()
        return {**super().snapshot(), "buf": buf, "buf_ts": self._buf_ts.copy(), "buf_slot": self._buf_slot.copy()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self._buf = None if state["buf"] is None else Batch(state["buf"])
        self._buf_ts = np.asarray(state["buf_ts"], dtype=np.int64)
        self._buf_slot = np.asarray(state["buf_slot"], dtype=np.int32)

    def stats(self) -> dict:
        s = super().stats()
        s["open_windows"] = 0 if self._buf is None else len(self._buf)  # rows waiting for the watermark
        return s


class RegisterDeltas(_InOrder):
    """Cumulative register reads -> usage per interval between consecutive readings of a meter.

    Output `out`: the key columns, the reading's time column, `interval_start` (the previous
    reading's time) and `out` (value - previous value). A meter's first reading only sets its
    baseline. A register that goes backwards is a rollover when it wrapped at `modulus` (e.g.
    1e6 for a 6-digit register; the delta is then value + modulus - previous) and the wrapped
    delta is at most `max_delta` (default modulus / 10); otherwise it is a reset or a meter
    replacement: the row goes to `anomalies` with a reason, no usage is produced, and the new
    value becomes the baseline. A delta above `max_delta` (when given) is also an anomaly. Two
    readings of a meter at the same time: the second goes to `anomalies` ("duplicate")."""

    ports = ("out", "anomalies", "late", "invalid")

    def __init__(self, keys, time, column: str, out: str = "usage", modulus: float | None = None,
                 max_delta: float | None = None):
        super().__init__(keys, time)
        if modulus is not None and not modulus > 0:
            raise ValueError(f"modulus must be > 0 (the register's wrap-around value), got {modulus!r}")
        if max_delta is not None and not max_delta > 0:
            raise ValueError(f"max_delta must be > 0, got {max_delta!r}")
        reserved = set(keys) | {time.column, "interval_start"}
        if out in reserved:
            raise ValueError(f"output column {out!r} collides with a key or time column")
        self.column, self.out, self.modulus = column, out, modulus
        self.max_delta = max_delta if max_delta is not None else (modulus / 10 if modulus else None)
        self._state = {"last_value": np.empty(0, dtype=np.float64), "last_ts": np.empty(0, dtype=np.int64),
                       "has": np.empty(0, dtype=bool)}

    def _defaults(self):
        return {"last_value": np.nan, "last_ts": 0, "has": False}

    def _on_batch(self, batch, ts_ns, keys, ok, behind):
        if self.column not in batch:
            raise KeyError(f"register_deltas: unknown column {self.column!r}; the batch has {batch.columns}")
        if batch[self.column].dtype.kind not in "iuf":
            raise TypeError(f"register_deltas needs a numeric register column, {self.column!r} is {batch[self.column].dtype}")
        return super()._on_batch(batch, ts_ns, keys, ok, behind)

    def _ordered(self, rows: Batch, ts: np.ndarray, slots: np.ndarray) -> dict[str, Batch]:
        st = self._state
        value = np.asarray(rows[self.column], dtype=np.float64)
        prev_ts, first = self._previous(ts, slots, st["last_ts"])
        has = np.ones(len(slots), dtype=bool)
        has[first] = st["has"][slots[first]]
        duplicate = has & (ts == prev_ts)
        # The baseline of each row: the last non-duplicate reading before it in its key (or the
        # state's), found by a running max of non-duplicate row numbers within each key's run.
        n = len(value)
        pos = np.arange(n)
        run_start = np.maximum.accumulate(np.where(first, pos, 0))
        last_good = np.maximum.accumulate(np.where(duplicate, -1, pos))
        before = np.full(n, -1)
        before[1:] = last_good[:-1]
        from_state = before < run_start
        prev = np.where(from_state, st["last_value"][slots], value[np.maximum(before, 0)])
        delta = value - prev
        reason = np.full(len(value), None, dtype=object)
        if self.modulus is not None:
            wrapped = delta + self.modulus
            rollover = has & ~duplicate & (delta < 0) & (wrapped <= self.max_delta)
            delta = np.where(rollover, wrapped, delta)
        reason[has & ~duplicate & (delta < 0)] = "register went backwards (meter reset or replacement)"
        if self.max_delta is not None:
            reason[has & ~duplicate & (delta > self.max_delta)] = f"jump above max_delta={self.max_delta:g}"
        reason[duplicate] = "duplicate reading (same meter and time)"
        bad = reason != None  # noqa: E711 (element-wise)
        # Duplicates keep the earlier reading as the baseline; every other row becomes it.
        self._store_last(np.where(duplicate, prev, value), slots, st["last_value"])  # prev: that baseline
        self._store_last(ts, slots, st["last_ts"])
        st["has"][slots] = True
        good = has & ~bad
        cols = {k: rows[k][good] for k in self.keys}
        cols[self.time.column] = rows[self.time.column][good]
        cols["interval_start"] = self._times_out(prev_ts[good])
        cols[self.out] = delta[good]
        out = {"out": Batch(cols)}
        if bad.any():
            out["anomalies"] = rows.filter(bad).with_columns(reason=reason[bad])
        return out


class Gaps(_InOrder):
    """Missing readings: when consecutive readings of a meter are more than `every` +
    `tolerance` apart, one record with the key columns, `gap_start` / `gap_end` (the readings
    around the gap) and `missing` (whole intervals of `every` lost)."""

    ports = ("out", "late", "invalid")

    def __init__(self, keys, time, every, tolerance="0s"):
        super().__init__(keys, time)
        self.every = parse_duration(every, "gap interval")
        self.tolerance = parse_duration(tolerance, "gap tolerance")
        if self.every <= 0 or self.tolerance < 0:
            raise ValueError(f"gaps() needs every > 0 and tolerance >= 0, got every={every!r} tolerance={tolerance!r}")
        self._state = {"last_ts": np.empty(0, dtype=np.int64), "has": np.empty(0, dtype=bool)}

    def _defaults(self):
        return {"last_ts": 0, "has": False}

    def _time_column(self, port: str) -> str:
        return "gap_end"

    def _ordered(self, rows: Batch, ts: np.ndarray, slots: np.ndarray) -> dict[str, Batch]:
        st = self._state
        prev, first = self._previous(ts, slots, st["last_ts"])
        has = np.ones(len(slots), dtype=bool)
        has[first] = st["has"][slots[first]]
        gap = has & (ts - prev > self.every + self.tolerance)
        self._store_last(ts, slots, st["last_ts"])
        st["has"][slots] = True
        cols = {k: rows[k][gap] for k in self.keys}
        cols["gap_start"] = self._times_out(prev[gap])
        cols["gap_end"] = self._times_out(ts[gap])
        cols["missing"] = (ts[gap] - prev[gap] - 1) // self.every
        return {"out": Batch(cols)}


class TimeOfUse:
    """A time-of-use tariff: a price per kWh by local hour, with peak hours on weekdays only
    (weekends are off-peak) unless `weekend_peak`. Hours are [start, end) in local wall-clock
    time of each meter's zone (pystream.tz), so a DST day's peak is still 17:00-21:00 local.

    >>> import numpy as np
    >>> tou = TimeOfUse(peak_hours=(17, 21), peak=0.40, offpeak=0.15)
    >>> t = np.array(["2025-01-06T16:30", "2025-01-06T18:30"], dtype="datetime64[ns]").view("int64")
    >>> tou.price(t, "UTC").tolist()
    [0.15, 0.4]
    """

    def __init__(self, peak_hours=(17, 21), peak: float = 0.40, offpeak: float = 0.15, shoulder_hours=None,
                 shoulder: float | None = None, weekend_peak: bool = False):
        for name, hours in (("peak_hours", peak_hours), ("shoulder_hours", shoulder_hours)):
            if hours is not None and not (len(hours) == 2 and 0 <= hours[0] < hours[1] <= 24):
                raise ValueError(f"{name} must be (start, end) with 0 <= start < end <= 24, got {hours!r}")
        if (shoulder_hours is None) != (shoulder is None):
            raise ValueError("give both shoulder_hours and shoulder (its price), or neither")
        self.peak_hours, self.peak, self.offpeak = tuple(peak_hours), float(peak), float(offpeak)
        self.shoulder_hours = None if shoulder_hours is None else tuple(shoulder_hours)
        self.shoulder, self.weekend_peak = shoulder, weekend_peak

    def periods(self, ts_ns, tz) -> np.ndarray:
        """0 off-peak, 1 shoulder, 2 peak, per reading (ts in UTC ns; tz one name or per row)."""
        from .tz import hour_and_weekday

        hour, weekday = hour_and_weekday(ts_ns, tz)
        workday = np.ones(len(hour), dtype=bool) if self.weekend_peak else weekday < 5
        period = np.zeros(len(hour), dtype=np.int8)
        if self.shoulder_hours is not None:
            period[workday & (hour >= self.shoulder_hours[0]) & (hour < self.shoulder_hours[1])] = 1
        period[workday & (hour >= self.peak_hours[0]) & (hour < self.peak_hours[1])] = 2
        return period

    def price(self, ts_ns, tz) -> np.ndarray:
        prices = np.array([self.offpeak, self.offpeak if self.shoulder is None else self.shoulder, self.peak])
        return prices[self.periods(ts_ns, tz)]

    def __repr__(self):
        sh = f", shoulder_hours={self.shoulder_hours}, shoulder={self.shoulder}" if self.shoulder_hours else ""
        return f"TimeOfUse(peak_hours={self.peak_hours}, peak={self.peak}, offpeak={self.offpeak}{sh})"
