"""Runtime operators: the Python side of each graph node. Per batch, never per event."""

from __future__ import annotations

import numpy as np

from . import _core
from ._intern import ObjectInterner
from ._keys import KeyEncoder
from .agg import COUNT_SPEC, Agg, native_specs
from .batch import Batch
from .custom import PythonAggs
from .timing import EventTime, TimeRepr
from .windows import Window

#: Output columns every window result has besides the keys and the aggregates.
WINDOW_COLUMNS = ("window_start", "window_end")
UPDATE_COLUMN = "update"
FINAL_COLUMN = "final"
REASON_FUTURE = "timestamp more than max_future ahead of the watermark"
REASON_ZONE = "time zone differs from the zone of the key's first row"


class WindowAggregateOperator:
    """Keyed (or not) event-time window aggregation over the native engine.

    `process(batch)` returns (results, late, invalid) batches:
      results: key columns, window_start, window_end, one column per aggregate, update;
      late:    the input rows that were late for all their windows;
      invalid: the input rows refused by the max_future guard, with a `reason` column.
    Rows of one firing come in the order in which their keys first appeared in the stream;
    firings come in order of window end (late updates of older windows first).
    """

    def __init__(self, window: Window, aggs: dict[str, Agg], time: EventTime, keys: tuple[str, ...] = (),
                 allowed_lateness: int = 0, early_every: int | None = None):
        if not aggs:
            raise ValueError("aggregate() needs at least one aggregation, e.g. aggregate(n=ps.agg.count())")
        reserved = set(keys) | set(WINDOW_COLUMNS) | {UPDATE_COLUMN, FINAL_COLUMN}
        for name, a in aggs.items():
            if not isinstance(a, Agg):
                raise TypeError(f"aggregate({name}=...) expects a ps.agg aggregation such as ps.agg.sum('kwh'), got {a!r}")
            clash = reserved.intersection(a.output_names(name))
            if clash:
                raise ValueError(f"aggregate output name {sorted(clash)[0]!r} collides with a key or window column; "
                                 "choose another name")
        self.window = window
        self.aggs = dict(aggs)
        self.time = time
        self.keys = tuple(keys)
        self.allowed_lateness = allowed_lateness
        self.early_every = early_every
        self._encoder = KeyEncoder(self.keys) if self.keys else None
        self._engine = None
        self._declared: list[int] = []
        self._raised: dict[int, int] = {}  # raise_partition before the engine is built
        self._repr: TimeRepr | None = None
        self._value_dtypes: dict[str, np.dtype] = {}
        self._py = self._python_aggs()

    #: Engine specs before the operator's own aggregations (count windows put their count first).
    LEAD: tuple = ()
    #: Output rows carry window bounds that time-weighted aggregations hold samples up to.
    BOUNDED = True

    def _python_aggs(self):
        aggs = list(self.aggs.values())
        return PythonAggs(aggs, len(self.LEAD), self.BOUNDED) if any(a.in_python for a in aggs) else None

    def _specs(self) -> list:
        return native_specs(self.aggs.values(), self.LEAD)

    # -- lifecycle ----------------------------------------------------------------------------
    def _build(self, rep: TimeRepr):
        w = self.window
        div = rep.output_divisor(w.size, w.slide, w.offset % w.slide)
        mf = -1 if self.time.max_future is None else self.time.max_future
        self._engine = _core.WindowEngine(
            w.size, w.slide, w.offset, self.time.max_out_of_orderness, self.allowed_lateness, mf,
            bool(self.keys), self._specs(), div, self.early_every or 0)
        self._repr = rep
        self._div = div
        for p in self._declared:
            self._engine.set_partition_idle(p, False)

    def declare_partitions(self, partitions) -> None:
        """Input partitions known before any data: each holds the watermark back until it sends
        data or is marked idle (otherwise a lagging source would find its data already late)."""
        self._declared = [int(p) for p in partitions]
        if self._engine is not None:
            for p in self._declared:
                self._engine.set_partition_idle(p, False)

    @property
    def engine(self):
        return self._engine

    @property
    def watermark(self):
        """Current watermark in int64 ns (None before the first event)."""
        return None if self._engine is None else self._engine.watermark

    # -- per batch ----------------------------------------------------------------------------
    def _values(self, batch: Batch):
        cols = []
        for name, a in self.aggs.items():
            if a.column is None:
                cols.append(None)
                continue
            if a.column not in batch:
                raise KeyError(f"aggregate {name}={a.kind}({a.column!r}): unknown column {a.column!r}; "
                               f"the batch has {batch.columns}")
            if a.in_python:
                cols.append(self._py.sequence(len(batch)))
                continue
            arr = batch[a.column]
            if arr.dtype.kind not in "iufb":
                raise TypeError(f"aggregate {name}={a.kind}({a.column!r}) needs a numeric column, got dtype {arr.dtype}")
            self._value_dtypes.setdefault(name, arr.dtype)
            cols.append(np.ascontiguousarray(arr, dtype=np.float64))
        return cols

    def process(self, batch: Batch, partition: int = 0, floor: np.ndarray | None = None):
        """One batch of `partition` in arrival order. `floor` (int64 ns per row, or None): the
        largest event time of the partition's rows before each row that went to other operators
        (`_core.watermark_floors`; NO_WATERMARK: none), where several operators share a
        partition's keys (the Ray runtime's window actors): each row is then judged against the
        watermark of one operator that saw the whole partition."""
        ts, rep = self.time.extract(batch)
        self._begin_python(batch, ts, rep)
        values = self._values(batch)
        keys = self._encoder.encode(batch) if self._encoder is not None else None
        if self._engine is None:
            self._build(rep)
            for p, t in self._raised.items():  # an engine with no data yet: nothing fires
                self._engine.raise_partition(p, t)
            self._raised = {}
        elif rep != self._repr:
            raise TypeError(f"time column {self.time.column!r} changed representation from {self._repr} to {rep}")
        extra = self._extra_columns(batch)
        try:
            out = self._engine.process(keys, ts, values, *extra, rep.factor, partition, floor)
        except ValueError as e:
            raise ValueError(f"time column {self.time.column!r}: {e}") from None
        return self._results(out), self._late(batch, ts, out["late"]), self._invalid(batch, ts, out["invalid"],
                                                                                    out.get("invalid_reason"))

    def process_turns(self, batches: list, floors: list, turns: np.ndarray):
        """Pieces of `batches` in turn in one engine call, each followed by a raise of its
        partition where the turn says (the Ray runtime's aligned reads: WindowWorker._round):
        turns[t] = (batch or -1 for none, lo, hi, partition, end or NO_WATERMARK), floors[b] the floors of
        batch b's rows (or None). The same as `process` of each piece and `raise_partition`
        after it, without a Python call per piece. Returns (fired rows, per batch its late
        rows or None, per batch its invalid rows or None); None where this operator takes
        pieces one by one only (no window engine yet, Python aggregations, another engine)."""
        if self._engine is None or self._py is not None or not hasattr(self._engine, "process_turns"):
            return None
        keys, times, values = [], [], []
        for batch in batches:
            ts, rep = self.time.extract(batch)
            if rep != self._repr:
                return None  # `process` names it
            times.append(ts)
            values.append(self._values(batch))
            keys.append(self._encoder.encode(batch) if self._encoder is not None else None)
        try:
            out = self._engine.process_turns(keys, times, values, self._repr.factor, floors, turns)
        except ValueError as e:
            raise ValueError(f"time column {self.time.column!r}: {e}") from None
        ends = np.cumsum([len(b) for b in batches])
        late, invalid, reasons = out["late"], out["invalid"], out.get("invalid_reason")
        late_of, invalid_of = [], []
        for b, batch in enumerate(batches):
            lo, hi = (int(ends[b - 1]) if b else 0), int(ends[b])
            mine = (late >= lo) & (late < hi)
            late_of.append(self._late(batch, times[b], late[mine] - lo))
            mine = (invalid >= lo) & (invalid < hi)
            invalid_of.append(self._invalid(batch, times[b], invalid[mine] - lo,
                                            None if reasons is None else reasons[mine]))
        return self._results(out), late_of, invalid_of

    def _begin_python(self, batch, ts, rep) -> None:
        if self._py is not None:
            for a in self.aggs.values():
                if a.in_python and a.column not in batch:
                    return  # _values names the missing column
            self._py.begin(batch, ts * rep.factor)

    def _extra_columns(self, batch) -> tuple:
        """Engine inputs besides keys, times and values (none here; per-row zones for calendars)."""
        return ()

    def advance_watermark(self, watermark_ns: int) -> Batch:
        """Moves the watermark (int64 ns) forward, firing what it passes; never back."""
        if self._engine is None:
            return self.empty_result()
        return self._results(self._engine.advance_watermark(int(watermark_ns)))

    def set_partition_idle(self, partition: int, idle: bool) -> Batch:
        if self._engine is None:
            return self.empty_result()
        return self._results(self._engine.set_partition_idle(int(partition), bool(idle)))

    def first_watermark(self, watermark_ns: int) -> None:
        """Where the watermark of one operator that saw every row of the input began (ns), for
        an operator that holds some of its keys (the Ray runtime's window actors). Only a global
        window's event-time trigger depends on it (GlobalWindowOperator); the rest ignore it."""

    def raise_partition(self, partition: int, max_ts: int) -> Batch:
        """Rows of `partition` up to event time `max_ts` (ns) went to other operators that
        share its keys (the Ray runtime's window actors tell each other): its max rises to
        that, as if the rows had come here, which may move the watermark and fire. Before the
        first batch (no engine yet) it waits for the engine."""
        p, t = int(partition), int(max_ts)
        if self._engine is None:
            self._raised[p] = max(self._raised.get(p, t), t)
            return self.empty_result()
        return self._results(self._engine.raise_partition(p, t))

    @property
    def max_event_time(self):
        """Largest event time (ns) seen over all partitions, or None."""
        if self._engine is None:
            return None
        seen = [p["max_ts"] for p in self._engine.partitions if p["max_ts"] is not None]
        return max(seen) if seen else None

    def finish(self):
        """End of bounded input: fire every window."""
        if self._engine is None:
            return self.empty_result()
        return self._results(self._engine.flush())

    # -- output ---------------------------------------------------------------------------------
    #: Fired rows kept for queries (pystream.query.History), when the operator is queryable.
    history = None

    #: The result of a call that fired nothing (most calls with small batches), built once.
    _no_rows = None

    def _results(self, out) -> Batch:
        """Fired rows as a Batch; recorded in the query history when there is one."""
        if not len(out["start"]) and self._py is None:
            if self._no_rows is None:
                self._no_rows = self._build_results(out)
            return self._no_rows
        batch = self._build_results(out)
        if self.history is not None and len(batch):
            self.history.add(out["key"], batch)
        return batch

    def _build_results(self, out) -> Batch:
        cols: dict[str, np.ndarray] = {}
        if self._encoder is not None:
            cols.update(self._encoder.decode(out["key"]))
        cols["window_start"] = self._repr.to_output(out["start"], self._div)
        cols["window_end"] = self._repr.to_output(out["end"], self._div)
        values_of = out["cols"]
        if self._py is not None:
            bounds = (out["start"] * self._div, out["end"] * self._div)
            values_of = self._py.resolve(out, values_of, self._engine, bounds)
        for (name, a), values in zip(self.aggs.items(), values_of):
            dt = self._value_dtypes.get(name)
            if a.keeps_input_dtype and dt is not None and dt.kind in "iub":
                values = values.astype(dt)
            if a.kind == "top_k":
                cols.update(self._top_k_columns(name, a, values))
                continue
            cols[name] = values
        cols[UPDATE_COLUMN] = out["update"]
        if self.early_every:
            cols[FINAL_COLUMN] = ~out["early"]
        return Batch(cols)

    @staticmethod
    def _top_k_columns(name, a, values) -> dict:
        """A top_k output (values and counts, k per row, or an empty column) as its 2k columns."""
        k = a.iparam
        vals, counts = values if isinstance(values, tuple) else (np.empty(0), np.empty(0, dtype=np.int64))
        vals, counts = vals.reshape(-1, k), counts.reshape(-1, k)
        cols = {}
        for j in range(k):
            cols[f"{name}_{j + 1}"] = vals[:, j].copy()
            cols[f"{name}_{j + 1}_count"] = counts[:, j].copy()
        return cols

    def empty_result(self) -> Batch:
        cols = {k: np.empty(0, dtype=np.int64) for k in self.keys}
        if self._encoder is not None and self._engine is not None:
            cols = self._encoder.decode(np.empty(0, dtype=np.int64))
        t = np.empty(0, dtype=np.int64)
        rep = self._repr
        cols["window_start"] = t if rep is None else rep.to_output(t, self._div)
        cols["window_end"] = t if rep is None else rep.to_output(t, self._div)
        for name, a in self.aggs.items():
            if a.kind == "top_k":
                cols.update(self._top_k_columns(name, a, np.empty(0)))
            elif a.in_python:
                cols[name] = np.empty(0, dtype=a.impl.dtype)
            else:
                cols[name] = np.empty(0, dtype=np.int64 if a.kind in ("count", "distinct") else np.float64)
        cols[UPDATE_COLUMN] = np.empty(0, dtype=bool)
        if self.early_every:
            cols[FINAL_COLUMN] = np.empty(0, dtype=bool)
        return Batch(cols)

    @staticmethod
    def _late(batch, ts, rows):
        return batch.take(rows) if len(rows) else None

    #: Reason texts by the engine's reason code (csrc/calendar_engine.h).
    REASONS = np.array([REASON_FUTURE, REASON_ZONE], dtype=object)

    @classmethod
    def _invalid(cls, batch, ts, rows, codes=None):
        if not len(rows):
            return None
        bad = batch.take(rows)
        reason = np.full(len(rows), REASON_FUTURE, dtype=object) if codes is None else cls.REASONS[codes]
        return bad.with_columns(reason=reason)

    # -- queries --------------------------------------------------------------------------------
    def key_id(self, key):
        """The engine's int64 key for a key value (a tuple for several key columns); KeyError
        when the operator has not seen it."""
        if self._encoder is None:
            raise ValueError("this window operator is not keyed: query it without a key")
        kid = None if self._engine is None else self._encoder.lookup(key)
        if kid is None or not self._engine.has_key(kid):
            raise KeyError(key)
        return kid

    def peek(self, key=None, *, with_key_ids: bool = False):
        """Partial results of the windows that have not fired yet (of one key, or all keys):
        what they hold so far, as they would fire if no more events came. With
        `with_key_ids`, (the rows' int64 key ids or None, the rows)."""
        if self._engine is None:
            rows, ids = self.empty_result(), np.empty(0, dtype=np.int64)
        else:
            out = self._engine.peek(None if key is None else self.key_id(key))
            rows, ids = self._build_results(out), out["key"]
        return (ids, rows) if with_key_ids else rows

    def stats(self) -> dict:
        """Gauges for metrics: watermark (ns or None), keys, state bytes, open windows."""
        e = self._engine
        if e is None:
            return {"watermark": None, "num_keys": 0, "state_bytes": 0, "open_windows": 0}
        open_windows = next((getattr(e, a) for a in ("open_windows", "live_sessions") if hasattr(e, a)), e.num_keys)
        return {"watermark": getattr(e, "watermark", None), "num_keys": e.num_keys,
                "state_bytes": getattr(e, "state_bytes", 0), "open_windows": open_windows}

    # -- state ----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Immutable, picklable state; `restore` on a fresh operator continues identically."""
        return {
            "config": self.fingerprint(),
            "engine": None if self._engine is None else self._engine.snapshot(),
            "repr": None if self._repr is None else (self._repr.kind, self._repr.unit),
            "keys": None if self._encoder is None else self._encoder.snapshot(),
            "value_dtypes": {k: v.str for k, v in self._value_dtypes.items()},
            "python_aggs": None if self._py is None else self._py.snapshot(),
            # Partitions declared before any data reached the engine (otherwise in its state).
            "declared": list(self._declared),
        }

    def restore(self, state: dict) -> None:
        if state["config"] != self.fingerprint():
            raise ValueError(f"snapshot is from a different window operator: {state['config']} != {self.fingerprint()}")
        self._declared = [int(p) for p in state.get("declared", [])]
        if state["repr"] is not None:
            self._build(TimeRepr(*state["repr"]))
            self._engine.restore(state["engine"])
        if self._encoder is not None and state["keys"] is not None:
            self._encoder.restore(state["keys"])
        self._value_dtypes = {k: np.dtype(v) for k, v in state["value_dtypes"].items()}
        if self._py is not None:
            self._py.restore(state.get("python_aggs") or {"seq": 1, "stores": [st.snapshot() for st in self._py.stores]})

    def retain_keys(self, keep) -> None:
        """Drops the state of every key for which keep(key columns) is False (a rescale hands
        an actor another actor's state, of which it owns part). Python aggregations keep only
        the accumulators the kept keys use. Keyed windows only: an unkeyed window's state is
        one key."""
        if not self.keys:
            raise ValueError("an unkeyed window's state is one key: it cannot be split by key")
        if self._engine is None:
            return
        state = self._engine.snapshot()
        keys = np.asarray(state["keys"])
        mask = np.asarray(keep(self._encoder.decode(keys)), dtype=bool)
        if mask.all():
            return
        state["keys"] = keys[mask]
        self._retain_rows(state, mask)
        self._build(self._repr)
        self._engine.restore(state)
        if self._py is not None:
            self._py.retain(self._engine)

    @staticmethod
    def _retain_rows(state: dict, mask: np.ndarray) -> None:
        """Keeps the engine snapshot's per-key state of the keys in `mask` (slot order): here
        the slice table, slices x keys x state row."""
        rows = np.frombuffer(state["rows"], dtype=np.uint8).reshape(len(state["slice_used"]), len(mask),
                                                                    state["row_bytes"])
        state["rows"] = rows[:, mask].tobytes()

    def fingerprint(self) -> tuple:
        return (
            repr(self.window), self.keys, tuple((n,) + a.fingerprint() for n, a in self.aggs.items()),
            self.allowed_lateness, repr(self.time), self.early_every,
        )


