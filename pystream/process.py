"""Keyed application state and timers: `stream.key_by(k).process(fn, state=..., on_timer=...)`.

Vectorized, never per event: each call of `fn` gets a whole batch and a context whose
`state` holds one array per state variable, aligned with the batch's distinct keys
(`ctx.keys`; `ctx.row[i]` is the key index of row i). `fn` reads and writes those arrays
with NumPy and may set one event-time and one processing-time timer per key; a timer that
comes due (the watermark, or the wall clock, reaches its time) calls `on_timer(timers, ctx)`
with the keys whose timers fired. State of keys not seen for `ttl` of event time is dropped.

Times in the context (`ctx.ts`, `ctx.watermark`, `ctx.now`, timer times) are int64 ns since
the epoch; `ps.parse_duration("1h")` gives durations in ns.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import _core
from ._keys import KeyEncoder
from .batch import Batch

_NONE = np.iinfo(np.int64).max  # "no timer"


class ProcessContext:
    """What `fn` and `on_timer` see for one call."""

    def __init__(self, keys: Batch, row, state: dict[str, np.ndarray], ts, watermark, now):
        #: the distinct keys of this call, as key columns
        self.keys = keys
        #: for `fn`: row of the batch -> index into `keys` (None in `on_timer`)
        self.row = row
        #: state variable -> array aligned with `keys` (modify in place or assign a new array)
        self.state = state
        #: event times of the batch's rows in ns (None in `on_timer`)
        self.ts = ts
        #: the operator's watermark in ns (None before the first one)
        self.watermark = watermark
        #: the runtime clock in ns
        self.now = now
        #: True when timers fire because the input ended (the watermark jumped to the end of time)
        self.end_of_input = False
        self._event = np.full(len(keys), -1, dtype=np.int64)  # -1: unchanged
        self._proc = np.full(len(keys), -1, dtype=np.int64)

    def set_event_timer(self, times, where=None) -> None:
        """Sets (replaces) the event-time timer of the keys (all, or those where `where` is
        True) to `times` (ns; an array aligned with `keys`, or one value). It fires when the
        watermark reaches that time."""
        self._set(self._event, times, where)

    def set_processing_timer(self, times, where=None) -> None:
        """Sets the processing-time timer (wall clock, ns) of the keys."""
        self._set(self._proc, times, where)

    def clear_timers(self, where=None) -> None:
        """Deletes both timers of the keys (all, or where `where` is True)."""
        self._set(self._event, _NONE, where)
        self._set(self._proc, _NONE, where)

    def _set(self, target, times, where):
        values = np.broadcast_to(np.asarray(times, dtype=np.int64), target.shape)
        if where is None:
            target[:] = values
        else:
            where = np.asarray(where, dtype=bool)
            target[where] = values[where]


class KeyedProcessOperator:
    """The runtime side of `process()`: key slots, state arrays, timers, watermark."""

    def __init__(self, fn: Callable, keys: tuple[str, ...], time, state: dict, on_timer: Callable | None = None,
                 ttl: int | None = None):
        if not callable(fn):
            raise TypeError(f"process() needs a function fn(batch, ctx), got {type(fn).__name__}")
        if on_timer is not None and not callable(on_timer):
            raise TypeError(f"on_timer must be a function on_timer(timers, ctx), got {type(on_timer).__name__}")
        self.fn, self.on_timer, self.keys, self.time, self.ttl = fn, on_timer, tuple(keys), time, ttl
        self.defaults = {}
        for name, default in (state or {}).items():
            arr = np.asarray(default)
            if arr.dtype.kind not in "biufmM":
                raise TypeError(f"state {name!r}: the default must be a number or a numeric array (value state, or "
                                f"array state of a fixed shape per key), got {default!r}")
            self.defaults[name] = arr
        self._encoder = KeyEncoder(self.keys)
        self._index = _core.KeyIndex()
        self._state = {name: np.empty((0, *d.shape), dtype=d.dtype) for name, d in self.defaults.items()}
        self._event = np.empty(0, dtype=np.int64)
        self._proc = np.empty(0, dtype=np.int64)
        self._last = np.empty(0, dtype=np.int64)  # last event time per key, for the TTL
        self._parts: dict[int, list] = {}  # partition -> [max_ts or None, idle]
        self._wm = None
        self._ended = False
        #: events refused by the max_future guard (counted; they do not reach fn)
        self.invalid = 0

    # -- watermark (Flink's rule: min over active partitions of max - ooo - 1) ----------------
    @property
    def watermark(self):
        return self._wm

    @property
    def max_event_time(self):
        seen = [m for m, _ in self._parts.values() if m is not None]
        return max(seen) if seen else None

    def declare_partitions(self, partitions) -> None:
        for p in partitions:
            self._parts.setdefault(int(p), [None, False])

    def _recompute(self) -> None:
        active = [m for m, idle in self._parts.values() if not idle]
        if active and all(m is not None for m in active):
            w = min(active) - self.time.max_out_of_orderness - 1
            if self._wm is None or w > self._wm:
                self._wm = w

    def set_partition_idle(self, partition: int, idle: bool) -> Batch | None:
        self._parts.setdefault(int(partition), [None, False])[1] = bool(idle)
        self._recompute()
        return self._fire()

    def raise_partition(self, partition: int, max_ts: int) -> Batch | None:
        """Events of `partition` up to `max_ts` (ns) were seen upstream (an operator above this
        one passes its watermark on as a partition of its own): its max rises to that."""
        part = self._parts.setdefault(int(partition), [None, False])
        part[0] = int(max_ts) if part[0] is None else max(part[0], int(max_ts))
        part[1] = False
        self._recompute()
        return self._fire()

    def advance_watermark(self, watermark_ns: int) -> Batch | None:
        if self._wm is None or watermark_ns > self._wm:
            self._wm = int(watermark_ns)
        return self._fire()

    # -- per batch ------------------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        have = len(self._event)
        if n <= have:
            return
        cap = max(n, 2 * have, 1024)
        for name, d in self.defaults.items():
            grown = np.empty((cap, *d.shape), dtype=d.dtype)
            grown[:] = d
            grown[:have] = self._state[name][:have]
            self._state[name] = grown
        for attr, fill in (("_event", _NONE), ("_proc", _NONE), ("_last", np.iinfo(np.int64).min)):
            grown = np.full(cap, fill, dtype=np.int64)
            grown[:have] = getattr(self, attr)[:have]
            setattr(self, attr, grown)

    def _key_batch(self, slots) -> Batch:
        return Batch(self._encoder.decode(self._index.keys()[slots]))

    def process(self, batch: Batch, partition: int = 0) -> Batch | None:
        ts, rep = self.time.extract(batch)
        ts = ts.astype(np.int64) * np.int64(rep.factor) if rep.factor != 1 else ts
        guard = getattr(self.time, "max_future", None)
        if guard is not None and self._wm is not None and len(ts):
            # Poison clocks (judged against the watermark before the batch) reach neither fn
            # nor the watermark: one meter in 2099 must not fire every timer.
            ok = ts <= self._wm + guard
            if not ok.all():
                self.invalid += int((~ok).sum())
                batch, ts = batch.filter(ok), ts[ok]
        slots = self._index.intern(self._encoder.encode(batch))
        self._grow(len(self._index))
        uniq, row = np.unique(slots, return_inverse=True)
        outputs = []
        if len(batch):
            ctx = ProcessContext(self._key_batch(uniq), row, {n: a[uniq].copy() for n, a in self._state.items()},
                                 ts, self._wm, _now())
            out = self.fn(batch, ctx)
            self._commit(uniq, ctx)
            if out is not None:
                outputs.append(Batch.from_any(out))
            np.maximum.at(self._last, slots, ts)
            part = self._parts.setdefault(int(partition), [None, False])
            part[1] = False
            top = int(ts.max())
            part[0] = top if part[0] is None else max(part[0], top)
            self._recompute()
        fired = self._fire()
        if fired is not None:
            outputs.append(fired)
        return _concat(outputs)

    def _commit(self, slots, ctx: ProcessContext) -> None:
        for name in self._state:
            values = np.asarray(ctx.state[name])
            want = (len(slots), *self.defaults[name].shape)
            if values.shape != want:
                raise ValueError(f"state {name!r} must keep one entry per key: shape {want}, got {values.shape}")
            self._state[name][slots] = values
        for mine, theirs in ((self._event, ctx._event), (self._proc, ctx._proc)):
            changed = theirs >= 0
            mine[slots[changed]] = theirs[changed]

    def _fire(self) -> Batch | None:
        """Calls on_timer for due timers (event time: watermark >= t; processing time: clock >=
        t), in order of timer time, then applies the TTL. Timers set again while firing fire
        in the same call if already due."""
        outputs = []
        for _ in range(100):
            n = len(self._index)
            due_event = (self._event[:n] <= self._wm) if self._wm is not None else np.zeros(n, dtype=bool)
            now = _now()
            due_proc = self._proc[:n] <= now
            due = np.flatnonzero(due_event | due_proc)
            if not len(due):
                break
            times = np.where(due_event[due], self._event[due], self._proc[due])
            kinds = np.where(due_event[due], "event", "processing")
            order = np.lexsort((due, times))
            due, times, kinds = due[order], times[order], kinds[order]
            self._event[due[kinds == "event"]] = _NONE
            self._proc[due[kinds == "processing"]] = _NONE
            if self.on_timer is None:
                continue
            keys = self._key_batch(due)
            ctx = ProcessContext(keys, None, {k: a[due].copy() for k, a in self._state.items()}, None, self._wm, now)
            ctx.end_of_input = self._ended
            out = self.on_timer(keys.with_columns(timer=times, kind=kinds), ctx)
            self._commit(due, ctx)
            if out is not None:
                outputs.append(Batch.from_any(out))
        if self.ttl is not None and self._wm is not None:
            n = len(self._index)
            gone = np.iinfo(np.int64).min  # an expired key; its next event revives it
            last = self._last[:n]
            expired = np.flatnonzero((last < self._wm - self.ttl) & (last != gone))
            if len(expired):
                for name, d in self.defaults.items():
                    self._state[name][expired] = d
                self._event[expired] = _NONE
                self._proc[expired] = _NONE
                self._last[expired] = gone
        return _concat(outputs)

    def tick(self) -> Batch | None:
        """The wall clock moved: fire due processing-time timers."""
        return self._fire()

    def finish(self) -> Batch | None:
        """End of input: the watermark goes to the end of time, so event-time timers fire."""
        self._wm = np.iinfo(np.int64).max - 1
        self._ended = True
        return self._fire()

    # -- state ----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        n = len(self._index)
        return {
            "keys": self._encoder.snapshot(), "index": self._index.keys(),
            "state": {k: a[:n].copy() for k, a in self._state.items()},
            "event": self._event[:n].copy(), "proc": self._proc[:n].copy(), "last": self._last[:n].copy(),
            "parts": {p: list(v) for p, v in self._parts.items()}, "wm": self._wm,
        }

    def restore(self, s: dict) -> None:
        self._encoder.restore(s["keys"])
        self._index.assign(np.asarray(s["index"], dtype=np.int64))
        n = len(self._index)
        self._grow(n)
        for k, a in s["state"].items():
            self._state[k][:n] = a
        self._event[:n], self._proc[:n], self._last[:n] = s["event"], s["proc"], s["last"]
        self._parts = {int(p): list(v) for p, v in s["parts"].items()}
        self._wm = s["wm"]


def _now() -> int:
    from . import clock

    return clock.current().now_ns()


def _concat(batches):
    batches = [b for b in batches if b is not None and len(b)]
    if not batches:
        return None
    return batches[0] if len(batches) == 1 else Batch.concat(batches)
