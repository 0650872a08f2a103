"""The dataflow graph (`ps.Flow`, streams) and the local runtime that executes it."""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time as _wall
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._duration import parse_duration
from .agg import Agg
from .batch import Batch
from .operators import make_window_operator, window_operator
from .sinks import Sink
from .sources import Source
from .timing import EventTime, ProcessingTime
from .windows import Window


@dataclass(eq=False)
class _Node:
    kind: str  # source | map | filter | window | union | sink
    inputs: list[tuple["_Node", str]]
    params: dict = field(default_factory=dict)
    id: int = 0


class Flow:
    """A dataflow graph: sources -> operators -> sinks.

    >>> flow = Flow("meters")
    """

    def __init__(self, name: str = "flow"):
        self.name = name
        self._nodes: list[_Node] = []
        self._ids = itertools.count()
        self.live = LiveState()

    def _add(self, kind, inputs, **params) -> _Node:
        node = _Node(kind, list(inputs), params, next(self._ids))
        self._nodes.append(node)
        return node

    def source(self, source: Source, time: EventTime | None = None) -> "Stream":
        """Adds a source. `time` assigns event time (needed by windows)."""
        if not isinstance(source, Source):
            raise TypeError(f"flow.source() expects a ps.sources source such as ps.sources.Arrays(...), got {type(source).__name__}")
        if time is not None and not isinstance(time, (EventTime, ProcessingTime)):
            raise TypeError(f"time must be ps.EventTime(...), ps.IngestionTime() or ps.ProcessingTime(), "
                            f"got {type(time).__name__}")
        node = self._add("source", [], source=source, time=time)
        return Stream(self, node, "out", time)

    def run(self, checkpoints: str | None = None, *, resume: bool = False, guarantee: str | None = None,
            checkpoint_every=64, keep: int = 3, clock=None, serve: str | None = None,
            serve_token: str | None = None, progress: bool = False, runtime=None) -> "RunResult":
        """Runs the flow with the local runtime. Bounded sources run to their end, then every
        window fires (the watermark jumps to the end of time).

        Args:
            checkpoints: a directory (or fsspec URL) for checkpoints; None runs without them.
            resume: restore the newest complete checkpoint and replay sources from its positions.
            guarantee: "at_most_once", "at_least_once" (the default with checkpoints) or
                "exactly_once" (needs replayable sources and transactional sinks: checked now).
            checkpoint_every: an int (source batches) or a duration ("10s") between checkpoints.
            keep: how many checkpoints to keep.
            clock: the wall clock for processing time, idleness and quiet streams
                (default: the system clock; ps.testing.ManualClock in tests).
            serve: serve queryable state, /metrics and the dashboard over HTTP while the flow
                runs, e.g. ":8080" (binds 127.0.0.1 unless a host is given); see `serve()`.
            serve_token: require this bearer token from HTTP clients.
            progress: show events/s, watermark, late count and checkpoint age on stderr while
                it runs (a rich live panel when rich is installed).
            runtime: None for this process, or e.g. ps.runtimes.Ray(parallelism=4) to run the
                windows on several processes (see pystream/runtimes.py).
        """
        from . import clock as _clock

        if runtime is not None:
            if progress or clock is not None:
                raise ValueError(f"progress= and clock= belong to the local runtime, not {runtime!r}")
            server = self.serve(serve, token=serve_token) if serve is not None else None
            try:
                return runtime.run(self, checkpoints=checkpoints, resume=resume, guarantee=guarantee,
                                   checkpoint_every=checkpoint_every, keep=keep)
            finally:
                if server is not None:
                    server.close()

        server = self.serve(serve, token=serve_token) if serve is not None else None
        if progress:
            from .progress import Progress

            reporter = Progress(self)
        previous = _clock.use(clock or _clock.SystemClock())
        try:
            return LocalRuntime(self).run(checkpoints=checkpoints, resume=resume, guarantee=guarantee,
                                          checkpoint_every=checkpoint_every, keep=keep)
        finally:
            _clock.use(previous)
            self.live.running = False
            if progress:
                reporter.close()
            if server is not None:
                server.close()

    # -- live state -------------------------------------------------------------------------------
    def state(self, name: str):
        """The queryable state `name` (see `.queryable()`): partial(key), last(key, n),
        top(by, k), watermark. Available once the flow has started, and after it ends."""
        from .query import NotStarted, QueryError

        declared = [n.params["queryable"][0] for n in self._nodes if n.params.get("queryable")]
        if name not in declared:
            raise QueryError(f"no queryable state named {name!r}; declared: {declared}")
        st = self.live.states.get(name)
        if st is None:
            raise NotStarted(f"queryable state {name!r} exists once the flow has started")
        return st

    def query(self, name: str, key=None, last: int = 10) -> dict:
        """A consistent view of queryable state `name`: {"watermark", "partial", "last"} for one
        key (a tuple for several key columns) or, without a key, for all keys."""
        partial, fired, watermark = self.state(name).view(key, last)
        return {"watermark": watermark, "partial": partial, "last": fired}

    def serve(self, address: str = ":8080", token: str | None = None):
        """Starts an HTTP server for this flow's queryable state, Prometheus /metrics and the
        live dashboard in a background thread; returns it (`.url`, `.close()`)."""
        from .serve import Server

        return Server(self, address, token)

    def fingerprint(self) -> str:
        """Identifies the flow's structure; a checkpoint only restores into the same structure."""
        import hashlib

        parts = []
        for n in self._nodes:
            p = n.params
            if n.kind == "source":
                desc = (p["source"].fingerprint(), repr(p["time"]))
            elif n.kind in ("map", "filter", "flat_map"):
                desc = (getattr(p["fn"], "__qualname__", type(p["fn"]).__name__),)
            elif n.kind == "window":
                desc = (repr(p["window"]), p["keys"], p["allowed_lateness"], repr(p["time"]), p.get("early_every"),
                        tuple((k,) + a.fingerprint() for k, a in p["aggs"].items()))
            elif n.kind == "sink":
                desc = (p["sink"].fingerprint(),)
            elif n.kind == "process":
                desc = (getattr(p["fn"], "__qualname__", "fn"), getattr(p["on_timer"], "__qualname__", None), p["keys"],
                        tuple((k, repr(v)) for k, v in p["state"].items()), p["ttl"], repr(p["time"]))
            elif n.kind == "op":
                desc = (p["describe"], p["keys"], repr(p["time"]))
            else:
                desc = ()
            parts.append((n.id, n.kind, desc, tuple((i.id, port) for i, port in n.inputs)))
        return hashlib.sha256(repr(parts).encode()).hexdigest()