class CountWindowOperator(WindowAggregateOperator):
    """Count windows (ps.windows.CountTumbling/CountSliding) over the native count engine.
    Arrival order decides everything, so there is no watermark, nothing is late, and the
    output never has updates; the time column only gives each window its first and last
    event time."""

    EVENTS = "events"
    LEAD = (COUNT_SPEC,)
    BOUNDED = False

    def __init__(self, window, aggs, time, keys=(), allowed_lateness=0):
        if self.EVENTS in aggs:
            raise ValueError(f"aggregate output name {self.EVENTS!r} collides with the count window's event count")
        super().__init__(window, aggs, time, keys, allowed_lateness)

    def _build(self, rep: TimeRepr):
        self._engine = _core.CountWindowEngine(self.window.size, self.window.slide, bool(self.keys), self._specs())
        self._repr = rep
        self._div = rep.factor  # window bounds are event times, already in the input's unit

    def process(self, batch: Batch, partition: int = 0, floor: np.ndarray | None = None):
        if floor is not None:
            raise ValueError(f"{self.window!r} has no watermark to take floors")
        ts, rep = self.time.extract(batch)
        self._begin_python(batch, ts, rep)
        values = [None] + self._values(batch)
        keys = self._encoder.encode(batch) if self._encoder is not None else None
        if self._engine is None:
            self._build(rep)
        out = self._engine.process(keys, ts, values)
        return self._results(out), None, None

    def _build_results(self, out) -> Batch:
        events, *cols = out["cols"]
        res = super()._build_results({**out, "cols": cols})
        named = {}
        for name in res.columns:
            named[name] = res[name]
            if name == "window_end":
                named[self.EVENTS] = events
        return Batch(named)

    def empty_result(self) -> Batch:
        res = super().empty_result()
        named = {}
        for name in res.columns:
            named[name] = res[name]
            if name == "window_end":
                named[self.EVENTS] = np.empty(0, dtype=np.int64)
        return Batch(named)

    def finish(self):
        return self.empty_result()  # a trailing group smaller than the trigger never fires

    def advance_watermark(self, watermark_ns):
        return self.empty_result()

    def set_partition_idle(self, partition, idle):
        return self.empty_result()

    def raise_partition(self, partition, max_ts):
        return self.empty_result()

    def declare_partitions(self, partitions) -> None:
        pass

    @staticmethod
    def _retain_rows(state: dict, mask: np.ndarray) -> None:
        # Key-major: each key's panes together, and its event count.
        state["rows"] = _rows_by_key(state["rows"], mask)
        state["seen"] = np.asarray(state["seen"])[mask]

    @property
    def watermark(self):
        return None

    @property
    def max_event_time(self):
        return None



