"""Runtimes that run a flow on more than one process: `ps.runtimes.Ray(parallelism=N)`.

    flow.run(runtime=ps.runtimes.Ray(parallelism=4), checkpoints="state/", guarantee="exactly_once")

Layout (as in Flink): each source runs in a source actor, which applies the stateless steps
after it (map, filter, flat_map, union) and splits every batch by *key group* — a stable hash
of the window's key columns modulo `key_groups` (unkeyed windows: one group) — into one part
per window actor. Window actor j owns the contiguous range of key groups
[j*G/N, (j+1)*G/N) with one native window operator for the whole range (one call per batch).
A checkpoint keeps each operator's snapshot with the key-group range it covers, so it restores
at any parallelism (rescaling): a new actor takes the snapshots that overlap its range and
drops the keys of other actors' groups from them (every keyed window kind; an unkeyed window's
state, one key in group 0, goes to group 0's owner alone). Batches move as NumPy buffers
that receivers read without a copy: through shared-memory segments that each reading actor
reuses, where every window actor is on one machine (pystream/_shm.py: Ray's object store gives
every object fresh pages, and faulting them in cost more than the copy), else through Ray's
object store; the driver only routes small layouts and refs.

Rounds: the driver takes one read from every source (whole batches up to `round_rows` rows;
each read is one object holding the actors' parts, which each window actor maps without a
copy; an actor that reads a source keeps its own part) and hands it to all window actors;
sources keep `ahead` reads queued and window actors up to `ahead` rounds, so nobody waits for
the driver, and a checkpoint first waits for every round in flight (an aligned barrier). An
actor that reads a source takes each next read, and puts it into the object store, on a
thread of its own while its rounds run (routing and the window kernels release the GIL).

Watermarks move per row, as in one local operator. A reading actor gives every row on its
way into an event-time window its *floor*: the largest event time of the rows of its
partition before it that the window accepts, whichever actor they go to
(`_core.watermark_floors`, carried from read to read and restored from a checkpoint). Before
each row an actor's engine moves its watermark to what the floor allows, so it judges that
row late, on time or invalid exactly as the local runtime's one operator does, and fires
what that operator has fired by then (tests/test_floors.py with Hypothesis, per engine;
tests/test_ray.py, a run against the local one for every window kind, and across a
restore). A read holds one partition's rows; with it the reader sends how far the source's
other partitions have got (SourceWorker.marks: the largest accepted time of each, whichever
actor took its rows), and every actor raises its operators' partitions to those before the
read's rows (raise_partition), so a partition whose rows all went to other actors holds the
watermark back, or lets it go, at each row as in the local runtime's one operator; the
floors are judged against what those partitions allow (a row more than max_future ahead of
that watermark counts for nothing), and a global window's event-time trigger starts its
schedule where that watermark began (first_watermark). Tested with Hypothesis per engine
(partitions lagging each other, keys split among engines) and on Ray against the local
runtime, with a restore. Besides, each actor reports per window and channel the largest
event time its engines hold; the driver takes the max over actors, and each round advances
every actor to the min over live channels. Where several sources feed one window (a union),
the local runtime takes one batch of each source in turn; on Ray, reads are then aligned
(Plan.aligned): a read holds the same number of batches of every source (Plan.round_items),
whatever its partitions, and each actor takes its part of each batch in that turn, then
raises that batch's partition to how far it has got ("ends": the largest time the window
accepts of it, whichever actor took its rows), so another source's next batch finds every
partition where the local runtime's one operator has it. The driver tells from the reads'
"born" marks where such a window's watermark began (_ray_driver.Driver._unions, first_watermark).
Tested on Ray against the local runtime for tumbling, session, calendar, global and count
windows over three sources of different batch sizes and lags, one of them holding only one
actor's keys, and across a restore (tests/test_ray.py). One thing a reader cannot know is how
far the union's other sources have got: it judges max_future against its own source's
partitions, where the local operator judges it against the union's watermark. The driver
sees from the marks where the two may differ (a source more than max_future past the union's
watermark, or a row refused before every source has sent) and warns (metrics["ray"]
["max_future_differs"]); tests/test_floors.py checks with Hypothesis that, unless it warns,
every row is judged as by one engine.

Operators before the windows (process(), dedupe, register_deltas, gaps) over one source's
rows run in that source's reader (Plan.ops), on its own batches in order, as the local runtime
runs them. A dedupe's rows keep their partition (and floors); the rows other operators make go
to the windows below on a channel of their own, followed by the operator's watermark as a
message to every actor, which raises the channel that carries it (OpOut, OpWm: as flow.py's
out_part and wm_part). Sinks no window feeds get their rows from the reader through a window
actor's rounds (Plan.reader_sinks), so they commit with the epoch of the rows that made them.

Checkpoints are taken at round boundaries: source positions, every operator's snapshot with
its key-group range, each reader's operators (as of a snapshot at or before the checkpoint's
read, with the batches to replay from it: SourceWorker.ops_state), and the sinks'
pre-committed epoch (exactly-once) in one checkpoint file. When an
actor dies, Ray restarts it and the driver rolls every actor back to the last checkpoint
and replays the sources from its positions. Sinks run in the window actors (one copy each;
`Files` names its parts per actor); `Collect` output travels to the driver at each commit.

Queryable state: each actor's operators keep their share of the history of fired rows, and
answer queries between rounds, on a thread of their own (WindowWorker.query); the driver's
RayQueryableState asks the actor that holds a key, or every actor after the same round for
all keys, and combines their answers as the local state combines one (pystream/query.py).
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import dataclasses
import functools
import os
import pickle
import threading
import time
import zlib

import numpy as np

try:
    import resource
except ImportError:  # not on Windows: no fault counts there
    resource = None

from . import _core, _shm
from .batch import Batch
from .flow import node_operator, operators_below, passed_watermark
from .operators import window_operator
from .query import History, NotStarted, QueryableState, answer
from .sinks import Collect, Files
from .timing import EventTime, IngestionTime
from .windows import CountWindow

_U64 = np.uint64

#: The column of routed rows that holds their watermark floors (SourceWorker._floors); the
#: window actors take it out before the rows reach an operator.
FLOOR = "\x00floor"

#: Directories the Ray runtime's actors import from too (after their own sys.path): where a
#: flow's code lives when Ray cannot tell (`pystream run app.py` adds the app's directory, as
#: Python puts a script's first on its path; Ray itself passes on the directory of the
#: script a driver runs).
CODE_PATHS: list[str] = []


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 arrays (the native key index uses the same one)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _key_words(batch: Batch, keys) -> list:
    """Each key column as uint64 words that are the same in every process and run: integers
    and times by value, floats by their bits (0.0 for -0.0), other values by the CRC-32 of
    their repr, computed once per distinct value in the batch."""
    words = []
    for c in keys:
        arr = batch[c]
        if arr.dtype.kind in "iub":
            v = arr.astype(np.int64, copy=False).view(np.uint64)
        elif arr.dtype.kind in "mM":
            v = arr.view(np.int64).view(np.uint64)
        elif arr.dtype.kind == "f":
            v = np.where(arr == 0, 0.0, arr).astype(np.float64).view(np.uint64)
        else:
            from ._intern import ObjectInterner

            interner = ObjectInterner(c)
            codes = interner.intern(arr)
            crc = np.array([zlib.crc32(repr(x).encode()) for x in interner.values()], dtype=np.uint64)
            v = crc[codes]
        words.append(v)
    return words


def key_groups(batch: Batch, keys, n_groups: int) -> np.ndarray:
    """The key group of every row: h = mix(h * C + word) over the key columns' words
    (`_key_words`), its high 32 bits scaled to [0, n_groups). Unkeyed: all rows in group 0. (The
    source actors compute the same groups natively: _core.route_rows.)"""
    n = len(batch)
    if not keys:
        return np.zeros(n, dtype=np.int64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for v in _key_words(batch, keys):
            h = _mix(h * _U64(0x9E3779B97F4A7C15) + v)
    # The high half: the native key index places a key by the low bits of the same mix, so
    # groups taken from the low bits would leave each actor's hash table a fraction of its
    # slots (one actor's keys would all share their low bits).
    return (((h >> _U64(32)) * _U64(n_groups)) >> _U64(32)).astype(np.int64)  # scaled to [0, n_groups)


def native_groups(batch: Batch, keys, n_groups: int) -> np.ndarray:
    """key_groups as uint16, computed natively (the routing kernel at one owner: row order)."""
    if not keys:
        return np.zeros(len(batch), dtype=np.uint16)
    return _core.route_rows(_key_words(batch, keys), n_groups, 1, with_order=False)[1]


def owner(group: int, parallelism: int, n_groups: int) -> int:
    """The window actor that owns a key group (contiguous ranges)."""
    return group * parallelism // n_groups


def key_owner(key, keys, parallelism: int, n_groups: int) -> int | None:
    """The window actor that holds `key` (a value, or a tuple of one per key column) if the
    source actors routed it as the value's NumPy type: integers, floats and booleans by value,
    strings and other objects by repr (key_groups). None where it has no such type. A column
    of another type (times in another unit, integers asked for as floats) may put the key
    elsewhere: a caller that does not find it at the owner asks the other actors."""
    values = key if len(keys) > 1 else (key,)
    if not isinstance(values, tuple) or len(values) != len(keys):
        return None
    cols = {}
    for c, v in zip(keys, values):
        try:
            a = np.asarray([v])
        except (TypeError, ValueError):
            return None
        if a.shape != (1,):  # not one value (a sequence)
            return None
        cols[c] = a if a.dtype.kind in "iubfmM" else np.array([v], dtype=object)
    return owner(int(key_groups(Batch(cols), keys, n_groups)[0]), parallelism, n_groups)


@dataclasses.dataclass(frozen=True)
class OpOut:
    """The partition label of the rows an operator makes (register_deltas, gaps, process()):
    to the windows and operators below it, a partition of its own, idle between batches, so
    their times never move those operators' watermark past the operator's (as in the local
    runtime: flow.py's out_part). A dedupe's rows keep their input's label instead."""

    op: int


@dataclasses.dataclass(frozen=True)
class OpWm:
    """The partition label that carries such an operator's watermark to the windows and
    operators below it: raised to it after each of its calls (SourceWorker._pass_watermark;
    flow.py's wm_part). A label of its source's channels beside the source's own partitions."""

    op: int


class Plan:
    """What the Ray runtime needs to know of a flow's graph, checked up front."""

    def __init__(self, flow):
        nodes = flow._nodes
        self.nodes = {n.id: n for n in nodes}
        self.children = {n.id: [] for n in nodes}
        for n in nodes:
            for parent, port in n.inputs:
                self.children[parent.id].append((n, port))
        self.sources = [n for n in nodes if n.kind == "source"]
        self.windows = [n for n in nodes if n.kind == "window"]
        self.sinks = [n for n in nodes if n.kind == "sink"]
        window_of: dict[int, set] = {}
        # By node: the sources whose rows reach it, and the nearest operator (dedupe(),
        # register_deltas(), gaps(), process()) above it, if any. Such operators run in their
        # source's reader, in the order the local runtime runs them (SourceWorker._push).
        sources_above: dict[int, set] = {}
        op_above: dict[int, set] = {}
        wm_above: dict[int, set] = {}
        #: By window and operator: the nearest operator above it that makes rows of its own
        #: (None: none; a dedupe passes its input's rows, partitions and all). Such an
        #: operator's watermark is a partition of its own to it (OpWm), as in the local runtime.
        self.feed: dict[int, int | None] = {}
        #: The operators, in graph order (parents first), by the source whose reader runs them.
        self.ops: dict[int, list] = {}
        for n in nodes:  # parents come before children
            above = set().union(*(window_of[p.id] for p, _ in n.inputs)) if n.inputs else set()
            srcs = {n.id} if n.kind == "source" else set().union(*(sources_above[p.id] for p, _ in n.inputs))
            ops_ = set().union(*(op_above[p.id] for p, _ in n.inputs)) if n.inputs else {None}
            wms = set().union(*(wm_above[p.id] for p, _ in n.inputs)) if n.inputs else {None}
            if n.kind in ("process", "op"):
                if len(srcs) != 1:  # (never after a window: window results have no event time)
                    raise ValueError(f"{n.kind}() node {n.id} takes the rows of several sources: the Ray runtime runs "
                                     f"such an operator in its one source's reader; run this flow locally")
                spec = n.params["time"]
                if getattr(spec, "follows_clock", False) or spec.idleness or spec.close_idle_after:
                    raise ValueError(f"{n.kind}() node {n.id}: processing time, idleness and close_idle_after follow "
                                     f"the wall clock of one process; on Ray they apply to windows that take a "
                                     f"source's rows, not to operators; run this flow locally")
                if len(ops_) > 1:
                    raise ValueError(f"{n.kind}() node {n.id} takes the outputs of several operators, or an operator's "
                                     f"output and rows that bypass it; on Ray, run this flow locally")
                self.ops.setdefault(next(iter(srcs)), []).append(n)
                self.feed[n.id] = next(iter(wms))
                ops_ = {n.id}
                wms = wms if n.params.get("passes_rows") else {n.id}
            if n.kind == "window":
                if above:
                    raise ValueError(f"window node {n.id} reads the output of another window: that needs a second "
                                     f"shuffle, which the Ray runtime does not do yet; run this flow locally")
                if len(ops_) > 1:
                    raise ValueError(f"window node {n.id} takes the outputs of several operators, or an operator's "
                                     f"output and rows that bypass it: on Ray a window takes one operator's output or "
                                     f"its sources' rows alone; run this flow locally")
                self.feed[n.id] = next(iter(wms))
                above = {n.id}
            if len(above) > 1:
                raise ValueError(f"node {n.id} joins the outputs of several windows; the Ray runtime keeps each "
                                 f"window's results on its own actors; run this flow locally")
            window_of[n.id], sources_above[n.id], op_above[n.id], wm_above[n.id] = above, srcs, ops_, wms
        #: Sinks no window feeds (a source's rows, an operator's outputs): written by the
        #: window actor that its source's reader sends their rows to (SourceWorker.sink_actor).
        self.reader_sinks = {n.id for n in self.sinks if not window_of[n.id]}
        if not self.windows:
            raise ValueError("the flow has no window: the Ray runtime shuffles by key into windows")
        self.sources_of = {w.id: [s for s in self.sources if self._reaches(s.id, w.id)] for w in self.windows}
        #: Some window's results depend on the order rows arrive in, not only on event time.
        self.arrival_order = any(getattr(w.params["window"], a, False) for w in self.windows
                                 for a in ("counted", "globally"))
        #: Some window takes the rows of several sources (a union): the local runtime takes one
        #: batch of each source in turn, so a read holds the same number of batches of every
        #: source (`round_items`), and actors take them in that order (WindowWorker._round).
        self.aligned = any(len(self.sources_of[w.id]) > 1 for w in self.windows)
        if self.aligned and self.ops:
            raise ValueError("a window takes several sources' rows and operators run before windows: the Ray runtime "
                             "does not run operators in a flow whose reads are aligned yet; run this flow locally")

    #: Rows per batch assumed of a source that does not say (no int `batch_size`).
    BATCH_ROWS = 65_536

    def round_items(self, round_rows: int) -> int:
        """Batches of every source per read where reads are aligned: as many of the largest
        batches as fit in `round_rows` (at least one), the same number in every process."""
        sizes = [getattr(s.params["source"], "batch_size", None) for s in self.sources]
        size = max((b for b in sizes if isinstance(b, int) and not isinstance(b, bool) and b > 0),
                   default=self.BATCH_ROWS)
        return max(1, round_rows // size)

    def _reaches(self, a: int, b: int) -> bool:
        todo, seen = [a], set()
        while todo:
            x = todo.pop()
            if x == b:
                return True
            for c, _ in self.children[x]:
                if c.id not in seen:
                    seen.add(c.id)
                    todo.append(c.id)
        return False


def _stateless(node, batch: Batch):
    """The output batches of a map/filter/flat_map/union node for one input batch."""
    kind = node.kind
    if kind == "map":
        return [Batch.from_any(node.params["fn"](batch))]
    if kind == "filter":
        return [batch.filter(node.params["fn"](batch))]
    if kind == "union":
        return [batch]
    produced = node.params["fn"](batch)  # flat_map
    if produced is None:
        return []
    if isinstance(produced, (Batch, dict)) or type(produced).__module__.startswith(("pandas", "pyarrow")):
        produced = [produced]
    return [Batch.from_any(p) for p in produced]


class SourceWorker:
    """One source: reads it, runs the stateless steps and operators to the windows, splits by key group.
    `next()` returns (parts, (label, position, done, marks)): parts[j] holds window actor j's messages,
    one list of (window id, rows, key groups or None: see `groups`) per batch read; one call
    reads whole batches up to `round_rows` rows (one partition label per call), so Ray's
    per-call cost is shared by many rows."""

    def __init__(self, flow, source_id: int, parallelism: int, n_groups: int, position=None, read: bool = True,
                 round_rows: int = 1, carry: dict | None = None, items: int | None = None, replay: dict | None = None,
                 snapshot_every: int | None = None, keep_reads: int = 8):
        self.plan = Plan(flow)
        self.node = self.plan.nodes[source_id]
        self.parallelism, self.n_groups, self.round_rows = parallelism, n_groups, round_rows
        self.it = iter(self.node.params["source"].read(position)) if read else None
        # Batches per read where the sources' batches are taken in turns (Plan.aligned), else
        # None: the driver's Plan.round_items, the same for every source (this graph holds
        # only this source's object).
        self.items = items if self.plan.aligned else None
        # Operators before the windows (Plan.ops) take the source's batches as they come, as in
        # the local runtime: a process() function's timers fire between batches, and a window's
        # late updates come one per batch, so joined batches would change what they emit.
        self.coalesce = (parallelism > 1 and not self.plan.arrival_order and self.items is None
                         and not self.plan.ops.get(source_id))
        self.direct = self._direct_windows()
        self.held = None  # an item read ahead (another partition's): the next call starts with it
        # Where routed rows go: None, arrays of their own; or a function that gives room for n
        # bytes (uint8; None where it has none), a shared-memory segment the receivers view.
        self.out = None
        # By (window id, partition label): the largest event time (ns) the window's operators
        # accept of that partition so far, whichever actor holds its row: where the next rows'
        # watermark floors start (`_floors`). `carry`: what a checkpoint restored holds of
        # these ("max") and of `first` ("first").
        carry = carry or {}
        self.carry = dict(carry.get("max", {}))
        # By window: the watermark its operators' floors were judged against after the latest
        # read (an operator that saw every partition of this source would have it).
        self.wm: dict = {}
        # By window fed by this source alone: where that watermark began (SourceWorker.marks).
        self.first = dict(carry.get("first", {}))
        # The source's partitions: those it declares (each holds the watermark back until it
        # sends; asked for where floors are first needed), then as they come.
        self.labels: list | None = None
        self.label = None  # the partition of the rows being routed
        # By window, of the batches `_floors` judged last: the partition's largest accepted
        # time after each (None while it has none); the largest time of each, accepted or not
        # (None: empty); and (batch index, time) where it got its first accepted time ("born":
        # the first floor that is one, else the time after that batch).
        self.trail: dict = {}
        self.raw: dict = {}
        self.born: dict = {}
        # The operators this source's rows go through before their windows (Plan.ops), run
        # here as the local runtime runs them: every row of the source, in order. Their side
        # outputs' sinks are written by window actor `sink_actor` (in its rounds, so they
        # commit with the epoch of the rows that made them).
        self.part_no: dict = {}  # partition label -> the int the operators know it by
        # By operator: the windows and operators that take its output, through stateless steps.
        self.below = {n.id: operators_below(n, self.plan.children) for n in self.plan.ops.get(source_id, [])}
        self.ops = self.new_ops(self.node.params["source"].partitions()) if self.plan.ops.get(source_id) else {}
        self.sink_actor = [s.id for s in self.plan.sources].index(source_id) % parallelism
        self.ops_done = not self.ops  # the operators have fired what they held at the source's end
        self.position = position
        # Checkpoints of the operators' state (ops_state). The reader runs reads ahead of the
        # rounds that take them, so its operators are past any checkpoint's read: it keeps a
        # snapshot every `snapshot_every` reads (None: no checkpoints) and how many batches
        # each recent read ended at; a checkpoint holds the latest snapshot at or before its
        # read, and a reader restored from it replays the batches in between through its
        # operators alone (`replay`: what ops_state gave; position is the snapshot's).
        self.snapshot_every, self.reads, self.batches, self.finish_read = snapshot_every, 0, 0, None
        self.skip = 0
        if replay is not None:
            self.ops_done = self.ops_done or replay["ops_done"]
            if not replay["ops_done"]:
                for nid, state in pickle.loads(replay["ops"]).items():
                    self.ops[nid].restore(state)
                self.part_no = dict(replay["part_no"])
                self.skip = replay["skip"]
        self.snap_lock = threading.Lock()  # ops_state (the driver's call) beside next() (a reading thread)
        self.snaps: collections.deque = collections.deque(maxlen=keep_reads // max(1, snapshot_every or 1) + 3)
        self.ended_at: collections.deque = collections.deque([(0, self.skip)],
                                                             maxlen=keep_reads + 2 * (snapshot_every or 1))
        if self.ops and snapshot_every and not self.ops_done:
            self._snapshot()

    def _direct_windows(self) -> list | None:
        """The windows this source's batches reach unchanged (through unions only), each once,
        in the order `_push` reaches them; None where a step changes batches on the way or a
        window is reached twice."""
        found = []

        def walk(node) -> bool:  # depth first, children in order: as _push goes
            for child, _port in self.plan.children[node.id]:
                if child.kind == "window":
                    found.append(child)
                elif child.kind != "union" or not walk(child):
                    return False
            return True

        return found if walk(self.node) and len({w.id for w in found}) == len(found) else None

    def groups(self, window, batch: Batch) -> np.ndarray | None:
        """The key group of each row of `batch` on its way into `window` where all go to actor 0
        (parallelism 1, or an unkeyed window: group 0), or None: not listed, since that actor
        needs them only where it holds several slots of the window (after a rescale), and
        computes them then (`WindowWorker._split`). Listing them took 11% of the one actor's
        CPU samples at parallelism 1, on its reading thread (perf, 40M readings, 2-core VM). A
        subclass whose groups are not the keys' (Kafka's partitions) lists them."""
        return None

    def route(self, batch: Batch) -> list:
        """A batch of this source, through the stateless steps: one message list per actor."""
        out = [[] for _ in range(self.parallelism)]
        self._through(batch, out)
        return out

    def _through(self, batch: Batch, out) -> None:
        """A batch of this source down the graph (out None: through its operators alone)."""
        self._push(self.node, batch, out)
        for nid, op in self.ops.items():
            if hasattr(op, "tick"):  # processing-time timers, after each batch (the local runtime: each round)
                self._fired(self.plan.nodes[nid], op.tick(), out)

    def read_source(self, sid: int):
        """`next()` for the Ray driver (a source actor of its own, colocate=False): the parts go
        into Ray's object store as one object; returns (its ref, (label, position, done, marks))."""
        parts, meta = self.next()
        return _put(parts), meta

    def next(self):
        if self.skip:
            self._replay()
        if self.items is not None:
            return self._next_aligned()
        res = self._next()
        if self.ops and not res[1][2]:
            with self.snap_lock:
                self.reads += 1
                self.ended_at.append((self.reads, self.batches))
            if self.ops_done and self.finish_read is None:
                self.finish_read = self.reads
            elif self.snapshot_every and self.reads % self.snapshot_every == 0:
                self._snapshot()
        return res

    def _snapshot(self) -> None:
        snap = {"n": self.reads, "position": self.position, "batches": self.batches, "part_no": dict(self.part_no),
                "ops": pickle.dumps({nid: op.snapshot() for nid, op in self.ops.items()}, pickle.HIGHEST_PROTOCOL)}
        with self.snap_lock:
            self.snaps.append(snap)

    def ops_state(self, sid: int, upto: int) -> dict:
        """What a checkpoint holds of this reader's operators as of its read `upto` (reads
        since it opened; 0: as it opened): the `replay` that restores them there."""
        with self.snap_lock:
            if self.finish_read is not None and upto >= self.finish_read:
                return {"ops_done": True}
            snap = max((x for x in self.snaps if x["n"] <= upto), key=lambda x: x["n"])
            batches = dict(self.ended_at)[upto]
        return {"ops_done": False, "position": snap["position"], "ops": snap["ops"], "part_no": snap["part_no"],
                "skip": batches - snap["batches"]}

    def _replay(self) -> None:
        """The batches between a restored snapshot and its checkpoint's read, through the
        operators alone: the windows and sinks took what they made before the checkpoint."""
        while self.skip > 0:
            item = next(self.it, None)
            if item is None:
                break
            if item[0] is None:
                continue
            self.label, self.position = (item[2] if len(item) > 2 else None), item[1]
            self._through(item[0], None)
            self.skip -= 1
            self.batches += 1
        self.skip = 0

    def _next(self):
        batches, got, label, position = [], False, None, None
        rows = 0
        while rows < self.round_rows:
            item, self.held = self.held or next(self.it, None), None
            if item is None:
                if not got:
                    if not self.ops_done:
                        return self._finish_ops()
                    return [[] for _ in range(self.parallelism)], (None, None, True, self.marks())
                break  # the next call finds the end
            item_label = item[2] if len(item) > 2 else None
            batch = item[0]
            if got and item_label != label:
                self.held = item
                break
            got, label, position = True, item_label, item[1]
            self.label, self.position = label, position
            if batch is None:  # no data yet: the position moves, nothing to route
                break
            self.batches += 1
            batches.append(batch)
            rows += len(batch)
        # One step per batch for every actor (empty where it has no rows for it), so actors can
        # interleave sources batch by batch as the local runtime does where arrival order
        # matters (count and global windows). Elsewhere, with several actors, the round's
        # batches become one (each actor's share of a batch would be a small native call):
        # routed as chunks where they reach the windows unchanged (no joined copy), else joined
        # first. At parallelism 1 the source's own arrays travel as they are.
        out = [[] for _ in range(self.parallelism)]
        if self.coalesce and len(batches) > 1 and all(b.columns == batches[0].columns for b in batches):
            if self.direct is not None and _chunkable(batches):
                step = [[] for _ in range(self.parallelism)]
                for window in self.direct:
                    self._route(window, batches, step)
                for j, msgs in enumerate(step):
                    out[j].append(msgs)
                return out, (label, position, False, self.marks(fed=True))
            batches = [Batch.concat(batches)]
        for batch in batches:
            for j, msgs in enumerate(self.route(batch)):
                out[j].append(msgs)
        return out, (label, position, False, self.marks(fed=bool(batches)))

    def _next_aligned(self):
        """`next()` where reads are aligned (Plan.aligned): exactly `items` items of the source
        (fewer only at its end; an item without a batch is an empty step, as it is a turn in the
        local runtime), one step per item for every actor, whatever its partition. The meta's
        label is then a tuple, each step's; its marks hold "max" as of the read's start (every
        partition), "ends": per step, by window, the largest event time the window accepts of
        that step's partition after it, whichever actor took its rows (an actor raises the
        partition to it after its part of the step, so the next source's step finds the
        partition where the local runtime's one operator has it), "born": per step, by
        window, where the partition got its first accepted time, if in that step (the first
        row's floor that is one, else the step's end: from these the driver tells where the
        watermark of a window of several sources began, _ray_driver.Driver._unions), and
        "raw": per step, by window, the step's largest time, accepted or not (where it exceeds
        the end, max_future refused rows, which the driver checks against the union's state)."""
        start = {"max": dict(self.carry), "first": dict(self.first)}
        items = []
        while len(items) < self.items:
            item = next(self.it, None)
            if item is None:
                break
            items.append(item)
        if not items:
            return [[] for _ in range(self.parallelism)], (None, None, True, self.marks())
        batches = [item[0] for item in items]
        labels = [item[2] if len(item) > 2 else None for item in items]
        steps = [[[] for _ in range(self.parallelism)] for _ in items]  # steps[c][j]: actor j's part of item c
        ends, borns, raws = [{} for _ in items], [{} for _ in items], [{} for _ in items]

        def note(at: int) -> None:  # the marks of the batches just judged, from item `at` on
            for wid, trail in self.trail.items():
                for c, (t, r) in enumerate(zip(trail, self.raw[wid])):
                    if t is not None:
                        ends[at + c][wid] = t
                    if r is not None:
                        raws[at + c][wid] = r
            for wid, (c, t) in self.born.items():
                borns[at + c][wid] = t

        if (self.parallelism > 1 and len(items) > 1 and self.direct is not None and len(set(labels)) == 1
                and all(b is not None and b.columns == batches[0].columns for b in batches) and _chunkable(batches)):
            # One routing pass over the read (no joined copy), each actor's rows sliced per item.
            self.label, self.trail, self.raw, self.born = labels[0], {}, {}, {}
            for window in self.direct:
                self._route(window, batches, steps, chunked=True)
            note(0)
        else:
            for c, (batch, label) in enumerate(zip(batches, labels)):
                self.label, self.trail, self.raw, self.born = label, {}, {}, {}
                if batch is not None:  # no data yet: an empty step, as a turn in the local runtime
                    self._push(self.node, batch, steps[c])
                note(c)
        start["ends"], start["born"], start["raw"] = ends, borns, raws
        start["fed"] = [b is not None for b in batches]  # per step: whether its partition sent a batch
        return ([[step[j] for step in steps] for j in range(self.parallelism)],
                (tuple(labels), items[-1][1], False, start))

    def marks(self, fed: bool = False) -> dict:
        """What every actor tells its operators before a read's rows, so that each judges them
        as the local runtime's one operator does: "max", by (window, partition label), the
        largest event time the window's operators accept of this source's partitions other
        than the one just read, whichever actor took them (WindowAggregateOperator.
        raise_partition: a partition whose rows went to other actors holds the watermark back,
        or lets it go, as there; a read holds one partition's rows, so these do not change
        during it); "first", by window this source alone feeds, where its watermark began
        (first_watermark: where a global window's event-time trigger starts); "fed": whether the
        read's partition sent a batch (the driver's wall-clock idleness, Driver._wall_clock)."""
        return {"max": {k: t for k, t in self.carry.items() if k[1] != self.label}, "first": dict(self.first),
                "fed": fed}

    def _push(self, node, batch, out, port: str = "out") -> None:
        for child, p in self.plan.children[node.id]:
            if p != port:
                continue
            if child.kind in ("window", "sink"):
                if out is None:  # replaying (_replay): what the operators make is not sent again
                    continue
                if child.kind == "window":
                    self._route(child, [batch], out)
                else:
                    out[self.sink_actor].append((child.id, batch, None))
            elif child.id in self.ops:
                op, part = self.ops[child.id], self._part(self.label)
                self._fired(child, op.process(batch, part), out)
                if isinstance(self.label, OpOut):  # rows an operator above made: its watermark decides (OpWm)
                    self._fired(child, op.set_partition_idle(part, True), out)
            else:
                for b in _stateless(child, batch):
                    self._push(child, b, out)

    def _part(self, label) -> int:
        return self.part_no.setdefault(label, len(self.part_no))

    def _fired(self, node, res, out) -> None:
        """An operator's output (a batch, port "out", or a dict port -> batch) on its way down:
        a dedupe's as its input's rows (same label), other operators' as rows of their own
        (OpOut), followed by their watermark (_pass_watermark)."""
        made = not node.params.get("passes_rows")
        if res is not None:
            was = self.label
            if made:
                self.label = OpOut(node.id)
            try:
                for port, b in (res.items() if isinstance(res, dict) else [("out", res)]):
                    if b is not None and len(b):
                        self._push(node, b, out, port)
            finally:
                self.label = was
        if made and node.id in self.below:
            self._pass_watermark(node, out)

    def _pass_watermark(self, node, out) -> None:
        """The operator's watermark to the windows and operators below it, as the max of their
        partition OpWm: each then has it as its own watermark, less nothing (its max less its
        own disorder bound). To a window, as a message to every actor after the rows: (window
        id, None, that max)."""
        wm = self.ops[node.id].watermark
        if wm is None:
            return
        for x in self.below[node.id]:
            t = passed_watermark(wm, x)
            if x.kind == "window":
                if out is not None:
                    for msgs in out:
                        msgs.append((x.id, None, t))
            else:
                self._fired(x, self.ops[x.id].raise_partition(self._part(OpWm(node.id)), t), out)

    def _finish_ops(self):
        """`next()` at the source's end, once: what its operators held, fired as the local
        runtime fires it at the end of input (in graph order, each into those below it)."""
        self.ops_done = True
        return [[m] for m in self.fire_ops()], (self.label, self.position, False, self.marks())

    def fire_ops(self) -> list:
        """End of input for the operators: what they held, by actor (one message list each)."""
        msgs = [[] for _ in range(self.parallelism)]
        for nid, op in self.ops.items():
            self._fired(self.plan.nodes[nid], op.finish(), msgs)
        return msgs

    def new_ops(self, partitions: list) -> dict:
        """The source's operators (Plan.ops), new, those it feeds waiting for `partitions`
        (labels), those fed by another operator for that one's output."""
        ops = {n.id: node_operator(n) for n in self.plan.ops.get(self.node.id, [])}
        for nid, op in ops.items():
            feed = self.plan.feed[nid]
            op.declare_partitions([self._part(x) for x in (partitions if feed is None else [OpWm(feed)])])
        return ops

    def _route(self, window, batches: list, out, chunked: bool = False) -> None:
        """Rows on their way into `window` (one batch, or several that `_chunkable` passed,
        routed as one), to each actor's message list in `out`; `chunked`: out[c] holds item c's
        message lists, and each actor's rows of batch c go to out[c] (aligned reads). Each
        window actor gets its rows in arrival order (an engine's watermark moves row by row, so
        order decides lateness), with their key groups."""
        keys, n = window.params["keys"], self.parallelism
        if chunked and not keys:  # one group (0, actor 0's), which takes every row: no floors or marks needed
            for c, batch in enumerate(batches):
                out[c][0].append((window.id, batch, None))
            return
        if n == 1 or not keys:  # one actor, or one group (0, actor 0's)
            batch = batches[0] if len(batches) == 1 else Batch.concat(batches)
            groups = self.groups(window, batch)
            out[0].append((window.id, batch, None if groups is None else groups.astype(np.uint16, copy=False)))
            return
        # Fixed-width columns (and the batches' own times, and the watermark floors) are
        # scattered into routed order natively, one pass each; object columns are taken by `order`.
        first = batches[0]
        fixed = [c for c in first.columns if first[c].dtype.kind != "O"]
        with_ts = first.ts is not None
        floors = self._floors(window, batches)
        ins = [[b[c] for c in fixed] + ([b.ts] if with_ts else []) + ([floors[k]] if floors else [])
               for k, b in enumerate(batches)]
        room = None
        if self.out is not None:
            room = self.out(_core.routed_bytes(sum(len(b) for b in batches), [a.dtype.itemsize for a in ins[0]]))
        # several batches only where _chunkable passed them: fixed-width columns, no order needed
        order, groups, bounds, cols, *starts = _core.route_chunks(
            [_key_words(b, keys) for b in batches], self.n_groups, n, ins, with_order=len(fixed) < len(first.columns),
            out=room, chunk_bounds=chunked)
        floor = cols.pop() if floors else None
        ts = cols.pop() if with_ts else None
        cols = dict(zip(fixed, cols))
        routed = {c: cols[c] if c in cols else first[c][order] for c in first.columns}
        if floor is not None:
            routed[FLOOR] = floor
        routed = Batch(routed, ts=ts)
        if chunked:
            cuts = starts[0].tolist()
            for c in range(len(batches)):
                for j in range(n):
                    lo, hi = cuts[c][j], cuts[c + 1][j]
                    if hi > lo:
                        out[c][j].append((window.id, routed.slice(lo, hi), groups[lo:hi]))
            return
        for j in range(n):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            if hi > lo:
                out[j].append((window.id, routed.slice(lo, hi), groups[lo:hi]))

    def _floors(self, window, batches: list) -> list | None:
        """Per batch on its way into `window`, the watermark floor of each row (ns): the
        largest event time of the rows of its partition before it that the window's operators
        accept, whichever actor holds them (`_core.watermark_floors`). The actors' operators
        move their watermark to it before each row (WindowAggregateOperator.process), so each
        row is judged late or not as the local runtime's one operator judges it. None where the
        window has no event-time watermark (count windows, processing and ingestion time), or
        where a batch's time column is bad: the window's operator then names what is wrong."""
        time_ = window.params["time"]
        if (not isinstance(time_, EventTime) or isinstance(time_, IngestionTime)
                or isinstance(window.params["window"], CountWindow) or isinstance(self.label, OpOut)):
            return None  # (an operator's own rows: its watermark, passed on after them, decides)
        key, ooo = (window.id, self.label), time_.max_out_of_orderness
        carry, wm, floors = self.carry.get(key), self.wm.get(window.id), []
        if self.labels is None:
            self.labels = list(dict.fromkeys(self.node.params["source"].partitions()))
        if self.label not in self.labels:
            self.labels.append(self.label)
        # The watermark this source's other partitions allow (None: there are none).
        others = [self.carry.get((window.id, m)) for m in self.labels if m != self.label]
        cap = None
        if others:
            cap = _core.NO_WATERMARK if None in others else min(others) - ooo - 1
        mf = -1 if time_.max_future is None else time_.max_future
        trail, raw = [], []
        try:
            for b in batches:
                ts, rep = time_.extract(b)
                was = carry
                floor, carry, wm = _core.watermark_floors(ts, rep.factor, ooo, mf, carry, cap, wm)
                floors.append(floor)
                if was is None and carry is not None:  # the partition's first accepted time is in these rows
                    self.born[window.id] = (len(trail), _born(floor, carry))
                trail.append(carry)
                raw.append(int(ts.max()) * rep.factor if len(ts) else None)
        except (KeyError, TypeError, ValueError):
            return None
        self.trail[window.id], self.raw[window.id] = trail, raw
        if carry is not None:
            self.carry[key] = carry
        if wm is not None:
            if window.id not in self.first and len(self.plan.sources_of[window.id]) == 1:
                self.first[window.id] = _first_watermark(floors, ooo, cap, wm)
            self.wm[window.id] = wm
        return floors


def _born(floor: np.ndarray, top: int) -> int:
    """Where a partition got its first accepted time in a batch whose floors are `floor` and
    after which its largest accepted time is `top`: the first floor that is one (the first
    accepted row's time), else `top` (the batch's one accepted row came last)."""
    held = floor[floor != _core.NO_WATERMARK]
    return int(held[0]) if len(held) else top


def _first_watermark(floors: list, ooo: int, cap: int | None, last: int) -> int:
    """Where a watermark that was none before these floors began: with the first row whose
    floor allows one (min(floor - ooo - 1, cap)), else with the last row (`last`)."""
    for f in floors:
        w = f[f != _core.NO_WATERMARK] - ooo - 1
        if cap is not None:
            w = np.minimum(w, cap)
        w = w[w > _core.NO_WATERMARK]
        if len(w):
            return int(w[0])
    return last


def _chunkable(batches: list) -> bool:
    """Whether these batches (of one source, same columns) can be routed as one without being
    joined: the same fixed-width dtype per column, and times on all or none."""
    first = batches[0]
    if any(first[c].dtype.kind == "O" for c in first.columns):
        return False
    for b in batches[1:]:
        if (b.ts is None) != (first.ts is None) or (b.ts is not None and b.ts.dtype != first.ts.dtype):
            return False
        if any(b[c].dtype != first[c].dtype for c in first.columns):
            return False
    return True


def _put(parts: list):
    """A read's parts as one object in Ray's object store (each window actor maps its part
    without a copy); called in Ray actors."""
    import ray

    return ray.put(parts)


class _Slot:
    """One window operator and the key groups [lo, hi) it answers for. `pure`: every key in
    its state belongs to [lo, hi). A rescale that splits an actor's state gives each new
    owner a copy, from which a keyed window drops the other owners' keys (retain_keys); an
    unkeyed window's state goes to group 0's owner alone. Every slot is pure once started."""

    __slots__ = ("hi", "lo", "op", "pure", "raised")

    def __init__(self, lo: int, hi: int, pure: bool, op):
        self.lo, self.hi, self.pure, self.op = lo, hi, pure, op
        self.raised: dict = {}  # by channel: the largest time its operator was raised to (marks)


_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)  # Linux


def _usage() -> tuple:
    """The calling thread's use so far: (minor page faults, CPU seconds, involuntary context
    switches (preempted: another thread had its core), voluntary ones (it blocked: on the GIL,
    a lock, I/O)); counts on Linux (zeros where threads are not counted). CPU seconds from the
    thread's CPU clock, exact to the call: getrusage's own times lag by up to a scheduler tick,
    which is most of a short call (a round of a few ms read 0 CPU seconds on a busy machine)."""
    cpu = time.thread_time()
    if _RUSAGE_THREAD is None:
        return (0, cpu, 0, 0)
    r = resource.getrusage(_RUSAGE_THREAD)
    return (r.ru_minflt, cpu, r.ru_nivcsw, r.ru_nvcsw)


class ShardedState(QueryableState):
    """A queryable window whose keys lie in several operators (one per key-group range or
    Kafka partition): each query asks every one of them (query.answer) and combines the
    answers. `operators()` gives them; the watermark is the lowest of theirs."""

    def __init__(self, name: str, node, live, operators):
        # A template of the operators (names, window kind, empty results) stands for them.
        super().__init__(name, window_operator(node.params), live, node.params["queryable"][1])
        self.wid = node.id
        self.operators = operators

    def _ask(self, what: str, *args) -> list:
        return [answer(op, what, *args) for op in self.operators()]

    @property
    def watermark(self):
        with self.live.reading():
            marks = [op.watermark for op in self.operators() if op.watermark is not None]
        return min(marks) if marks else None


def owned_range(index: int, parallelism: int, n_groups: int) -> tuple[int, int]:
    """The key groups [lo, hi) window actor `index` owns (those `owner` maps to it)."""
    return (-(-index * n_groups // parallelism), -(-(index + 1) * n_groups // parallelism))


def _locked(method):
    """The method under its worker's lock (WindowWorker.lock)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class WindowWorker:
    """The window operators of the key groups one actor owns, what follows them, and their
    sinks (this actor's copies). One operator (slot) per window covers the actor's whole range
    of key groups, so a batch is one native call; after a rescale an actor holds a slot for
    each piece of an old actor's range that it now owns."""

    def __init__(self, flow, index: int, parallelism: int, n_groups: int):
        self.plan = Plan(flow)
        self.index, self.parallelism, self.n_groups = index, parallelism, n_groups
        self.slots: dict[int, list[_Slot]] = {w.id: [] for w in self.plan.windows}
        self.queryable = [w.id for w in self.plan.windows if w.params.get("queryable")]
        self.channels: dict[int, list[int]] = {}
        self.sinks = {}
        for n in self.plan.sinks:
            sink = n.params["sink"]
            if isinstance(sink, Files):
                sink.instance = f"w{index}"
            self.sinks[n.id] = sink
        self.pending: dict[int, list] = {sid: [] for sid, s in self.sinks.items() if isinstance(s, Collect)}
        self.last_input: dict[int, Batch] = {}
        self.readers: dict[int, SourceWorker] = {}  # sources this actor reads (colocate=True)
        self.kept: dict[int, collections.deque] = {}  # by source: own parts of reads not yet in a round
        self.ahead: dict[int, collections.deque] = {}  # by source: its next reads, under way or done
        self.reading = None  # the thread that reads ahead (made with the first source)
        self.pools: dict[int, _shm.SegmentPool] = {}  # by source read here: its reads' segments
        self.views = _shm.SegmentViews()  # other actors' segments, as mapped here
        # Calls and seconds of this actor's reads (the driver's requests), its rounds and its
        # reading thread's reads, with the thread's use while in them (_usage: page faults, CPU
        # seconds, preempted, blocked; not for requests), and when its latest rounds ended
        # (wall clock, comparable across actors on a machine): see timings().
        # "call": each round task as a whole (round_packed: the message unpickled, the round,
        # the reads handed back), against which the rounds' own seconds show the task's overhead.
        self.spent = {kind: [0, 0.0, 0, 0.0, 0, 0] for kind in ("read", "round", "reading", "call")}
        self.depth = 1  # reads the reading thread keeps done ahead of the driver's requests
        self.round_ends: collections.deque = collections.deque(maxlen=4096)
        # The operators' state: the driver's calls (one at a time, in order) change it under
        # this lock, and queries, which Ray runs on a thread of their own (see query), read it
        # under it.
        self.lock = threading.RLock()
        self.started = False  # whether `start` has given the operators their state
        # Queries of every actor meet them after the same round (see query's `at`): the round
        # windowed last, the round waiting for queries (its `hold`) and, by round, the
        # queries answered after it.
        self.changed = threading.Condition(self.lock)
        self.done_round = -1
        self.holding: int | None = None
        self.answered: collections.Counter = collections.Counter()
        self.gave_up = 0  # waits of either kind that ran out (HOLD_WAIT_S) and went on regardless

    # -- sources read here (colocate=True) ---------------------------------------------------
    def open_source(self, flow, source_id: int, parallelism: int, n_groups: int, position=None,
                    round_rows: int = 1, depth: int = 1, segments: str | None = None, carry: dict | None = None,
                    items: int | None = None, replay: dict | None = None, snapshot_every: int | None = None) -> None:
        """Opens (or reopens, at `position`) a source that this actor reads and routes, keeping
        up to `depth` reads done ahead; `segments`: a name prefix for shared-memory segments
        that carry its reads to the other actors (None: Ray's object store); `carry`: where its
        watermark floors and marks start; `items`: batches per aligned read (SourceWorker)."""
        for old in self.ahead.pop(source_id, ()):  # reads of the replaced reader finish first; what they read is dropped
            old.exception()
        old_pool = self.pools.pop(source_id, None)
        if old_pool is not None:
            old_pool.close()
        self.depth = depth
        if self.reading is None:
            self.reading = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pystream-read")
        self.readers[source_id] = SourceWorker(flow, source_id, parallelism, n_groups, position,
                                               round_rows=round_rows, carry=carry, items=items, replay=replay,
                                               snapshot_every=snapshot_every, keep_reads=4 * depth + 4)
        self.kept[source_id] = collections.deque()
        self.ahead[source_id] = collections.deque()
        if segments is not None:  # its reads are routed straight into the segments
            self.pools[source_id] = _shm.SegmentPool(segments)
            self.readers[source_id].out = self.pools[source_id].take
            self._provision(source_id)

    #: Seconds open_source waits for a source's first read, which sizes its segments.
    FIRST_READ_WAIT_S = 10.0

    def _provision(self, sid: int) -> None:
        """Starts reading the source at once and, sized by its first read, makes every segment
        its reads will hold at a time while the driver still starts the actors: `depth` reads
        done ahead here, `depth` in the driver's rounds in flight, and up to `depth` whose
        rounds the driver has collected but not yet released. Made as reads asked for them,
        their pages' first writes (a fault and zeroing each) fell in the first rounds: at
        parallelism 2 (2-core VM, 512k-row reads, 38 reads a source) 12% of the reading
        thread's time; the rounds' rate rose 5% without them. A first read that fails or
        takes longer than FIRST_READ_WAIT_S provisions nothing (segments are made as reads
        ask, as before); either way it stays the first read the driver takes."""
        first = self.reading.submit(self._read, sid)
        self.ahead[sid].append(first)
        done, _ = concurrent.futures.wait([first], timeout=self.FIRST_READ_WAIT_S)
        if done and first.exception() is None:
            self.pools[sid].provision(3 * self.depth)

    def read_source(self, sid: int):
        """The source's next read as (where its parts are, as `_read` gives: a shared-memory
        layout or an object-store ref; (label, position, done, marks)), already taken by a thread of
        this actor while its rounds ran: the reading thread keeps up to `depth` reads done
        ahead of the driver's requests, so a request rarely waits (a request that waited would
        hold up this actor's rounds behind it). Routing and the windows' kernels release the
        GIL, so reading overlaps windowing."""
        t = time.perf_counter()
        try:
            # Every read runs on the reading thread, the first one too: a source is only ever
            # used from one thread; reads queue on it in order.
            queued = self.ahead[sid]
            if not queued:
                queued.append(self.reading.submit(self._read, sid))
            own, ref, meta = queued.popleft().result()
            if meta[2]:
                queued.clear()  # reads after the end find the end again
            else:
                while len(queued) < self.depth:
                    queued.append(self.reading.submit(self._read, sid))
                self.kept[sid].append(own)  # this actor's part stays here (rounds take reads in read order)
            return ref, meta
        finally:
            self._spent("read", t)

    def ops_state(self, sid: int, upto: int) -> dict:
        """SourceWorker.ops_state of a source read here."""
        return self.readers[sid].ops_state(sid, upto)

    def _read(self, sid: int):
        """One read on the read-ahead thread, so that it overlaps windowing: (own part, where
        the other actors' parts are, meta). Where they are: the read's `_shm.Shared` layout
        (routed straight into this source's segments), or a ref to one object in Ray's object
        store. Either holds this actor's part as the source id."""
        t, used = time.perf_counter(), _usage()
        try:
            parts, meta = self.readers[sid].next()
            if meta[2]:
                return None, None, meta
            own = parts[self.index]
            pool = self.pools.get(sid)
            shared = None if pool is None else pool.write(parts, self.index)
            if shared is not None:
                shared.parts[self.index] = sid
                return own, shared, meta
            return own, _put([p if j != self.index else sid for j, p in enumerate(parts)]), meta
        finally:
            self._spent("reading", t, used)

    def _spent(self, kind: str, since: float, used: tuple | None = None) -> None:
        """Counts a call of `kind` that began at `since`, with the calling thread's use since
        `used` (its _usage() then, taken after `since`; None: wall time only). The use is read
        before the clock, so a call's CPU seconds lie within its wall seconds."""
        now = _usage() if used is not None else None
        entry = self.spent[kind]
        entry[0] += 1
        entry[1] += time.perf_counter() - since
        if now is not None:
            for i, (a, b) in enumerate(zip(now, used)):
                entry[2 + i] += a - b

    def timings(self) -> dict:
        """Since the actor started: reads and rounds (calls, seconds; a read's seconds include
        waiting for its read-ahead), page faults of the rounds and of the reading thread's
        reads (Linux; 0 elsewhere), the wall-clock end of each of the latest 4,096 rounds, and
        the shared-memory segments its sources' reads have needed so far; and for the rounds
        and the reading thread's reads: seconds, CPU seconds, times preempted and blocked.
        Against the run's seconds, reads + rounds say how much of the time the actor itself
        was the work; round ends across actors show how far the slowest trails (stragglers);
        faults show memory that each call maps afresh (a new page costs a kernel trip); calls
        (round tasks through round_packed, whole) against reads + rounds show the task's own
        overhead, and against the run's seconds how long the actor had no task; CPU
        against wall seconds shows a thread off its core (preempted where threads outnumber
        cores, blocked on the GIL or a lock) rather than slow on it."""
        read, rnd, reading, call = self.spent["read"], self.spent["round"], self.spent["reading"], self.spent["call"]
        return {"reads": read[0], "read_s": read[1], "rounds": rnd[0], "round_s": rnd[1], "round_faults": rnd[2],
                "calls": call[0], "call_s": call[1],
                "round_cpu_s": rnd[3], "round_preempted": rnd[4], "round_blocked": rnd[5],
                "readings": reading[0], "reading_s": reading[1], "read_faults": reading[2], "reading_cpu_s": reading[3],
                "reading_preempted": reading[4], "reading_blocked": reading[5], "round_ends": list(self.round_ends),
                "segments": sum(p.made for p in self.pools.values()), "query_waits_gave_up": self.gave_up,
                "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}

    def owned(self) -> tuple[int, int]:
        """The key groups this worker starts with a slot for (every group without one gets a
        slot of its own when its first rows arrive)."""
        return owned_range(self.index, self.parallelism, self.n_groups)

    def pin(self, cpus) -> list:
        """Runs this process, every thread of it (those made later inherit it), on `cpus`
        (Linux); returns the CPUs it may run on now, sorted."""
        cpus = set(cpus)
        if not hasattr(os, "sched_setaffinity"):
            raise ValueError(f"cpus={sorted(cpus)}: pinning actors to CPUs needs Linux (os.sched_setaffinity)")
        try:
            threads = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            threads = [0]
        for tid in threads:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
            except OSError as e:
                raise ValueError(f"cannot pin window actor {self.index} to CPUs {sorted(cpus)} (this machine's: "
                                 f"{sorted(os.sched_getaffinity(0))}): {e}") from None
        return sorted(os.sched_getaffinity(0))

    # -- state ----------------------------------------------------------------------------------
    @_locked
    def start(self, channels: dict, slots: dict | None) -> None:
        """(Re)starts from slot snapshots {window: [(lo, hi, pure, state), ...]} (None: from
        scratch), keeping of each the part of [lo, hi) this worker owns; `channels` maps each
        window to the channel ids it has declared."""
        self.channels = {int(k): list(v) for k, v in channels.items()}
        # By window that takes the rows an operator makes: the channel of that operator's
        # watermark (OpWm), whose rows come on a channel of their own, -1 - that one (OpOut:
        # not declared, idle between batches), whatever partition of the source the read held.
        self.op_chan = {wid: chans[0] for wid, chans in self.channels.items()
                        if self.plan.feed.get(wid) is not None and chans}
        self.views.close()  # maps of an earlier start's segments (removed since): rounds of it have ended
        self.views = _shm.SegmentViews()
        a, b = self.owned()
        self.slots = {w.id: [] for w in self.plan.windows}
        for wid, entries in (slots or {}).items():
            unkeyed = not self.plan.nodes[wid].params["keys"]
            for lo, hi, pure, state in entries:
                lo2, hi2 = max(lo, a), min(hi, b)
                if unkeyed and not lo2 <= 0 < hi2:
                    continue  # an unkeyed window's one key is group 0: only that group's owner takes it
                if lo2 < hi2:
                    slot = self._new_slot(wid, lo2, hi2, unkeyed or (pure and (lo2, hi2) == (lo, hi)))
                    slot.op.restore(state)
                    if not slot.pure:  # drop other actors' keys
                        slot.op.retain_keys(lambda cols, s=slot, w=wid: self._owns(w, s, Batch(cols)))
                        slot.pure = True
        for wid, slots_ in self.slots.items():  # groups no snapshot covered start empty
            edges = [a] + [x for s in slots_ for x in (s.lo, s.hi)] + [b]
            for lo, hi in zip(edges[::2], edges[1::2]):
                if lo < hi:
                    self._new_slot(wid, lo, hi, True)
        for sid, sink in self.sinks.items():
            sink.open()
            if sid in self.pending:
                self.pending[sid] = []
        self.started = True

    def _owns(self, wid: int, slot: _Slot, rows: Batch) -> np.ndarray:
        """Which of these rows' keys fall in the slot's key groups."""
        g = key_groups(rows, self.plan.nodes[wid].params["keys"], self.n_groups)
        return (g >= slot.lo) & (g < slot.hi)

    def _new_slot(self, wid: int, lo: int, hi: int, pure: bool) -> _Slot:
        n = self.plan.nodes[wid]
        op = window_operator(n.params)
        op.declare_partitions(self.declared(wid, lo))
        if n.params.get("queryable"):  # the state's history of fired rows, shared out over the actors
            op.history = History(-(-n.params["queryable"][1] // self.parallelism))
        slot = _Slot(lo, hi, pure, op)
        slots = self.slots[wid]
        slots.insert(bisect.bisect([s.lo for s in slots], lo), slot)
        return slot

    def _slot(self, wid: int, g: int) -> _Slot:
        """The slot that holds key group g (a new one of its own when none does)."""
        slots = self.slots[wid]
        i = bisect.bisect([s.lo for s in slots], g) - 1
        if i >= 0 and g < slots[i].hi:
            return slots[i]
        return self._new_slot(wid, g, g + 1, True)

    def declared(self, wid: int, g: int) -> list:
        """The channels a new operator waits for: every source partition feeding the window."""
        return self.channels.get(wid, [])

    @_locked
    def snapshot(self) -> dict:
        return {wid: [(s.lo, s.hi, s.pure, s.op.snapshot()) for s in slots] for wid, slots in self.slots.items()}

    def _group_slots(self, g: int) -> dict:
        return {wid: s for wid, slots in self.slots.items() for s in slots if (s.lo, s.hi) == (g, g + 1)}

    @_locked
    def group_snapshot(self, g: int) -> dict:
        """Snapshots, by window, of the slots that hold key group g alone."""
        return {wid: s.op.snapshot() for wid, s in self._group_slots(g).items()}

    @_locked
    def take_group(self, g: int) -> dict:
        """Removes key group g's own slots, returning their snapshots by window."""
        snaps = self.group_snapshot(g)
        for wid, s in self._group_slots(g).items():
            self.slots[wid].remove(s)
        return snaps

    @_locked
    def put_group(self, g: int, snaps: dict) -> None:
        for wid, state in snaps.items():
            self._slot(wid, g).op.restore(state)

    # -- queryable state ----------------------------------------------------------------------
    #: Seconds a query waits for the round it is to follow, and a round for the queries it
    #: holds for, before going on regardless (a query that never came: its caller died).
    HOLD_WAIT_S = 10.0

    @_locked
    def query(self, wid: int, what: str, *args, at: int | None = None) -> list:
        """The answers of this actor's operators of window `wid` to a query (query.answer), one
        per slot. The driver sends queries to a concurrency group of their own, so Ray runs them
        on a thread of their own, beside the driver's calls rather than behind the rounds it has
        queued; under the worker's lock, a query sees the state between two rounds of this
        actor (it waits for the windowing of the round under way, not for the round's reads).
        A query the operators refuse (a key of the wrong type: ValueError, TypeError) comes
        back as its exception, which the driver raises: a refused query is an answer, not a
        failed task.

        `at`: the query asks every actor, and each answers from after round `at` (the latest
        the driver had handed out): it waits for that round, and the driver's next round waits
        here until the queries asked before it have been answered (`round`'s hold), so that
        no actor has gone further. A round waiting for them stands where `at` would leave it
        (an actor restarted since has not had round `at`)."""
        try:
            if at is not None and not self.changed.wait_for(
                    lambda: self.done_round >= at or self.holding == at + 1, self.HOLD_WAIT_S):
                self.gave_up += 1
            if not self.started:  # a restarted actor, before the driver gives it its state back
                return NotStarted(f"window actor {self.index} is starting (restoring its state): ask again")
            try:
                return [answer(s.op, what, *args) for s in self.slots[wid]]
            except (ValueError, TypeError) as e:
                return e
        finally:
            if at is not None:
                self.answered[at] += 1
                self.changed.notify_all()

    @_locked
    def export_queryable(self, wid: int) -> list:
        """(snapshot, history batches, history size) of each slot of window `wid`: what the
        driver rebuilds the state from once the run has ended, so queries still answer then."""
        return [(s.op.snapshot(), list(s.op.history.parts), s.op.history.max_rows) for s in self.slots[wid]]

    # -- data ---------------------------------------------------------------------------------
    def round(self, watermarks: dict, chans: list, *messages, reads: tuple = (), released: dict | None = None,
              stamp: int = 0, hold: int = 0, marks: dict | None = None) -> tuple:
        """Advances every window to the driver's watermark and raises its operators' partitions
        to `marks` (SourceWorker.marks of the round's reads, "max" by (window, channel) and
        "first" by window), then takes this actor's part of each source's read (`parts` of
        SourceWorker.next, or their `_shm.Shared` layout; chans[i] is the channel of
        messages[i], or of each of its steps where reads are aligned, and marks' "ends" then
        hold each step's marks: see _round). `released`: by source read here, how many of its reads
        every actor is done with (rounds the driver has collected): their segments are free.
        `stamp`: the driver's round number, which queryable histories keep with the rows fired
        in this round; `hold`: how many queries of every actor (query's `at`) were asked after
        the previous round, which this round waits for before it windows. Returns (per window and channel, the largest event time its engines
        hold, for the next round's watermark; {sid: read_source(sid)} for the sources in
        `reads`, this actor's next reads, taken after the windowing: a read that failed is
        there as its exception, raised where the driver takes that read, so the round itself
        stands)."""
        for sid, upto in (released or {}).items():
            pool = self.pools.get(sid)
            if pool is not None:
                pool.release(upto)
        t, used = time.perf_counter(), _usage()
        try:
            with self.lock:
                if hold:
                    self.holding = stamp
                    self.changed.notify_all()
                    if not self.changed.wait_for(lambda: self.answered[stamp - 1] >= hold, self.HOLD_WAIT_S):
                        self.gave_up += 1
                    self.holding = None
                for done in [k for k in self.answered if k < stamp]:
                    del self.answered[done]
                for wid in self.queryable:
                    for slot in self.slots[wid]:
                        slot.op.history.stamp = stamp
                progress = self._round(watermarks, chans, messages, marks or {})
                self.done_round = stamp
                self.changed.notify_all()
        finally:
            self._spent("round", t, used)
            self.round_ends.append(time.time())
        taken = {}
        for sid in reads:
            try:
                taken[sid] = self.read_source(sid)
            except Exception as e:  # noqa: BLE001 - handed to the driver, which raises it in its turn
                taken[sid] = e
        return progress, taken

    def round_packed(self, packed: bytes) -> tuple:
        """round(*pickle.loads(packed)) of (watermarks, chans, messages, reads, released, stamp, hold, marks): every
        argument in one, pickled by the driver with the C pickler, so Ray serializes one bytes
        object (its serializer's cost grows with the objects it visits, in Python: at 16
        sources, 20 arguments cost more than the call itself; see _shm.Shared)."""
        t = time.perf_counter()
        try:
            watermarks, chans, messages, reads, released, stamp, hold, marks = pickle.loads(packed)
            return self.round(watermarks, chans, *messages, reads=reads, released=released, stamp=stamp, hold=hold,
                              marks=marks)
        finally:
            self._spent("call", t)

    def _round(self, watermarks: dict, chans: list, messages, marks: dict) -> dict:
        for wid, w in marks.get("first", {}).items():
            for slot in self.slots[wid]:
                slot.op.first_watermark(w)
        for wid, w in watermarks.items():
            for slot in self.slots[wid]:
                op = slot.op
                if op.watermark is None or w > op.watermark:
                    self._emit(wid, op.advance_watermark(w), None, None)
        for (wid, chan), t in marks.get("max", {}).items():
            self._raise(wid, chan, t)
        for (wid, chan), idle in marks.get("idle", {}).items():  # the driver's wall clock: Driver._wall_clock
            self._channel(wid, chan)
            for slot in self.slots[wid]:
                self._emit(wid, slot.op.set_partition_idle(chan, idle), None, None)
        messages = [self._part(m) for m in messages]
        if "ends" in marks:
            # Reads aligned (Plan.aligned): the sources' batches in turns, one of each, as the local
            # runtime takes them; after each, its partition raised to how far it has got.
            turns: dict = {}  # by window: (channel, rows or None, key groups, end or None) in turn
            for k in range(max((len(steps) for steps in messages), default=0)):
                for chan, steps, ends in zip(chans, messages, marks["ends"]):
                    if k < len(steps):
                        for wid, batch, groups in steps[k]:
                            turns.setdefault(wid, []).append((chan[k], batch, groups, None))
                        for wid, t in ends[k].items():
                            turns.setdefault(wid, []).append((chan[k], None, None, t))
            for wid, schedule in turns.items():
                # In groups of one turn of every source: each group's output is as large as one
                # batch's was (one buffer for a whole round's fired rows outgrew its room and
                # was copied as it grew: 36 MB a run at parallelism 2, page faults per round
                # 103 -> 334 on the 2-core VM).
                size = 2 * max(1, len(messages)) * self.TURNS_PER_CALL
                for g in range(0, len(schedule), size):
                    group = schedule[g:g + size]
                    if not self._take_turns(wid, group):
                        for chan, batch, groups, end in group:
                            if batch is not None:
                                self._take(wid, chan, batch, groups)
                            else:
                                self._raise(wid, chan, end)
        else:
            # No window takes several sources' rows: each read as it came, batch by batch.
            for chan, steps in zip(chans, messages):
                for step in steps:
                    for wid, batch, groups in step:
                        self._take(wid, chan, batch, groups)
        return self.progress()

    def _take(self, wid: int, chan: int, batch: Batch, groups: np.ndarray) -> None:
        """Rows of one channel into the window's operators (by slot), with their watermark
        floors where the source sent them (SourceWorker._floors); or rows for a sink that no
        window feeds (Plan.reader_sinks: `wid` is the sink's node id)."""
        if wid in self.plan.reader_sinks:
            self._write(wid, batch)
            return
        if wid in self.op_chan:
            wm_chan = self.op_chan[wid]
            if batch is None:  # the operator's watermark, after its rows (SourceWorker._pass_watermark)
                for slot in self.slots[wid]:
                    self._emit(wid, slot.op.set_partition_idle(-1 - wm_chan, True), None, None)
                    self._emit(wid, slot.op.raise_partition(wm_chan, groups), None, None)
                return
            chan = -1 - wm_chan
        else:
            self._channel(wid, chan)
        for slot, sub in self._split(wid, batch, groups):
            floor = None
            if FLOOR in sub:
                floor = sub[FLOOR]
                sub = sub.without_column(FLOOR)
            self.last_input[wid] = sub
            self._emit(wid, *slot.op.process(sub, chan, floor))

    def _part(self, read):
        """This actor's part of a read: each read holds every actor's part (in a shared segment,
        or in the object), but a source read here kept this actor's and holds its id instead.
        Rows in a segment are views, valid for this round: whatever outlives it is a copy."""
        shared = isinstance(read, _shm.Shared)
        mine = read.parts[self.index] if shared else read[self.index]
        if isinstance(mine, int):
            return self.kept[mine].popleft()
        return read.part(self.index, self.views) if shared else mine

    def _split(self, wid: int, batch: Batch, groups: np.ndarray | None) -> list:
        """The rows of `batch` by slot, in arrival order within each (one piece, the batch
        itself, when a single slot holds all its groups: the usual case). groups None: rows of
        this actor's own groups, not listed (SourceWorker.groups), computed here only where
        they are needed."""
        if groups is None:
            whole = self._whole_slot(wid)
            if whole is not None:
                return [(whole, batch)]
            groups = native_groups(batch, self.plan.nodes[wid].params["keys"], self.n_groups)
        if not len(groups):  # a batch that a filter emptied: no rows for any slot
            return []
        slot = self._slot(wid, int(groups.min()))
        if int(groups.max()) < slot.hi:
            return [(slot, batch)]
        for g in np.unique(groups):  # groups that have no slot get one
            self._slot(wid, int(g))
        slots = self.slots[wid]
        which = np.searchsorted(np.array([s.lo for s in slots]), groups, side="right") - 1
        order = np.argsort(which, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=len(slots)))])
        grouped = batch.take(order)
        return [(slots[i], grouped.slice(int(bounds[i]), int(bounds[i + 1])))
                for i in range(len(slots)) if bounds[i + 1] > bounds[i]]

    def _whole_slot(self, wid: int) -> _Slot | None:
        """The window's one slot where it covers all of this actor's key groups (the usual
        case: rows need no split by group), else None."""
        slots = self.slots[wid]
        return slots[0] if len(slots) == 1 and (slots[0].lo, slots[0].hi) == self.owned() else None

    #: Turns of every source (a batch and a raise each) per engine call (_take_turns).
    TURNS_PER_CALL = 1

    def _take_turns(self, wid: int, schedule: list) -> bool:
        """A window's share of an aligned round in one engine call (WindowAggregateOperator.
        process_turns): its pieces in turn, each partition raised after its batch, where the
        window has one slot over this actor's groups (the usual case) and an engine that
        takes turns. A piece was a Python call of its own, 14 us, and a raise another 5 us: at
        parallelism 8 an actor takes 64 pieces of 8k rows a round of the scaling benchmark's
        union (in process: 30.1 ns per row piece by piece, 29.3 a turn of every source per
        call, 28.0 a round per call, which copied its output as it grew). False: take them
        one by one."""
        slot = self._whole_slot(wid)
        if slot is None:
            return False
        batches, floors, rows, raised = [], [], [], {}
        for chan, batch, _groups, end in schedule:
            if batch is None:
                rows.append((-1, 0, 0, chan, end))  # a raise alone
                raised[chan] = max(raised.get(chan, end), end)
                continue
            floors.append(batch.get(FLOOR))
            batches.append(batch.without_column(FLOOR))
            rows.append((len(batches) - 1, 0, len(batch), chan, _core.NO_WATERMARK))
        if not batches:  # raises alone: one by one
            return False
        done = slot.op.process_turns(batches, floors, np.array(rows, dtype=np.int64).reshape(-1, 5))
        if done is None:
            return False
        for chan, _batch, _groups, _end in schedule:
            self._channel(wid, chan)
        for chan, t in raised.items():
            slot.raised[chan] = max(slot.raised.get(chan, t), t)
        res, late, invalid = done
        self.last_input[wid] = batches[-1]
        self._emit(wid, res, None, None)
        for lt, inv in zip(late, invalid):
            self._emit(wid, None, lt, inv)
        return True

    def _raise(self, wid: int, chan: int, t: int) -> None:
        """The window's operators' partition `chan` raised to `t` (a mark: how far that
        partition has got, whichever actor took its rows)."""
        self._channel(wid, chan)
        for slot in self.slots[wid]:
            if slot.raised.get(chan, t - 1) < t:  # marks repeat: only news go native
                slot.raised[chan] = t
                self._emit(wid, slot.op.raise_partition(chan, t), None, None)

    def _channel(self, wid: int, chan: int) -> None:
        known = self.channels.setdefault(wid, [])
        if chan not in known:
            known.append(chan)

    def progress(self) -> dict:
        top: dict = {}
        for wid, slots in self.slots.items():
            for slot in slots:
                eng = getattr(slot.op, "engine", None)
                if eng is None or not hasattr(eng, "partitions"):
                    continue
                for p in eng.partitions:
                    if p["max_ts"] is not None:
                        key = (wid, p["id"])
                        top[key] = max(top.get(key, p["max_ts"]), p["max_ts"])
        return top

    def _emit(self, wid: int, res, late, invalid) -> None:
        node = self.plan.nodes[wid]
        for port, b in (("out", res), ("late", late), ("invalid", invalid)):
            if b is not None and len(b):
                self._push(node, port, b)

    def _push(self, node, port: str, batch: Batch) -> None:
        for child, p in self.plan.children[node.id]:
            if p != port:
                continue
            if child.kind == "sink":
                self._write(child.id, batch)
            else:
                for b in _stateless(child, batch):
                    self._push(child, "out", b)

    def _write(self, sid: int, batch: Batch) -> None:
        if sid in self.pending:
            self.pending[sid].append(batch)
        else:
            self.sinks[sid].write(batch)

    @_locked
    def finish(self) -> None:
        """End of input: every window fires; side outputs that never fired still tell their
        sinks their columns. No round follows: queries waiting for one answer now."""
        self.done_round = float("inf")
        self.changed.notify_all()
        for wid, slots in self.slots.items():
            for slot in slots:
                self._emit(wid, slot.op.finish(), None, None)
            if wid in self.last_input:
                empty = self.last_input[wid].take(np.empty(0, dtype=np.int64))
                node = self.plan.nodes[wid]
                self._push_empty(node, "late", empty)
                self._push_empty(node, "invalid", empty.with_columns(reason=np.empty(0, dtype=object)))

    def _push_empty(self, node, port, empty) -> None:
        for child, p in self.plan.children[node.id]:
            if p == port and child.kind == "sink" and child.id in self.pending:
                self.pending[child.id].append(empty)

    # -- sinks --------------------------------------------------------------------------------
    def pre_commit(self, epoch: int, guarantee: str | None) -> dict:
        """This epoch's sink output: staged (exactly-once), published (at-least-once) or, for
        Collect, handed to the driver, which keeps it once the checkpoint is durable."""
        handles = {}
        for sid, sink in self.sinks.items():
            if sid in self.pending:
                handles[sid] = self.pending[sid]
                self.pending[sid] = []
            elif guarantee == "exactly_once":
                handles[sid] = sink.pre_commit(epoch)
            else:
                sink.flush_epoch(epoch)
        return handles

    def commit(self, handles: dict) -> None:
        for sid, h in handles.items():
            if sid not in self.pending:
                self.sinks[sid].commit(h)

    def close(self) -> dict:
        if self.reading is not None:
            self.reading.shutdown(wait=True, cancel_futures=True)
        for pool in self.pools.values():
            pool.close()
        self.pools = {}
        self.last_input = {}
        self.views.close()
        out = {}
        for sid, sink in self.sinks.items():
            out[sid] = self.pending.pop(sid) if sid in self.pending else sink.close()
        return out


def _cpu_sets(cpus) -> list | None:
    """Ray(cpus=...) checked: None, or a non-empty list of non-empty sets of CPU numbers."""
    if cpus is None:
        return None
    try:
        groups = [list(group) for group in cpus]
    except TypeError:
        groups = []
    ok = all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for g in groups for c in g)
    sets = [sorted({int(c) for c in g}) for g in groups] if ok else []
    if not sets or not all(sets):
        raise ValueError(f"cpus must be a non-empty list of non-empty sets of CPU numbers >= 0 (window actor j runs on "
                         f"cpus[j % len(cpus)]), got {cpus!r}")
    return sets


def init(**kwargs):
    """Starts (or joins, with address=) Ray for pystream: quiet, no dashboard, and with the
    workers' imports resolved like the driver's. Ray puts the driver's current directory first
    on its workers' sys.path, so a driver started in a source checkout would make workers
    import that unbuilt tree; Ray is therefore started from the temp directory."""
    import os
    import tempfile

    import ray

    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False, **kwargs}
    cwd = os.getcwd()
    os.chdir(tempfile.gettempdir())
    try:
        return ray.init(**kwargs)
    finally:
        os.chdir(cwd)


class Ray:
    """Runs a flow on Ray: `flow.run(runtime=ps.runtimes.Ray(parallelism=4))`.

    Args:
        parallelism: window actors (each owns a range of key groups).
        key_groups: fixed number of key groups (the most window actors a checkpoint can be
            restored to); keep it across runs that share checkpoints.
        address: a Ray cluster to join ("auto" for a running one); None starts a local one.
        num_cpus: CPUs of a local Ray instance (default: all).
        round_rows: rows a source actor reads per round, in whole batches (at least one):
            more rows per round share Ray's per-round cost; fewer move the watermark in
            finer steps.
        colocate: read each source in a window actor (source i in actor i mod N, as Flink
            shares a slot between a source and a window task): half the processes, each
            windowing while a thread of it reads ahead. False: one actor per source.
        shared_memory: move reads between window actors through shared-memory segments
            that each reading actor reuses (pystream/_shm.py), where all of them run on one
            machine and colocate=True; False, or actors on several machines: through Ray's
            object store, which gives every read fresh pages.
        ahead: reads queued per source (a colocated source's reading thread also keeps that
            many done before they are asked for), and rounds handed to the window actors
            before the driver waits for the oldest: deeper lets an actor run further ahead of
            a slow one (holding that many more reads in memory and in Ray's object store).
            Rows are judged by their floors (per row, whatever `ahead`); the driver's
            watermark, which fires windows on actors without rows of a partition, trails the
            data by up to this many rounds.
        cpus: CPU sets for the window actors: actor j runs, all its threads, on
            cpus[j % len(cpus)] (Linux; None: where the OS puts it). On a machine whose
            logical CPUs pair up on cores (hyper-threads), one actor per core keeps two busy
            actors off one core; benchmarks/device/smt_probe.py tells how the CPUs pair.
            Pinned again when Ray restarts an actor. Source actors (colocate=False) are not.
        fail_worker_after: testing hook: kill window actor 0 once after this many rounds
            (Ray restarts it; the flow rolls back to its last checkpoint).
    """

    def __init__(self, parallelism: int = 2, key_groups: int = 128, address: str | None = None,
                 num_cpus: int | None = None, round_rows: int = 262_144, colocate: bool = True, ahead: int = 2,
                 shared_memory: bool = True, cpus: list | None = None, fail_worker_after: int | None = None):
        if not isinstance(parallelism, int) or parallelism < 1:
            raise ValueError(f"parallelism must be an int >= 1, got {parallelism!r}")
        if not isinstance(key_groups, int) or not parallelism <= key_groups <= 65536:
            raise ValueError(f"key_groups must be an int in parallelism ({parallelism})..65536, got {key_groups!r}")
        if not isinstance(round_rows, int) or round_rows < 1:
            raise ValueError(f"round_rows must be an int >= 1, got {round_rows!r}")
        if not isinstance(ahead, int) or ahead < 1:
            raise ValueError(f"ahead must be an int >= 1, got {ahead!r}")
        self.parallelism, self.key_groups, self.round_rows, self.ahead = parallelism, key_groups, round_rows, ahead
        self.colocate, self.shared_memory = bool(colocate), bool(shared_memory)
        self.address, self.num_cpus = address, num_cpus
        self.cpus = _cpu_sets(cpus)
        self.fail_worker_after = fail_worker_after

    def __repr__(self):
        return (f"Ray(parallelism={self.parallelism}, key_groups={self.key_groups}, colocate={self.colocate}, "
                f"ahead={self.ahead}, shared_memory={self.shared_memory})")

    def run(self, flow, checkpoints=None, resume=False, guarantee=None, checkpoint_every=64, keep=3):
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray runtime needs Ray: pip install 'pystream[ray]'") from None
        from ._ray_driver import Driver

        if not ray.is_initialized():
            init(address=self.address, num_cpus=self.num_cpus)
        return Driver(self, flow, ray).run(checkpoints, resume, guarantee, checkpoint_every, keep)


def __getattr__(name: str):
    if name == "KafkaGroup":  # needs confluent-kafka: imported on first use
        from .kafka_group import KafkaGroup

        return KafkaGroup
    raise AttributeError(f"module 'pystream.runtimes' has no attribute {name!r}")


__all__ = ["Ray", "KafkaGroup", "init", "key_groups", "owner"]