#: Node kinds that hold state and emit on their own watermark (an operator, in ops).
OPERATOR_KINDS = ("window", "process", "op")
#: The largest event time the native core takes (ns; 2^62 is in 2116).
MAX_TIME_NS = 2**62


def operators_below(node, children: dict) -> list:
    """The operators (windows, process(), meter operators) that take `node`'s output, any
    port, through stateless steps; `children`: node id -> [(child, port)]."""
    seen, todo, found = set(), [node], []
    while todo:
        for child, _ in children[todo.pop().id]:
            if child.id not in seen:
                seen.add(child.id)
                (found if child.kind in OPERATOR_KINDS else todo).append(child)
    return sorted(found, key=lambda n: n.id)


def passed_watermark(wm: int, below) -> int:
    """What an operator's watermark `wm` raises its watermark partition to at the operator
    `below` it: that operator's max less its own disorder bound is then `wm` (capped at the
    largest time the core takes)."""
    return min(wm + getattr(below.params["time"], "max_out_of_orderness", 0) + 1, MAX_TIME_NS)


def node_operator(node):
    """A new operator for a process() or smart-meter (dedupe, register_deltas, gaps) node."""
    if node.kind == "process":
        from .process import KeyedProcessOperator

        p = node.params
        return KeyedProcessOperator(p["fn"], p["keys"], p["time"], p["state"], p["on_timer"], p["ttl"])
    return node.params["make"]()


class Stream:
    """A stream of batches flowing out of one port of a graph node."""

    def __init__(self, flow: Flow, node: _Node, port: str, time: EventTime | None, keys: tuple[str, ...] = ()):
        self._flow, self._node, self._port, self._time, self._keys = flow, node, port, time, keys

    def _derive(self, kind, **params) -> "Stream":
        node = self._flow._add(kind, [(self._node, self._port)], **params)
        return Stream(self._flow, node, "out", self._time, self._keys)

    def map(self, fn: Callable) -> "Stream":
        """fn(batch) -> Batch or dict of arrays, applied per batch."""
        return self._derive("map", fn=fn)

    def flat_map(self, fn: Callable) -> "Stream":
        """fn(batch) -> an iterable of Batches or dicts of arrays (or one of them, or None),
        applied per batch; each result flows on as its own batch."""
        return self._derive("flat_map", fn=fn)

    def filter(self, fn: Callable) -> "Stream":
        """fn(batch) -> boolean mask of rows to keep, applied per batch."""
        return self._derive("filter", fn=fn)

    def union(self, *others: "Stream") -> "Stream":
        streams = (self, *others)
        for s in others:
            if s._flow is not self._flow:
                raise ValueError("union() needs streams of the same Flow")
        node = self._flow._add("union", [(s._node, s._port) for s in streams])
        return Stream(self._flow, node, "out", self._time, ())

    def unkeyed(self) -> "Stream":
        """The same stream without its keys: windows over it aggregate all its events."""
        return Stream(self._flow, self._node, self._port, self._time, ())

    def key_by(self, *columns: str) -> "KeyedStream":
        """Partitions the stream by one or more key columns (int, string/object, or several)."""
        if not columns:
            raise ValueError("key_by() needs at least one column name")
        for c in columns:
            if not isinstance(c, str):
                raise TypeError(f"key_by() takes column names (str), got {type(c).__name__} {c!r}")
        if len(set(columns)) != len(columns):
            raise ValueError(f"key_by() got a column twice: {columns}")
        return KeyedStream(self._flow, self._node, self._port, self._time, tuple(columns))

    def window(self, window: Window, allowed_lateness="0s", early_every=None) -> "WindowedStream":
        """Event-time windows over this stream; a non-keyed stream aggregates all its events.
        `early_every="15m"` adds speculative results of open windows each time the watermark
        passes a multiple of 15 minutes, marked final=False (time windows only)."""
        if not isinstance(window, Window):
            raise TypeError(f"window() expects a ps.windows assigner such as Tumbling('15m') or Calendar('day', tz=...), "
                            f"got {type(window).__name__}")
        if self._time is None:
            raise ValueError("window() needs event time: give the source a time, e.g. "
                             "flow.source(src, time=ps.EventTime('ts', unit='ms'))")
        early = None
        if early_every is not None:
            if getattr(window, "counted", False) or getattr(window, "sessions", False) or getattr(window, "globally", False):
                raise ValueError(f"early_every applies to time windows (Tumbling, Sliding), not {window!r}")
            early = parse_duration(early_every, "early_every")
            if early <= 0:
                raise ValueError(f"early_every must be > 0, got {early_every!r}")
        return WindowedStream(self, window, parse_duration(allowed_lateness, "allowed_lateness"), early)

    def sink(self, sink: Sink) -> "Stream":
        if not isinstance(sink, Sink):
            raise TypeError(f"sink() expects a ps.sinks sink such as ps.sinks.Collect('name'), got {type(sink).__name__}")
        self._flow._add("sink", [(self._node, self._port)], sink=sink)
        return self