class SessionWindowOperator(WindowAggregateOperator):
    """Session windows over the native session engine (csrc/session_engine.h). Same outputs,
    side outputs, per-partition watermarks, idleness and quiet-stream handling as time windows."""

    BOUNDED = False  # a session ends a gap after its last event: nothing to hold samples up to

    @staticmethod
    def _retain_rows(state: dict, mask: np.ndarray) -> None:
        # One entry per live session, naming its key's slot: kept keys' sessions, renumbered.
        slot = np.asarray(state["slot"])
        kept = mask[slot]
        renumber = (np.cumsum(mask) - 1).astype(np.int32)
        for name in ("start", "last", "emitted"):
            state[name] = np.asarray(state[name])[kept]
        state["slot"] = renumber[slot[kept]]
        state["rows"] = _rows_by_key(state["rows"], kept)

    def _build(self, rep: TimeRepr):
        gap = self.window.size
        div = rep.output_divisor(gap)
        mf = -1 if self.time.max_future is None else self.time.max_future
        self._engine = _core.SessionEngine(gap, self.time.max_out_of_orderness, self.allowed_lateness, mf, bool(self.keys),
                                           self._specs(), div)
        self._repr = rep
        self._div = div
        for p in self._declared:
            self._engine.set_partition_idle(p, False)