class KeyedStream(Stream):
    """A stream partitioned by key columns."""

    def process(self, fn: Callable, state: dict | None = None, on_timer: Callable | None = None,
                ttl=None) -> Stream:
        """Keyed application state and timers, vectorized per batch (see pystream.process).

        fn(batch, ctx) -> Batch, dict of arrays or None: `ctx.state[name]` is an array aligned
        with `ctx.keys` (the batch's distinct keys; `ctx.row` maps rows to them); fn may set
        timers with ctx.set_event_timer / ctx.set_processing_timer.
        on_timer(timers, ctx) is called with the keys whose timers came due (columns: the keys,
        `timer` in ns, `kind`). `state` maps names to default values; `ttl` drops the state and
        timers of keys with no event for that long in event time.
        """
        from .process import KeyedProcessOperator

        if self._time is None:
            raise ValueError("process() needs a time notion for its timers: give the source one, e.g. "
                             "flow.source(src, time=ps.EventTime('ts', unit='ms'))")
        ttl_ns = None if ttl is None else parse_duration(ttl, "ttl")
        KeyedProcessOperator(fn, self._keys, self._time, state or {}, on_timer, ttl_ns)  # validates now
        node = self._flow._add("process", [(self._node, self._port)], fn=fn, on_timer=on_timer, state=dict(state or {}),
                               ttl=ttl_ns, keys=self._keys, time=self._time)
        return Stream(self._flow, node, "out", self._time, ())


    # -- smart-meter operators (pystream.meters) -------------------------------------------------
    def _meter_op(self, describe: str, make, time_out=True) -> "OperatorStream":
        if self._time is None or not isinstance(self._time, EventTime):
            raise ValueError(f"{describe} needs event time: give the source one, e.g. "
                             f"flow.source(src, time=ps.EventTime('ts', unit='ms'))")
        passes_rows = getattr(make(), "PASSES_ROWS", False)  # (validates the arguments now, at build time)
        node = self._flow._add("op", [(self._node, self._port)], make=make, describe=describe, keys=self._keys,
                               time=self._time, passes_rows=passes_rows)
        return OperatorStream(self._flow, node, "out", self._time if time_out else None, self._keys)

    def dedupe(self, horizon="1h") -> "OperatorStream":
        """Drops re-sent readings: rows whose (key, event time) was already seen within
        `horizon` go to `.side("duplicates")` (see pystream.meters.Dedupe)."""
        from .meters import Dedupe

        return self._meter_op(f"dedupe({horizon})", functools.partial(Dedupe, self._keys, self._time, horizon))

    def register_deltas(self, column: str, out: str = "usage", modulus=None, max_delta=None) -> "OperatorStream":
        """Cumulative register reads -> usage between consecutive readings, in event-time order,
        with rollover at `modulus`; resets and implausible jumps go to `.side("anomalies")`
        (see pystream.meters.RegisterDeltas)."""
        from .meters import RegisterDeltas

        return self._meter_op(f"register_deltas({column})",
                              functools.partial(RegisterDeltas, self._keys, self._time, column, out, modulus,
                                                max_delta))

    def gaps(self, every, tolerance="0s") -> "OperatorStream":
        """Missing readings per key: one record per gap longer than `every` + `tolerance`
        (see pystream.meters.Gaps)."""
        from .meters import Gaps

        return self._meter_op(f"gaps({every})", functools.partial(Gaps, self._keys, self._time, every, tolerance),
                              time_out=False)


class OperatorStream(KeyedStream):
    """The main output of a keyed operator; its side outputs by name."""

    def side(self, port: str) -> Stream:
        """A side output: "late", "invalid", "duplicates" (dedupe), "anomalies" (register_deltas)."""
        ports = self._node.params["make"]().ports
        if port == "out" or port not in ports:
            raise ValueError(f"{self._node.params['describe']} has side outputs {[p for p in ports if p != 'out']}, "
                             f"not {port!r}")
        return Stream(self._flow, self._node, port, self._node.params["time"])

    def late(self) -> Stream:
        return self.side("late")

    def invalid(self) -> Stream:
        return self.side("invalid")


class WindowedStream:
    def __init__(self, stream: Stream, window: Window, allowed_lateness: int, early_every: int | None = None):
        self._stream, self._window, self._lateness, self._early = stream, window, allowed_lateness, early_every

    def aggregate(self, **aggs: Agg) -> "WindowResultStream":
        """Named aggregations, e.g. aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count())."""
        s = self._stream
        # Building the operator validates names and types now, not at run time.
        make_window_operator(self._window, aggs, s._time, s._keys, self._lateness, self._early)
        node = s._flow._add("window", [(s._node, s._port)], window=self._window, aggs=dict(aggs), time=s._time,
                            keys=s._keys, allowed_lateness=self._lateness, early_every=self._early)
        return WindowResultStream(s._flow, node, "out", None, ())


class ResourceLimitError(RuntimeError):
    """An operator went past a limit set with `.limit(...)`; the run stops before it can take
    the machine's memory. Checkpointed state stays as it was at the last epoch, so the run can
    resume with a higher limit."""


LIMITS = ("max_keys", "max_state_bytes", "max_open_windows")


class WindowResultStream(Stream):
    """Window results; `.late()` and `.invalid()` are this operator's side outputs."""

    def limit(self, max_keys: int | None = None, max_state_bytes: int | None = None,
              max_open_windows: int | None = None) -> "WindowResultStream":
        """Bounds this operator's state: after each batch, more distinct keys, more state bytes
        or more open (not yet fired) windows than allowed stop the run with a ResourceLimitError
        naming the operator, the limit and the value (the documented policy: fail early and
        clearly rather than run out of memory)."""
        limits = {"max_keys": max_keys, "max_state_bytes": max_state_bytes, "max_open_windows": max_open_windows}
        for k, v in limits.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        self._node.params["limits"] = {k: v for k, v in limits.items() if v is not None}
        return self

    def queryable(self, name: str, history_rows: int = 1_000_000) -> "WindowResultStream":
        """Exposes this window operator's live state as `name`: flow.query(name, key=...),
        flow.state(name) and HTTP (flow.run(serve=...)). Keeps the last `history_rows` fired
        rows for "last results" queries. A queryable result needs no sink."""
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
            raise ValueError(f"queryable name must be a non-empty string of letters, digits, '_', '-' or '.', got {name!r}")
        taken = [n.params["queryable"][0] for n in self._flow._nodes if n.params.get("queryable")]
        if name in taken:
            raise ValueError(f"queryable name {name!r} is already used in this flow")
        if history_rows < 1:
            raise ValueError(f"history_rows must be >= 1, got {history_rows}")
        self._node.params["queryable"] = (name, int(history_rows))
        return self

    def late(self) -> Stream:
        """Input rows that arrived after every window they belong to was purged."""
        return Stream(self._flow, self._node, "late", self._node.params["time"])

    def invalid(self) -> Stream:
        """Input rows refused by the max_future guard, with a `reason` column."""
        return Stream(self._flow, self._node, "invalid", self._node.params["time"])


GUARANTEES = ("at_most_once", "at_least_once", "exactly_once")


class RunResult(dict):
    """Sink name -> what the sink returned (a Batch for Collect); `.metrics` holds per-operator
    counters, `.checkpoints` the epochs written and `.resumed_from` the epoch restored (or None)."""

    metrics: dict
    checkpoints: list
    resumed_from: int | None