class CalendarWindowOperator(WindowAggregateOperator):
    """Calendar windows (ps.windows.Calendar) over the native calendar engine
    (csrc/calendar_engine.h): bounds are precomputed per zone from the IANA database, so no
    Python runs per event; with `tz_column` each key gets the zone of its first row, and rows
    whose zone differs from their key's go to the invalid output (their times still move the
    watermark, as the time of every row the max_future guard accepts does)."""

    def __init__(self, window, aggs, time, keys=(), allowed_lateness=0, early_every=None):
        if window.tz_column is not None:
            if not keys:
                raise ValueError(f"{window!r} takes a zone per key: key the stream first, e.g. .key_by('meter_id')")
            if window.tz_column in keys:
                raise ValueError(f"tz_column {window.tz_column!r} cannot also be a key column")
        super().__init__(window, aggs, time, keys, allowed_lateness, early_every)
        self._zones: list[str] = []  # zone names in engine id order
        self._tz_ids = ObjectInterner(window.tz_column or "tz")
        self._zone_of_id = np.empty(0, dtype=np.int32)  # interned tz value -> engine zone id (-1: unknown)

    def _build(self, rep: TimeRepr):
        div = rep.output_divisor(1_000_000_000)  # bounds are whole seconds
        mf = -1 if self.time.max_future is None else self.time.max_future
        self._engine = _core.CalendarEngine(self.time.max_out_of_orderness, self.allowed_lateness, mf, bool(self.keys),
                                            self._specs(), div, self.early_every or 0)
        self._repr = rep
        self._div = div
        zones, self._zones = self._zones, []
        for name in zones or ([self.window.tz] if self.window.tz else []):
            self._add_zone(name)
        for p in self._declared:
            self._engine.set_partition_idle(p, False)

    @staticmethod
    def _retain_rows(state: dict, mask: np.ndarray) -> None:
        # Key-major rings, and each key's zone.
        state["rows"] = _rows_by_key(state["rows"], mask)
        state["zone_of_slot"] = np.asarray(state["zone_of_slot"])[mask]

    def _add_zone(self, name: str) -> int:
        self._engine.add_zone(self.window.bounds(name))
        self._zones.append(name)
        return len(self._zones) - 1

    def _zone_column(self, batch: Batch):
        """Engine zone id per row of the tz column, registering zones seen for the first time."""
        col = self.window.tz_column
        if col not in batch:
            raise KeyError(f"{self.window!r}: unknown column {col!r}; the batch has {batch.columns}")
        arr = batch[col]
        if arr.dtype.kind not in "OUS":
            raise TypeError(f"tz_column {col!r} must hold IANA zone names (strings), got dtype {arr.dtype}")
        ids = self._tz_ids.intern(arr)
        known = len(self._zone_of_id)
        names = self._tz_ids.values()
        if len(names) > known:
            fresh = np.full(len(names) - known, -1, dtype=np.int32)
            for k, name in enumerate(names[known:]):
                try:
                    fresh[k] = self._zones.index(name) if name in self._zones else self._add_zone(name)
                except ValueError:
                    pass  # an unknown name: rows carrying it are refused below
            self._zone_of_id = np.concatenate([self._zone_of_id, fresh])
        zones = self._zone_of_id[ids]
        if len(zones) and zones.min() < 0:
            bad = int(np.flatnonzero(zones < 0)[0])
            raise ValueError(f"tz_column {col!r} row {bad}: unknown time zone {arr[bad]!r}; expected an IANA name such "
                             f"as 'Europe/Berlin'")
        return zones

    def _extra_columns(self, batch) -> tuple:
        return (self._zone_column(batch) if self.window.tz_column else None,)

    def snapshot(self) -> dict:
        state = super().snapshot()
        state["zones"] = list(self._zones)
        state["tz_ids"] = self._tz_ids.snapshot()
        state["zone_of_id"] = self._zone_of_id.copy()
        return state

    def restore(self, state: dict) -> None:
        self._zones = list(state["zones"])
        self._tz_ids = ObjectInterner.restore(state["tz_ids"])
        self._zone_of_id = np.asarray(state["zone_of_id"], dtype=np.int32).copy()
        super().restore(state)