BATCH_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LiveState:
    """What a running (or finished) flow shows to queries and metrics. The runtime holds
    `lock` while a batch moves through the graph; readers take it too, so they see the state
    between batches."""

    def __init__(self):
        self.lock = threading.RLock()
        self._count = threading.Lock()
        self._tickets = [0, 0]  # readers announced, readers that got `lock`
        self.states: dict = {}  # queryable name -> QueryableState
        self.ops: dict = {}  # node id -> operator
        self.metrics: dict = {}  # node id -> counters
        self.running = False
        self.started_at: float | None = None
        self.batches = 0
        self.batch_buckets = [0] * (len(BATCH_SECONDS_BUCKETS) + 1)
        self.batch_seconds = 0.0
        self.checkpoints = 0
        self.checkpoint_seconds = 0.0
        self.checkpoint_bytes = 0

    def reset(self) -> None:
        """A new run: everything but the lock (readers may be waiting on it)."""
        lock, tickets = self.lock, self._tickets
        self.__init__()
        self.lock, self._tickets = lock, tickets

    def begin(self, states: dict, ops: dict | None = None, metrics: dict | None = None) -> None:
        """A runtime starts a run: fresh counters, its queryable states (and, locally, its
        operators and their counters for metrics), running from now."""
        with self.lock:
            self.reset()
            self.ops, self.metrics = ops or {}, metrics or {}
            self.states = states
            self.running, self.started_at = True, _wall.time()

    @contextlib.contextmanager
    def reading(self):
        """Holds the lock for a reader. Readers announce themselves first, and the runtime lets
        announced readers in between two batches (`let_readers_in`): Python's lock is not fair,
        and a runtime re-taking it at once for the next batch would starve queries."""
        with self._count:
            self._tickets[0] += 1
        try:
            self.lock.acquire()
        finally:
            with self._count:
                self._tickets[1] += 1
        try:
            yield
        finally:
            self.lock.release()

    def let_readers_in(self) -> None:
        """Called by the runtime with the lock released: waits until the readers announced so far
        have taken the lock (each holds it for one query; later arrivals wait for the next gap)."""
        with self._count:
            target = self._tickets[0]
        while self._tickets[1] < target:
            _wall.sleep(0)

    def observe_batch(self, seconds: float) -> None:
        self.batches += 1
        self.batch_seconds += seconds
        i = 0
        while i < len(BATCH_SECONDS_BUCKETS) and seconds > BATCH_SECONDS_BUCKETS[i]:
            i += 1
        self.batch_buckets[i] += 1

    def snapshot(self) -> dict:
        """Counters and gauges, consistent at a batch boundary (for /metrics and the dashboard)."""
        with self.reading():
            ops = []
            for nid, m in self.metrics.items():
                op = self.ops[nid]
                stats = op.stats() if hasattr(op, "stats") else {"watermark": getattr(op, "watermark", None)}
                ops.append({"id": nid, **m, **stats, "max_event_time": getattr(op, "max_event_time", None)})
            return {
                "running": self.running, "uptime_s": 0.0 if self.started_at is None else _wall.time() - self.started_at,
                "now_ns": _wall.time_ns(), "operators": ops, "queryable": sorted(self.states),
                "batches": self.batches, "batch_buckets": list(zip(BATCH_SECONDS_BUCKETS + ("+Inf",), self.batch_buckets)),
                "batch_seconds": self.batch_seconds, "checkpoints": self.checkpoints,
                "checkpoint_seconds": self.checkpoint_seconds, "checkpoint_bytes": self.checkpoint_bytes,
            }


class LocalRuntime:
    """Single-process runtime: pulls batches from the sources in turn (one round = one batch
    from every live source) and pushes them through the graph depth-first. Checkpoints are
    taken at round boundaries, so a restored run interleaves its sources exactly as an
    uninterrupted one would."""

    def __init__(self, flow: Flow):
        self.flow = flow

    def _check_guarantee(self, guarantee, checkpoints, sources, sinks):
        if guarantee is None:
            return ("at_least_once" if checkpoints is not None else None)
        if guarantee not in GUARANTEES:
            raise ValueError(f"guarantee must be one of {GUARANTEES}, got {guarantee!r}")
        if checkpoints is None:
            raise ValueError(f"guarantee={guarantee!r} needs checkpoints: flow.run(checkpoints='state/', "
                             f"guarantee={guarantee!r})")
        if guarantee in ("exactly_once", "at_least_once"):
            for n in sources:
                src = n.params["source"]
                if not src.replayable:
                    raise ValueError(f"{guarantee} needs replayable sources, but source {src.name!r} "
                                     f"({type(src).__name__}) cannot replay from a position")
        if guarantee == "exactly_once":
            for n in sinks:
                sink = n.params["sink"]
                if not sink.transactional:
                    raise ValueError(f"exactly_once needs transactional sinks, but sink {sink.name!r} "
                                     f"({type(sink).__name__}) cannot take part in a two-phase commit; use "
                                     f"ps.sinks.Files or choose guarantee='at_least_once'")
        return guarantee

    def run(self, checkpoints=None, resume=False, guarantee=None, checkpoint_every=64, keep=3) -> RunResult:
        import time as _time

        from . import _faults
        from . import clock as _clock
        from .checkpoint import CheckpointStore

        nodes = self.flow._nodes
        children: dict[int, list[tuple[_Node, str]]] = {n.id: [] for n in nodes}
        for n in nodes:
            for parent, port in n.inputs:
                children[parent.id].append((n, port))
        sinks = [n for n in nodes if n.kind == "sink"]
        sources = [n for n in nodes if n.kind == "source"]
        names = [n.params["sink"].name for n in sinks]
        dup = {x for x in names if names.count(x) > 1}
        if dup:
            raise ValueError(f"two sinks share the name {sorted(dup)[0]!r}; sink names must be unique")
        _check_graph(nodes, children)
        guarantee = self._check_guarantee(guarantee, checkpoints, sources, sinks)
        if resume and checkpoints is None:
            raise ValueError("resume=True needs checkpoints='DIR'")
        every_batches, every_seconds = _parse_every(checkpoint_every)

        ops = {n.id: window_operator(n.params) if n.kind == "window" else node_operator(n)
               for n in nodes if n.kind in OPERATOR_KINDS}

        def op_name(n):
            what = {"window": lambda: f"{n.params['window']!r} ", "op": lambda: f"{n.params['describe']} ",
                    "process": lambda: f"process({getattr(n.params['fn'], '__name__', 'fn')}) "}[n.kind]()
            return what + (f"by {', '.join(n.params['keys'])}" if n.params["keys"] else "over all keys")

        metrics = {n.id: {"name": op_name(n), "events_in": 0, "rows_out": 0, "late": 0, "invalid": 0}
                   for n in nodes if n.kind in ("window", "process", "op")}
        emitted: dict[tuple[int, str], bool] = {}
        live = self.flow.live
        from .query import QueryableState

        live.begin({n.params["queryable"][0]: QueryableState(n.params["queryable"][0], ops[n.id], live,
                                                             n.params["queryable"][1])
                    for n in nodes if n.kind == "window" and n.params.get("queryable")}, ops, metrics)
        last_input: dict[int, Batch] = {}
        for s in sinks:
            s.params["sink"].open()

        store = CheckpointStore(checkpoints, keep=keep) if checkpoints is not None else None
        node_of = {n.id: n for n in nodes}
        part_ids_restored = None
        fingerprint = self.flow.fingerprint()
        positions: dict[int, object] = {n.id: None for n in sources}
        epoch = 0
        resumed_from = None
        written: list[int] = []
        finished = False
        if store is not None and resume:
            latest = store.latest(fingerprint)
            if latest is not None:
                resumed_from, payload = latest
                if payload["guarantee"] != guarantee:
                    raise ValueError(f"checkpoint epoch {resumed_from} was taken with guarantee "
                                     f"{payload['guarantee']!r}, this run asks for {guarantee!r}")
                positions.update(payload["positions"])
                for nid, state in payload["operators"].items():
                    ops[nid].restore(state)
                for n in sinks:
                    n.params["sink"].recover(payload["sinks"].get(n.id), resumed_from)
                emitted.update(payload.get("emitted", {}))
                part_ids_restored = payload.get("part_ids")
                finished = payload["finished"]
                epoch = resumed_from + 1
        elif store is not None:
            for n in sinks:
                n.params["sink"].recover(None, -1)

        clock = _clock.current()
        # Partitions: (source node, the source's partition label) -> an int id, in first-seen order.
        part_ids: dict = dict(part_ids_restored) if resume and part_ids_restored else {}
        last_seen: dict[int, dict[int, int]] = {nid: {} for nid in ops}  # op -> partition -> wall ns
        idle: dict[int, set] = {nid: set() for nid in ops}
        last_data: dict[int, int] = {}

        def passes(node: _Node) -> bool:
            """Whether the operator passes its input rows on as they come (dedupe), rather than
            making rows of its own as its watermark moves (register_deltas, gaps, process())."""
            return bool(node.params.get("passes_rows"))

        def out_part(node: _Node, part: int | None = None) -> int:
            """The partition an operator's output rows (any port) come on to the operators below
            it. Rows passed on as they came: the partition they came on, as the operator's own
            (so below it each input partition keeps its own watermark, as without the operator).
            Rows it made: one partition of its own, idle between batches, so that their times
            never move those operators' watermark past the operator's (`wm_part`)."""
            return part_ids.setdefault(("out", node.id, part) if passes(node) else ("out", node.id), len(part_ids))

        def wm_part(node: _Node) -> int:
            """The partition that carries the watermark of an operator that makes rows of its
            own to the operators below it, raised to it after each call (pass_watermark): what
            its output has got to is its watermark, whatever the times of its rows (released
            in time order as it passes them), as Flink passes watermarks on."""
            return part_ids.setdefault(("wm", node.id), len(part_ids))

        def upstream_parts(node: _Node) -> list[int]:
            """The partitions that reach `node`: the partitions of the sources, and of the
            operators above it (those of their inputs, or their watermark), up through stateless
            steps."""
            seen, todo, found = set(), [node], []
            while todo:
                n = todo.pop()
                for parent, _ in n.inputs:
                    if parent.id not in seen:
                        seen.add(parent.id)
                        (todo if parent.kind not in ("source", *OPERATOR_KINDS) else found).append(parent)
            parts = []
            for n in sorted(found, key=lambda n: n.id):
                if n.kind == "source":
                    parts += [part_ids.setdefault((n.id, label), len(part_ids))
                              for label in n.params["source"].partitions()]
                elif passes(n):
                    parts += [out_part(n, p) for p in upstream_parts(n)]
                else:
                    parts.append(wm_part(n))
            return parts

        if resumed_from is None:
            for nid, op in ops.items():
                op.declare_partitions(upstream_parts(node_of[nid]))
        # Operators that make rows of their own: their rows' partition, and who takes their watermark.
        made = {nid: out_part(node_of[nid]) for nid in ops
                if node_of[nid].kind != "window" and not passes(node_of[nid])}
        data_parts = set(made.values())
        below = {nid: operators_below(node_of[nid], children) for nid in made}
        below = {nid: found for nid, found in below.items() if found}

        def push(node: _Node, port: str, batch: Batch, part: int = 0):
            emitted[(node.id, port)] = True
            for child, p in children[node.id]:
                if p == port:
                    deliver(child, batch, part)

        def push_fired(node: _Node, res, part: int | None = None):
            """An operator's output (one batch, port "out", or a dict port -> batch) on the
            partition its rows are below it (out_part: `part` is the one it took them on); then
            its watermark to the operators below it."""
            if node.kind == "window":
                if res is not None and len(res):
                    metrics[node.id]["rows_out"] += len(res)
                    push(node, "out", res)
                return
            out = made.get(node.id)
            if out is None and res:  # rows passed on as they came: on their own partition (not at a tick)
                out = out_part(node, part)
            if isinstance(res, dict):
                for port, b in res.items():
                    if port in ("late", "invalid"):
                        metrics[node.id][port] += len(b)
                    elif port == "out":
                        metrics[node.id]["rows_out"] += len(b)
                    push(node, port, b, out)
            elif res is not None and len(res):
                metrics[node.id]["rows_out"] += len(res)
                push(node, "out", res, out)
            if node.id in below:
                pass_watermark(node)

        def pass_watermark(node: _Node) -> None:
            wm = ops[node.id].watermark
            if wm is None:
                return
            for x in below[node.id]:
                push_fired(x, ops[x.id].raise_partition(wm_part(node), passed_watermark(wm, x)))

        def check_limits(node: _Node) -> None:
            stats = ops[node.id].stats()
            have = {"max_keys": stats["num_keys"], "max_state_bytes": stats["state_bytes"],
                    "max_open_windows": stats["open_windows"]}
            for k, limit in node.params["limits"].items():
                if have[k] > limit:
                    raise ResourceLimitError(
                        f"{metrics[node.id]['name']}: {k[4:].replace('_', ' ')} {have[k]:,} > {k}={limit:,}; raise the "
                        f"limit with .limit({k}=...), key by fewer distinct values or shorten allowed_lateness")

        def note_input(node: _Node, batch: Batch, part: int) -> None:
            """Wall-clock bookkeeping of an operator's inputs, for idleness and quiet streams."""
            now = clock.now_ns()
            last_seen[node.id][part] = now
            idle[node.id].discard(part)
            if len(batch):
                last_data[node.id] = now
            metrics[node.id]["events_in"] += len(batch)

        def deliver(node: _Node, batch: Batch, part: int):
            kind = node.kind
            if kind == "sink":
                node.params["sink"].write(batch)
            elif kind == "map":
                push(node, "out", Batch.from_any(node.params["fn"](batch)), part)
            elif kind == "filter":
                push(node, "out", batch.filter(node.params["fn"](batch)), part)
            elif kind == "flat_map":
                produced = node.params["fn"](batch)
                if produced is None:
                    return
                if isinstance(produced, (Batch, dict)) or type(produced).__module__.startswith(("pandas", "pyarrow")):
                    produced = [produced]
                for item in produced:
                    push(node, "out", Batch.from_any(item), part)
            elif kind == "union":
                push(node, "out", batch, part)
            elif kind in ("process", "op"):
                note_input(node, batch, part)
                push_fired(node, ops[node.id].process(batch, part), part)
                if part in data_parts:  # rows of an operator above: its watermark decides (wm_part)
                    push_fired(node, ops[node.id].set_partition_idle(part, True))
            elif kind == "window":
                last_input[node.id] = batch
                note_input(node, batch, part)
                res, late, invalid = ops[node.id].process(batch, part)
                if node.params.get("limits"):
                    check_limits(node)
                m = metrics[node.id]
                m["rows_out"] += len(res)
                if len(res):
                    push(node, "out", res)
                if late is not None:
                    m["late"] += len(late)
                    push(node, "late", late)
                if invalid is not None:
                    m["invalid"] += len(invalid)
                    push(node, "invalid", invalid)
                if part in data_parts:  # rows of an operator above: its watermark decides (wm_part)
                    push_fired(node, ops[node.id].set_partition_idle(part, True))
            else:  # pragma: no cover - node kinds are fixed above
                raise AssertionError(kind)

        def idle_checks() -> None:
            """Wall-clock driven progress: idle partitions, quiet streams, processing time."""
            now = clock.now_ns()
            for nid, op in ops.items():
                node = node_of[nid]
                spec = node.params["time"]
                if hasattr(op, "tick"):  # processing-time timers and triggers
                    push_fired(node, op.tick())
                if getattr(spec, "follows_clock", False):
                    push_fired(node, op.advance_watermark(now - 1))
                    continue
                if spec.idleness:
                    for part, seen in last_seen[nid].items():
                        if part not in idle[nid] and now - seen > spec.idleness:
                            idle[nid].add(part)
                            push_fired(node, op.set_partition_idle(part, True))
                if spec.close_idle_after and nid in last_data and now - last_data[nid] > spec.close_idle_after:
                    top = op.max_event_time
                    if top is not None:
                        push_fired(node, op.advance_watermark(top + (now - last_data[nid]) - spec.max_out_of_orderness - 1))

        def checkpoint(epoch: int, done: bool) -> None:
            t0 = _wall.perf_counter()
            write_checkpoint(epoch, done)
            live.checkpoints += 1
            live.checkpoint_seconds = _wall.perf_counter() - t0

        def write_checkpoint(epoch: int, done: bool) -> None:
            sink_objs = {n.id: n.params["sink"] for n in sinks}
            payload = {
                "positions": dict(positions),
                "operators": {nid: op.snapshot() for nid, op in ops.items()},
                "operator_info": {f"{node_of[nid].kind}{nid}": {
                    "watermark": op.watermark,
                    "num_keys": op.engine.num_keys if getattr(op, "engine", None) is not None else None}
                    for nid, op in ops.items()},
                "emitted": dict(emitted),
                "part_ids": dict(part_ids),
                "guarantee": guarantee,
                "finished": done,
                "sinks": {},
            }
            if guarantee == "exactly_once":
                payload["sinks"] = {nid: s.pre_commit(epoch) for nid, s in sink_objs.items()}
                _faults.maybe_crash("precommit")
                live.checkpoint_bytes = store.write(epoch, payload, fingerprint)
                _faults.maybe_crash("commit")
                for nid, s in sink_objs.items():
                    s.commit(payload["sinks"][nid])
            elif guarantee == "at_least_once":
                for s in sink_objs.values():
                    s.flush_epoch(epoch)
                live.checkpoint_bytes = store.write(epoch, payload, fingerprint)
            else:  # at_most_once: positions are durable before the output goes out
                live.checkpoint_bytes = store.write(epoch, payload, fingerprint)
                for s in sink_objs.values():
                    s.flush_epoch(epoch)
            written.append(epoch)

        if not finished:
            iters = [(n, iter(n.params["source"].read(positions[n.id]))) for n in sources]
            rounds, last_ckpt = 0, _time.monotonic()
            while iters:
                alive = []
                for node, it in iters:
                    item = next(it, None)
                    if item is None:
                        continue
                    alive.append((node, it))
                    batch, positions[node.id] = item[0], item[1]
                    if batch is None:  # the source has nothing right now
                        with live.lock:
                            idle_checks()
                        live.let_readers_in()
                        continue
                    label = item[2] if len(item) > 2 else None
                    part = part_ids.setdefault((node.id, label), len(part_ids))
                    t0 = _wall.perf_counter()
                    with live.lock:  # queries see the state between batches, never inside one
                        push(node, "out", batch, part)
                    live.observe_batch(_wall.perf_counter() - t0)
                    live.let_readers_in()
                    _faults.maybe_crash("batch")
                iters = alive
                with live.lock:
                    idle_checks()
                live.let_readers_in()
                rounds += 1
                if store is not None and iters and (
                        (every_batches and rounds % every_batches == 0)
                        or (every_seconds and _time.monotonic() - last_ckpt >= every_seconds)):
                    checkpoint(epoch, False)
                    epoch += 1
                    last_ckpt = _time.monotonic()

            # End of input: fire every window, in graph order so downstream windows see upstream output.
            with live.lock:
                for n in nodes:
                    if n.kind in ("process", "op"):
                        push_fired(n, ops[n.id].finish())
                    if n.kind != "window":
                        continue
                    res = ops[n.id].finish()
                    metrics[n.id]["rows_out"] += len(res)
                    push(n, "out", res)
                    # Side outputs that never fired still tell their sinks their columns.
                    if n.id in last_input:
                        empty = last_input[n.id].take(np.empty(0, dtype=np.int64))
                        if not emitted.get((n.id, "late")):
                            push(n, "late", empty)
                        if not emitted.get((n.id, "invalid")):
                            push(n, "invalid", empty.with_columns(reason=np.empty(0, dtype=object)))
            if store is not None:
                checkpoint(epoch, True)

        live.running = False
        # The nested functions above call each other through closure cells: a reference cycle
        # that would keep every operator's native state alive until the cyclic GC runs.
        push = deliver = push_fired = idle_checks = checkpoint = write_checkpoint = note_input = None  # noqa: F811, F841
        check_limits = upstream_parts = out_part = wm_part = passes = pass_watermark = None  # noqa: F811, F841
        result = RunResult()
        for s in sinks:
            result[s.params["sink"].name] = s.params["sink"].close()
        result.metrics = {f"{node_of[nid].kind}{nid}": m for nid, m in metrics.items()}
        result.checkpoints = written
        result.resumed_from = resumed_from
        return result