class GlobalWindowOperator(CountWindowOperator):
    """Global windows with triggers (ps.windows.Global) over the native global engine
    (csrc/global_engine.h). Output as count windows (first/last event time, `events`); the
    watermark (per partition, idleness, quiet streams) drives the event-time trigger, the
    runtime's clock the processing-time trigger (`tick`)."""

    def __init__(self, window, aggs, time, keys=(), allowed_lateness=0):
        if allowed_lateness:
            raise ValueError(f"allowed_lateness does not apply to {window!r}: nothing is late for a global window")
        super().__init__(window, aggs, time, keys, 0)
        self._next_tick: int | None = None
        self._first: int | None = None  # first_watermark before the engine is built

    def _build(self, rep: TimeRepr):
        tr = self.window.trigger
        mf = -1 if self.time.max_future is None else self.time.max_future
        self._engine = _core.GlobalEngine(tr.code, tr.value if tr.code == 0 else 0, tr.value if tr.code else 0,
                                          self.window.mode == "purging", self.time.max_out_of_orderness, mf, bool(self.keys),
                                          self._specs())
        self._repr = rep
        self._div = rep.factor  # bounds are event times in the input's unit
        for p in self._declared:
            self._engine.set_partition_idle(p, False)
        if self._first is not None:
            self._engine.first_watermark(self._first)

    def process(self, batch: Batch, partition: int = 0, floor: np.ndarray | None = None):
        return WindowAggregateOperator.process(self, batch, partition, floor)

    def first_watermark(self, watermark_ns: int) -> None:
        """The event-time trigger's schedule starts where the watermark of one operator that saw
        every row began: this operator's own may first appear later, with keys holding events
        since, past a multiple of the interval the other's passed on its way."""
        if self._engine is None:
            self._first = int(watermark_ns)
        else:
            self._engine.first_watermark(int(watermark_ns))

    @staticmethod
    def _retain_rows(state: dict, mask: np.ndarray) -> None:
        state["rows"] = _rows_by_key(state["rows"], mask)  # one state row per key
        state["pending"] = np.asarray(state["pending"])[mask]

    def _values(self, batch):
        return [None] + WindowAggregateOperator._values(self, batch)

    def tick(self, now_ns: int | None = None):
        """The runtime's wall clock moved: a processing-time trigger fires when it passes a
        multiple of its interval (the first tick only starts the schedule)."""
        tr = self.window.trigger
        if tr.code != 2 or self._engine is None:
            return None
        from . import clock

        now = clock.current().now_ns() if now_ns is None else now_ns
        if self._next_tick is not None and now >= self._next_tick:
            res = self._results(self._engine.fire())
        else:
            res = None
        self._next_tick = (now // tr.value + 1) * tr.value
        return res

    advance_watermark = WindowAggregateOperator.advance_watermark
    set_partition_idle = WindowAggregateOperator.set_partition_idle
    raise_partition = WindowAggregateOperator.raise_partition
    declare_partitions = WindowAggregateOperator.declare_partitions
    watermark = WindowAggregateOperator.watermark
    max_event_time = WindowAggregateOperator.max_event_time

    def finish(self):
        if self._engine is None:
            return self.empty_result()
        return self._results(self._engine.flush())


def _rows_by_key(rows: bytes, mask: np.ndarray) -> bytes:
    """The state bytes of the keys (or sessions) in `mask`, from bytes holding an equal-sized
    block per key in slot order."""
    if not len(mask):
        return rows
    return np.frombuffer(rows, dtype=np.uint8).reshape(len(mask), -1)[mask].tobytes()


def make_window_operator(window, aggs, time, keys=(), allowed_lateness=0, early_every=None):
    """The operator for a window kind."""
    if getattr(window, "globally", False):
        return GlobalWindowOperator(window, aggs, time, keys, allowed_lateness)
    if getattr(window, "calendar", False):
        return CalendarWindowOperator(window, aggs, time, keys, allowed_lateness, early_every)
    if early_every:
        return WindowAggregateOperator(window, aggs, time, keys, allowed_lateness, early_every)
    if getattr(window, "counted", False):
        cls = CountWindowOperator
    elif getattr(window, "sessions", False):
        cls = SessionWindowOperator
    else:
        cls = WindowAggregateOperator
    return cls(window, aggs, time, keys, allowed_lateness)


def window_operator(params: dict):
    """The operator of a window node, from the node's params (every runtime builds them so)."""
    return make_window_operator(params["window"], params["aggs"], params["time"], params["keys"],
                                params["allowed_lateness"], params.get("early_every"))