_DESCRIBE = {"map": "map()", "filter": "filter()", "flat_map": "flat_map()", "union": "union()",
             "window": "window().aggregate()", "process": "process()", "op": "a keyed operator"}


def _check_graph(nodes, children) -> None:
    """Refuses graphs that cannot do useful work. Cycles cannot be built (a stream only takes
    earlier streams as input); what can go wrong is work whose output reaches no sink."""
    if not any(n.kind == "sink" or n.params.get("queryable") for n in nodes):
        raise ValueError("the flow has no sink: add one, e.g. stream.sink(ps.sinks.Collect('out'))")
    reaches: dict[int, bool] = {}
    for n in reversed(nodes):  # children always come after their parents
        reaches[n.id] = (n.kind == "sink" or bool(n.params.get("queryable"))
                         or any(reaches[c.id] for c, _ in children[n.id]))
    for n in nodes:
        if not reaches[n.id]:
            what = f"source {n.params['source'].name!r}" if n.kind == "source" else _DESCRIBE.get(n.kind, n.kind)
            raise ValueError(f"dangling stream: the output of {what} (node {n.id}) reaches no sink; add "
                             f".sink(...) to it or remove it")


def _parse_every(every):
    if isinstance(every, bool) or every is None:
        raise ValueError(f"checkpoint_every must be a number of batches or a duration, got {every!r}")
    if isinstance(every, int):
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 batch, got {every}")
        return every, None
    ns = parse_duration(every, "checkpoint_every")
    if ns <= 0:
        raise ValueError(f"checkpoint_every must be > 0, got {every!r}")
    return None, ns / 1e9
