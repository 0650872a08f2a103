"""The driver side of the Ray runtime (see pystream/runtimes.py): actors, rounds, watermarks,
checkpoints and recovery."""

from __future__ import annotations

import collections
import copy
import ctypes
import os
import pickle
import sys
import threading
import time
import types
import uuid
import warnings

import numpy as np

from . import _shm
from . import clock as _clock
from .batch import Batch
from .flow import LiveState, RunResult, _Node, _parse_every
from .operators import window_operator
from .query import History, NotStarted
from .runtimes import (
    CODE_PATHS,
    OpWm,
    Plan,
    ShardedState,
    SourceWorker,
    WindowWorker,
    key_owner,
    owned_range,
)
from .sinks import Collect


def keep_freed_pages() -> bool:
    """Lets this process reuse the memory of freed batch arrays instead of handing it back to
    the kernel (glibc: arrays under 256 MiB come from the heap, not from mmap, and up to 256
    MiB free at the heap's top stays). An actor allocates and frees a round's columns (8 MB
    each at 1M rows) every round; with glibc's defaults each came from a fresh mmap, so every
    round paid a page fault per page written and an munmap: routing a 1M-row read took 26 ms
    instead of 9 at parallelism 2 (in process, 2-core VM). Actors are long-lived and their
    rounds alike, so the heap stays near one round's high-water mark. False where the C
    library has no mallopt. Process-wide: called in Ray actors only."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # M_MMAP_THRESHOLD, and M_TRIM_THRESHOLD: a freed round at the top of the heap stays too
    return bool(mallopt(-3, 1 << 28)) and bool(mallopt(-1, 1 << 28))


def driver_context() -> dict:
    """What actors take over from the driver (in_actor's arguments): its working directory and
    the code paths pystream registered (runtimes.CODE_PATHS)."""
    return {"cwd": os.getcwd(), "code_paths": list(CODE_PATHS)}


def packed_graph(flow, keep_source: int | None = None) -> tuple:
    """_graph, pickled here (cloudpickle, as Ray would), as (pickle, buffers): an actor
    unpickles it in __init__, after in_actor has set up its paths; as an argument Ray
    unpickles, its functions' modules (a module beside a flow file) would be imported before.
    Large buffers (a source's data in memory) travel out of band, as byte arrays that Ray puts
    in its object store once and the actor maps without a copy: inside the pickle they were
    copied three times (a source actor of 8M readings, 2-core VM: start 3.2-3.8 s)."""
    from ray import cloudpickle

    buffers: list = []
    data = cloudpickle.dumps(_graph(flow, keep_source), protocol=5, buffer_callback=buffers.append)
    return data, [np.frombuffer(b.raw(), np.uint8) for b in buffers]


def _unpacked(graph):
    if isinstance(graph, tuple):
        from ray import cloudpickle

        data, buffers = graph
        return cloudpickle.loads(data, buffers=buffers)
    return graph


def in_actor(cwd: str | None = None, code_paths: tuple = ()) -> None:
    """What an actor's process does first (Ray runs it again when it restarts the actor):
    keep_freed_pages; work in the driver's working directory `cwd`, where that exists on the
    actor's machine, so that relative paths (a Files sink's directory, a Files source's files)
    name there what they name to the driver (Ray starts its workers elsewhere: a sink given
    "out/usage" wrote under the temp directory); and import from `code_paths` too (after the
    actor's own paths, so that none shadows an installed package): `pystream run app.py`
    puts the app's directory there, so that modules beside it import in the actors."""
    keep_freed_pages()
    if cwd is not None and os.path.isdir(cwd):
        os.chdir(cwd)
    for path in code_paths:
        if path not in sys.path:
            sys.path.append(path)


class ActorSourceWorker(SourceWorker):
    """SourceWorker as a Ray actor of its own (colocate=False)."""

    def __init__(self, graph, *args, cwd: str | None = None, code_paths: tuple = (), **kwargs):
        in_actor(cwd, code_paths)
        super().__init__(_unpacked(graph), *args, **kwargs)
        self._first = None  # the first read, taken by `ready`

    def ready(self, sid: int) -> None:
        """Takes the source's first read while the actors start (as a window actor that reads
        a source does, WindowWorker.open_source), so the driver's start waits for this actor
        and the source's opening, and the rounds measure rounds; `read_source` hands it out
        first."""
        self._first = super().read_source(sid)

    def read_source(self, sid: int):
        first, self._first = self._first, None
        return first if first is not None else super().read_source(sid)


class ActorWindowWorker(WindowWorker):
    """WindowWorker as a Ray actor (Ray runs __init__ again when it restarts one). `graph`:
    the flow's (packed_graph, or as _graph makes it)."""

    def __init__(self, graph, *args, cwd: str | None = None, code_paths: tuple = (), **kwargs):
        in_actor(cwd, code_paths)
        super().__init__(_unpacked(graph), *args, **kwargs)

    def start(self, channels: dict, slots: dict | None) -> tuple:
        """WindowWorker.start; returns (this actor's Ray node id, whether shared-memory
        segments can be made there)."""
        import ray

        super().start(channels, slots)
        return ray.get_runtime_context().get_node_id(), _shm.available()


def transport(runtime, nodes: list) -> str:
    """How reads move between window actors: "shared_memory" where the runtime allows it, reads
    are routed in the window actors (colocate) to more than one of them, and every actor is on
    one machine that can make segments (`nodes`: (node id, can) per actor, as `start` tells);
    else "object_store"."""
    one_machine = len({node for node, _ in nodes}) == 1 and all(can for _, can in nodes)
    return "shared_memory" if runtime.shared_memory and runtime.colocate and len(nodes) > 1 and one_machine \
        else "object_store"


def packed_messages(parts: list, n: int) -> list | None:
    """Each of n window actors' messages of a round, where every read is a shared-memory
    layout: actor j's own part's layout of each, handed over as one argument with the rest of
    the round (Ray serializes an argument at a time, and at 16 sources 20 arguments cost the
    driver more than the call itself: 41 -> 24 ms per round in submissions on 2 cores). None
    where a read is an object-store ref, which Ray resolves only as an argument of its own."""
    if all(isinstance(p, _shm.Shared) for p in parts):
        return [[p.only(j) for p in parts] for j in range(n)]
    return None


def _latest_rounds(ends: list) -> list | None:
    """Each actor's round end times over the latest rounds all of them ended (aligned from the
    last), one tuple per round; None with fewer than two actors or no such round."""
    n = min((len(e) for e in ends), default=0)
    if len(ends) < 2 or n == 0:
        return None
    return list(zip(*(e[len(e) - n:] for e in ends)))


def round_spread(ends: list) -> float:
    """Mean over rounds of how long after the first actor the last one finished it (ms), from
    each actor's round end times (wall clock; the latest rounds, aligned from the last)."""
    rounds = _latest_rounds(ends)
    return 0.0 if rounds is None else 1e3 * sum(max(r) - min(r) for r in rounds) / len(rounds)


def last_shares(ends: list) -> list:
    """For each actor, the share of rounds it finished last (the same aligned rounds as
    round_spread): about 1/N each where stragglers are chance, one large share where an actor
    is slow every round (more rows, or a core it shares)."""
    rounds = _latest_rounds(ends)
    if rounds is None:
        return [0.0] * len(ends)
    last = [max(range(len(r)), key=r.__getitem__) for r in rounds]
    return [last.count(j) / len(rounds) for j in range(len(ends))]


def _graph(flow, keep_source: int | None = None):
    """A picklable copy of the flow's graph for an actor: no live state, and no source objects
    (their data) except the one source the actor reads."""
    nodes: dict[int, _Node] = {}
    for n in flow._nodes:
        params = dict(n.params)
        if n.kind == "source" and n.id != keep_source:
            params["source"] = None
        nodes[n.id] = _Node(n.kind, [(nodes[p.id], port) for p, port in n.inputs], params, n.id)
    return types.SimpleNamespace(_nodes=list(nodes.values()))


class RayQueryableState(ShardedState):
    """A queryable window of a flow on the Ray runtime. While it runs, a query goes to the
    window actors (each holds the keys of its key groups), which answer on a thread of their
    own from between two of their rounds (WindowWorker.query), without waiting for the reads
    their rounds wait for: a query for one key to the actor that owns it, at once; one of all
    keys (partial and last rows, top, describe) to every actor, each answering from after the
    same round, the latest handed out, so that the whole counts every round in full or not at
    all (actors stand a round or two apart). The watermark is the lowest of the actors'. Once
    the run has ended, the actors' operators are rebuilt here from their final snapshots and
    histories, and queries answer from them."""

    def __init__(self, name: str, node, driver):
        super().__init__(name, node, LiveState(), lambda: self.ops)
        self.driver = driver
        self.ops: list | None = None  # after the run: the actors' operators, rebuilt here
        self.final_watermark = None

    def _ask(self, what: str, *args) -> list:
        if self.ops is not None:
            return super()._ask(what, *args)
        workers = self.driver.workers
        if what in ("partial", "last", "view") and args[0] is not None:
            # One key: the actor that owns its key group answers alone, where it holds the key
            # (one call instead of one per actor); else (the key's type routed it elsewhere, or
            # no actor has it) the other actors are asked too.
            j = key_owner(args[0], self.driver.plan.nodes[self.wid].params["keys"], self.driver.n, self.driver.groups)
            if j is not None:
                answers = self._call(workers[j:j + 1], what, *args)
                if any((a[0] if what == "view" else a) is not None for a in answers):
                    return answers
                return answers + self._call(workers[:j] + workers[j + 1:], what, *args)
        return self._call(workers, what, *args, same_round=what != "watermark")

    def _call(self, workers: list, what: str, *args, same_round: bool = False) -> list:
        """The answers of these actors' operators (WindowWorker.query), in their query thread.
        `same_round`: each answers from after the same round, the latest handed out (keys
        spread over the actors: a whole that no round half counts); the actors' next round
        waits for it. Else each answers between two of its rounds, at once."""
        d = self.driver
        ray = d.ray

        def send(at):
            return [w.query.options(concurrency_group="query").remote(self.wid, what, *args, at=at) for w in workers]

        try:
            if same_round:
                with d.query_lock:  # counted and sent before the next round is handed out
                    at = d.round_no - 1 if d.round_no else None
                    if at is not None:
                        d.asked += 1
                    refs = send(at)
            else:
                refs = send(None)
            per_actor = ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            raise NotStarted(f"queryable state {self.name!r} is recovering (an actor died): ask again ({e})") from None
        for answers in per_actor:
            if isinstance(answers, Exception):  # a query the actors refused (a key of the wrong type)
                raise answers
        return [a for answers in per_actor for a in answers]

    @property
    def watermark(self):
        if self.ops is None:
            marks = [m for m in self._ask("watermark") if m is not None]
            return min(marks) if marks else None
        # After the run: where end of input moved the windows' watermark to the end of time,
        # that; else the one every actor's rounds made (the driver's, from all of them).
        marks = [op.watermark for op in self.ops if op.watermark is not None] + [self.final_watermark]
        marks = [m for m in marks if m is not None]
        return max(marks) if marks else None

    def settle(self, exports: list) -> None:
        """Takes over the actors' final operators (WindowWorker.export_queryable of each)."""
        params = self.driver.plan.nodes[self.wid].params
        self.final_watermark = self.driver.watermarks().get(self.wid)
        ops = []
        for snapshot, parts, max_rows in (e for per_actor in exports for e in per_actor):
            op = window_operator(params)
            op.restore(snapshot)
            op.history = History(max_rows)
            for ids, batch, stamp in parts:
                op.history.stamp = stamp
                op.history.add(ids, batch)
            ops.append(op)
        self.ops = ops


class Driver:
    #: Recoveries in a row (no new checkpoint between them) before the run fails.
    MAX_RECOVERIES = 3
    #: Seconds a recovery waits for Ray to bring a dead actor back.
    RESTART_WAIT_S = 60.0

    def __init__(self, runtime, flow, ray):
        self.rt, self.flow, self.ray = runtime, flow, ray
        self.plan = Plan(flow)
        # Windows whose watermark follows the wall clock: by window, (idleness, close_idle_after,
        # max_out_of_orderness) in ns (None: not set), or None for processing time; the driver
        # decides these for every actor (_wall_clock). (Never below an operator: Plan refuses those.)
        self.wall: dict = {}
        self.wall_sources: dict = {}  # by such window: the ids of its sources
        for w in self.plan.windows:
            spec = w.params["time"]
            if getattr(spec, "follows_clock", False):
                self.wall[w.id] = None
            elif spec.idleness or spec.close_idle_after:
                self.wall[w.id] = (spec.idleness, spec.close_idle_after, spec.max_out_of_orderness)
                self.wall_sources[w.id] = {s.id for s in self.plan.sources_of[w.id]}
        self.n, self.groups = runtime.parallelism, runtime.key_groups
        self.sink_nodes = {n.id: n for n in self.plan.sinks}
        self.segments = f"pystream-{uuid.uuid4().hex[:12]}-"  # name prefix of this run's shared-memory segments
        self.starts = 0
        self.round_no = 0  # rounds handed out, over restarts too: stamps queryable histories
        # Queries of every actor (RayQueryableState._call) see them all after the same round:
        # `asked` counts those asked since the latest round was handed out, which the next
        # round waits for on each actor (WindowWorker.round's hold).
        self.query_lock = threading.Lock()
        self.asked = 0
        self.differs: dict = {}  # by window of several sources: steps judged otherwise (_max_future_differs)

    # -- set-up -------------------------------------------------------------------------------
    def _check_guarantee(self, guarantee, checkpoints):
        if guarantee is None:
            return "at_least_once" if checkpoints is not None else None
        if guarantee not in ("at_least_once", "exactly_once"):
            raise ValueError(f"the Ray runtime offers guarantee='at_least_once' or 'exactly_once', got {guarantee!r}")
        if checkpoints is None:
            raise ValueError(f"guarantee={guarantee!r} needs checkpoints: flow.run(checkpoints='state/', ...)")
        for s in self.plan.sources:
            if not s.params["source"].replayable:
                raise ValueError(f"{guarantee} needs replayable sources, but source {s.params['source'].name!r} cannot "
                                 f"replay from a position")
        if guarantee == "exactly_once":
            for n in self.plan.sinks:
                sink = n.params["sink"]
                if not (sink.transactional or isinstance(sink, Collect)):
                    raise ValueError(f"exactly_once needs transactional sinks, but sink {sink.name!r} "
                                     f"({type(sink).__name__}) cannot take part in a two-phase commit")
        return guarantee

    def _start(self, state: dict | None) -> None:
        """Every window actor restarted from the state's key groups (its own range of them);
        sources opened afresh at the state's positions (in their own actors, or in the window
        actors with colocate=True)."""
        ray = self.ray
        st = state or {}
        with self.query_lock:  # queries asked of the actors before this start are not waited for
            self.asked = 0
        self.positions = dict(st.get("positions", {}))
        self.chan_ids = dict(st.get("chan_ids", {}))
        self.top = dict(st.get("top", {}))
        self.first = dict(st.get("first", {}))  # by window: where its watermark began (SourceWorker.marks)
        # By window of several sources: how far each channel has got, and the channels its
        # operators know (Driver._unions).
        self.got = {w.id: {c: t for (wid, c), t in self.top.items() if wid == w.id}
                    for w in self.plan.windows if len(self.plan.sources_of[w.id]) > 1}
        self.ended = set(st.get("ended", ()))
        # Wall-clock bookkeeping (_wall_clock), afresh at every start as in a new local process:
        # by channel, when it last sent a batch; by window, its idle channels, when any channel
        # last sent, and the channels told active since this start.
        self.last_seen: dict = {}
        self.idle = {wid: set() for wid in self.wall}
        self.last_data: dict = {}
        self.active: dict = {wid: set() for wid in self.wall}
        if not self.chan_ids:
            for s in self.plan.sources:
                for label in s.params["source"].partitions():
                    self.chan_ids.setdefault((s.id, label), len(self.chan_ids))
                for op in self.plan.ops.get(s.id, []):  # operators' watermarks (those windows take)
                    if any(self.plan.feed[w.id] == op.id for w in self.plan.windows):
                        self.chan_ids.setdefault((s.id, OpWm(op.id)), len(self.chan_ids))
        self.known = {wid: list(self._channels()[wid]) for wid in self.got}
        for a in self._source_only_actors():
            ray.kill(a)
        slots = st.get("slots", {})
        if self.rt.cpus:  # a restarted actor is a new process: pinned again
            sets = self.rt.cpus
            ray.get([w.pin.remote(sets[j % len(sets)]) for j, w in enumerate(self.workers)])
        calls = []
        for j, w in enumerate(self.workers):
            a, b = owned_range(j, self.n, self.groups)  # each actor gets the slots that overlap its groups
            mine = {wid: [e for e in entries if e[0] < b and a < e[1]] for wid, entries in slots.items()}
            calls.append(w.start.remote(self._channels(), mine))
        live = [s for s in self.plan.sources if s.id not in self.ended]
        # A reader with operators starts where the checkpoint's snapshot of them was taken and
        # replays from there to its position (SourceWorker.ops_state).
        self.replays = {sid: r for sid, r in st.get("readers", {}).items() if sid not in self.ended}
        args = {s.id: (_graph(self.flow, s.id), s.id, self.n, self.groups,
                       self.replays[s.id]["position"] if s.id in self.replays and not self.replays[s.id]["ops_done"]
                       else self.positions.get(s.id)) for s in live}
        reader = {"snapshot_every": self.snapshot_every}
        carry = self._carry()
        items = self.plan.round_items(self.rt.round_rows) if self.plan.aligned else None
        nodes = ray.get(calls)  # every round of an earlier start has ended (an actor runs its calls in order)
        self.starts += 1
        gen = f"{self.segments}{self.starts}-"
        _shm.remove_all(self.segments)  # segments of earlier starts (what actors that died left)
        self.transport = transport(self.rt, nodes)
        calls = []
        if self.rt.colocate:  # source i reads in window actor i mod N (after its start, in call order)
            self.reader_of = {sid: i % self.n for i, sid in enumerate(args)}
            self.source_actors = {sid: self.workers[j] for sid, j in self.reader_of.items()}
            calls += [self.source_actors[sid].open_source.remote(
                *a, round_rows=self.rt.round_rows, depth=self.rt.ahead, carry=carry[sid], items=items,
                segments=f"{gen}s{sid}-" if self.transport == "shared_memory" else None,
                replay=self.replays.get(sid), **reader) for sid, a in args.items()]
        else:
            self.reader_of = {}
            src_cls = ray.remote(ActorSourceWorker)
            context = driver_context()
            self.source_actors = {sid: src_cls.remote(packed_graph(self.flow, sid), *a[1:],
                                                      round_rows=self.rt.round_rows, carry=carry[sid], items=items,
                                                      replay=self.replays.get(sid), keep_reads=4 * self.rt.ahead + 4,
                                                      **reader, **context)
                                  for sid, a in args.items()}
            # up and their first reads taken before the rounds start, as colocated sources'
            # (metrics: start_s, not run_s, holds an actor's start and a source's opening)
            calls += [a.ready.remote(sid) for sid, a in self.source_actors.items()]
        ray.get(calls)
        self.inflight: collections.deque = collections.deque()  # (window rounds not yet collected, reads used)
        self.used = collections.Counter()  # by source: reads handed to rounds since this start
        self.released: dict = {}  # by source: reads of collected rounds (every actor is done with them)
        # By source: its reads asked for, oldest first, each as (ref, None) of a read_source
        # call, or (ref, sid) of the round that takes the read after its windowing.
        self.pending = {sid: collections.deque((self._read(sid), None) for _ in range(self.rt.ahead))
                        for sid in self.source_actors}

    def _unions(self, chans: list, ends: list, borns: list, raws: list) -> None:
        """A round's aligned reads (SourceWorker._next_aligned's marks), taken in the actors'
        order, for each window of several sources: where its watermark began (self.first, which
        actors pass to their operators: first_watermark), at the step where the last of its
        partitions got a first accepted time ("born"), as the lowest of the partitions' times
        then, less the disorder, as the local runtime's one operator's (an actor that holds
        none of that step's first rows would begin its own watermark later and higher); and
        the steps whose reader judged max_future otherwise than that operator may have
        (`_max_future_differs`)."""
        for k in range(max((len(c) for c in chans), default=0)):
            for chan, step_ends, step_borns, step_raws in zip(chans, ends, borns, raws):
                if k >= len(chan):
                    continue
                c = chan[k]
                for wid, t in step_ends[k].items():
                    got = self.got.get(wid)
                    if got is None:
                        continue
                    known = self.known[wid]
                    if c not in known:
                        known.append(c)
                    ooo = self.plan.nodes[wid].params["time"].max_out_of_orderness
                    if not all(x in got for x in known if x != c):
                        # Another partition has not sent: that operator has no watermark and
                        # refuses nothing, while the reader judged by its own source's.
                        raw = step_raws[k].get(wid)
                        if raw is not None and raw > t:
                            self._max_future_differs(wid, c, raw, None)
                    elif c not in got:  # the union's last partition: its watermark begins here
                        born = step_borns[k].get(wid, t)
                        w = min([born, *got.values()]) - ooo - 1
                        self.first.setdefault(wid, w)
                        if t > born:  # rows after the first one were judged against a watermark
                            self._max_future_differs(wid, c, t, w)
                    elif t > got[c]:
                        self._max_future_differs(wid, c, t, min(got.values()) - ooo - 1)
                    got[c] = t

    def _max_future_differs(self, wid: int, chan: int, t: int, w: int | None) -> None:
        """A reader judges the max_future guard against its own source's partitions, the local
        runtime's one operator against the union's watermark: lower while another source lags,
        none before every partition has sent. The step of channel `chan` took the largest time
        the reader accepted to t against a union's watermark of w at the step's start (the
        operator's is at least that during the step): where t > w + max_future, the operator
        may have refused rows the reader counted; w None: the union had no watermark, and t is
        a time the reader refused, which the operator accepts. Either way late rows may differ
        from a local run's: counted per window (metrics["ray"]["max_future_differs"]) and
        warned of once per window."""
        spec = self.plan.nodes[wid].params["time"]
        if spec.max_future is None or (w is not None and t <= w + spec.max_future):
            return
        self.differs[wid] = self.differs.get(wid, 0) + 1
        if self.differs[wid] > 1:
            return
        sid, _label = next(key for key, c in self.chan_ids.items() if c == chan)
        name = self.plan.nodes[sid].params["source"].name
        what = (f"reached event time {t} ns, more than max_future ({spec.max_future} ns) past the watermark of the "
                f"union it feeds ({w} ns: another source lags that far), so rows the local runtime refuses as too "
                f"far ahead may count here" if w is not None else
                f"refused a row at {t} ns as more than max_future ({spec.max_future} ns) past its own watermark "
                f"before every source of the union had sent, which the local runtime accepts (no watermark yet)")
        warnings.warn(f"window node {wid}: source {name!r} {what}; on Ray each source's reader applies max_future "
                      f"against its own partitions, so late rows may differ from a local run (lower the lag, raise "
                      f"max_future, or run locally)", RuntimeWarning, stacklevel=2)

    def _carry(self) -> dict:
        """By source: where its readers' watermark floors and marks start (SourceWorker's
        `carry`): "max" from the largest event time each window's actors hold per channel, as
        of the state started from (the actor that took a partition's last row before the
        checkpoint holds its whole max), and "first", where each window's watermark began."""
        out = {s.id: {"max": {}, "first": dict(self.first)} for s in self.plan.sources}
        where = {c: key for key, c in self.chan_ids.items()}
        for (wid, chan), t in self.top.items():
            if chan in where:
                sid, label = where[chan]
                out[sid]["max"][(wid, label)] = t
        return out

    def _restart(self, state: dict | None) -> None:
        """_start after an actor died: Ray may still be restarting it, and a call to an actor
        that is restarting fails at once (ActorUnavailableError); tried again until it is up."""
        deadline = time.monotonic() + self.RESTART_WAIT_S
        while True:
            try:
                return self._start(state)
            except self.ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _source_only_actors(self) -> list:
        return [] if self.rt.colocate else list(getattr(self, "source_actors", {}).values())

    def _channels(self, ended: set = frozenset()) -> dict:
        """By window, the channels it takes (of its sources not in `ended`): its sources'
        partitions, or the watermark of the operator whose rows it takes (OpWm)."""
        out = {}
        for w in self.plan.windows:
            srcs = {s.id for s in self.plan.sources_of[w.id]} - ended
            feed = self.plan.feed[w.id]
            out[w.id] = [c for (sid, label), c in self.chan_ids.items() if sid in srcs
                         and (label == OpWm(feed) if feed is not None else not isinstance(label, OpWm))]
        return out

    def _wall_clock(self, fed: list, wms: dict, marks: dict) -> None:
        """A round's wall-clock progress for windows with idleness, close_idle_after or
        processing time, as the local runtime's idle checks decide it for its one operator
        (flow.py: idle_checks), here for every actor at once, so each actor's operators see
        the same partitions idle: a partition that sent no batch for `idleness` is idle
        (marks["idle"][(window, channel)] = True: it no longer holds the watermark back) until
        it sends again (False, also the first time a channel sends after a start, since a
        restored operator may hold it idle); a window none of whose partitions sent for
        `close_idle_after` has its watermark moved with the wall clock, from its largest event
        time (into `wms`). A processing-time window's watermark is the wall clock (less 1 ns),
        as at each of the local runtime's checks; its rows are stamped in the actors, on the
        clock of their machine, after they take the round's watermark, so none is late on one
        machine."""
        now = _clock.current().now_ns()
        idle_marks: dict = {}
        for sid, chan in fed:
            self.last_seen[chan] = now
            for wid, srcs in self.wall_sources.items():  # (processing time: no partitions' clocks)
                if sid not in srcs:
                    continue
                self.last_data[wid] = now
                if chan in self.idle[wid] or chan not in self.active[wid]:
                    idle_marks[(wid, chan)] = False
                    self.idle[wid].discard(chan)
                    self.active[wid].add(chan)
        live = self._channels(self.ended)
        for wid, spec in self.wall.items():
            if spec is None:  # processing time
                wms[wid] = max(wms.get(wid, now - 1), now - 1)
                continue
            idleness, close_after, ooo = spec
            if idleness:
                for chan in live[wid]:
                    seen = self.last_seen.get(chan)
                    if seen is not None and chan not in self.idle[wid] and now - seen > idleness:
                        idle_marks[(wid, chan)] = True
                        self.idle[wid].add(chan)
            quiet = now - self.last_data[wid] if wid in self.last_data else None
            if close_after and quiet is not None and quiet > close_after:
                tops = [t for (w, _c), t in self.top.items() if w == wid]
                if tops:
                    w = max(tops) + quiet - ooo - 1
                    wms[wid] = max(wms.get(wid, w), w)
        if idle_marks:
            marks["idle"] = idle_marks

    def _read(self, sid: int):
        """One read: (a ref to the object holding the window actors' parts, which each maps
        without a copy: the reading actor's own part kept there when colocated; (label,
        position, done, marks)). Small: the parts went into the object store on the reader's side."""
        return self.source_actors[sid].read_source.remote(sid)

    def watermarks(self) -> dict:
        out = {}
        live = self._channels(self.ended)
        for w in self.plan.windows:
            chans = live[w.id]
            tops = [self.top.get((w.id, c)) for c in chans]
            if chans and all(t is not None for t in tops):
                out[w.id] = min(tops) - w.params["time"].max_out_of_orderness - 1
        return out

    # -- the run ------------------------------------------------------------------------------
    def run(self, checkpoints, resume, guarantee, checkpoint_every, keep) -> RunResult:
        from .checkpoint import CheckpointStore

        ray = self.ray
        guarantee = self._check_guarantee(guarantee, checkpoints)
        if resume and checkpoints is None:
            raise ValueError("resume=True needs checkpoints='DIR'")
        every_batches, every_seconds = _parse_every(checkpoint_every)
        # Readers with operators snapshot them every so many reads (SourceWorker.ops_state): a
        # checkpoint's interval where it is counted in rounds (a read a round).
        self.snapshot_every = None if checkpoints is None else (every_batches or 16)
        store = CheckpointStore(checkpoints, keep=keep) if checkpoints is not None else None
        fingerprint = f"{self.flow.fingerprint()}|ray key_groups={self.groups} state=slots"
        # Queries run in a concurrency group of their own: threads beside the driver's calls,
        # which keep theirs (one at a time, in order); several, so that a query waiting for a
        # round (WindowWorker.query's `at`) holds up no other.
        worker_cls = ray.remote(max_restarts=3, max_task_retries=0, concurrency_groups={"query": 4})(ActorWindowWorker)
        graph, context = packed_graph(self.flow), driver_context()
        self.workers = [worker_cls.remote(graph, j, self.n, self.groups, **context) for j in range(self.n)]
        live = self.flow.live
        live.begin({w.params["queryable"][0]: RayQueryableState(w.params["queryable"][0], w, self)
                    for w in self.plan.windows if w.params.get("queryable")})
        self.collected = {sid: [] for sid, n in self.sink_nodes.items() if isinstance(n.params["sink"], Collect)}
        epoch, resumed_from, written, recoveries = 0, None, [], 0
        state = None
        if store is not None:
            latest = store.latest(fingerprint) if resume else None
            if latest is not None:
                resumed_from, state = latest
                if state["guarantee"] != guarantee:
                    raise ValueError(f"checkpoint epoch {resumed_from} was taken with guarantee {state['guarantee']!r}, "
                                     f"this run asks for {guarantee!r}")
                epoch = resumed_from + 1
            self._recover_sinks(state, resumed_from if state else -1)
        started = time.perf_counter()
        self.waited = 0.0  # seconds the driver blocked on the oldest round in flight
        self._start(state)
        running = time.perf_counter()
        running_cpu = time.thread_time()  # the CPU clock read inside the wall-clock interval
        finished = bool(state and state["finished"])
        rounds, last_ckpt, failed_once = 0, time.monotonic(), False
        streak, last_recovered_at = 0, None  # recoveries since the last new checkpoint
        try:
            while self.pending and not finished:
                try:
                    self._round()
                    rounds += 1
                    if self.rt.fail_worker_after is not None and not failed_once and rounds == self.rt.fail_worker_after:
                        failed_once = True
                        ray.kill(self.workers[0], no_restart=False)  # Ray restarts it; the next call finds it dead
                    if store is not None and self.pending and (
                            (every_batches and rounds % every_batches == 0)
                            or (every_seconds and time.monotonic() - last_ckpt >= every_seconds)):
                        written.append(self._checkpoint(store, fingerprint, epoch, guarantee, False))
                        epoch, last_ckpt = epoch + 1, time.monotonic()
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                        ray.exceptions.ObjectLostError) as e:  # lost: reads a dead actor had put
                    if store is None:
                        raise RuntimeError(f"an actor died ({e}) and the flow has no checkpoints to recover "
                                           f"from; run with checkpoints='DIR'") from e
                    recoveries += 1
                    if written and written[-1] != last_recovered_at:
                        streak = 0
                    streak, last_recovered_at = streak + 1, (written[-1] if written else None)
                    if streak > self.MAX_RECOVERIES:
                        raise RuntimeError(f"actors died {streak} times without a checkpoint in between; giving up: "
                                           f"{e}") from e
                    latest = store.latest(fingerprint)
                    state = latest[1] if latest else None
                    self._recover_sinks(state, latest[0] if latest else -1)
                    self._restart(state)
            if not finished:
                self._drain()
                ray.get([w.finish.remote() for w in self.workers])
                if store is not None:
                    written.append(self._checkpoint(store, fingerprint, epoch, guarantee, True))
            timings = ray.get([w.timings.remote() for w in self.workers])
            for qs in live.states.values():
                qs.settle(ray.get([w.export_queryable.remote(qs.wid) for w in self.workers]))
            closed = ray.get([w.close.remote() for w in self.workers])
        finally:
            live.running = False
            for qs in live.states.values():
                if qs.ops is None:  # the run failed: its actors go, and with them their state
                    qs.ops = []
            for a in self._source_only_actors() + self.workers:
                ray.kill(a)
            _shm.remove_all(self.segments)  # what killed actors had not closed
        result = RunResult()
        for sid, node in self.sink_nodes.items():
            sink = node.params["sink"]
            if sid in self.collected:
                parts = [b for b in self.collected[sid] + [b for c in closed for b in c[sid]] if len(b)]
                result[sink.name] = Batch.concat(parts) if parts else Batch()
            else:  # one copy per actor: counts add up; anything else (a path) is the same for all
                values = [c[sid] for c in closed]
                ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
                result[sink.name] = sum(values) if ints else values[0]
        # seconds: starting the actors (sources receive their data) and running the rounds
        # (to the last commit), which is what throughput vs parallelism measures; per window
        # actor: busy_s (its own work: reads and rounds), read_ms and round_ms per call; call_s
        # and call_ms, its round tasks whole (packed rounds: the message unpickled, the round,
        # the next reads handed back; 0 where rounds came unpacked), the rest of run_s it had no
        # task (it waited for the driver, or Ray between tasks); page
        # faults per round and per read (the reading thread's); round_on_cpu: the rounds' CPU
        # seconds over their wall seconds, with how often per round the thread was preempted
        # and blocked (a share below 1 is time off the core, not slow work on it); reading_ms,
        # reading_on_cpu, reading_preempted and reading_blocked: the same of the reading
        # thread's reads (routing), per read; the driver's wait for the oldest round in flight;
        # driver_cpu_s: the driver thread's CPU seconds over the rounds (its own work: taking
        # reads, watermarks, submitting rounds; near run_s, the rounds wait for the driver, not
        # it for them); spread_ms: how long after the first actor the last one ended the same
        # round (mean over rounds); last_share: per actor, the share of rounds it ended last;
        # cpus: the CPUs each actor may run on at the end (pinned with Ray(cpus=...); None
        # where the platform cannot say); query_waits_gave_up: waits of a query of all keys
        # for its round, or of a round for such queries, that ran out (0 unless one was lost);
        # max_future_differs: by window of several sources, the reads' steps whose reader may
        # have judged max_future otherwise than one local operator (late rows may differ there).
        driver_cpu_s = time.thread_time() - running_cpu
        run_s = time.perf_counter() - running

        def per(key: str, calls: str, scale: float = 1.0) -> list:  # each actor's `key` per call
            return [scale * t[key] / max(t[calls], 1) for t in timings]

        def on_cpu(cpu: str, wall: str) -> list:  # each actor's CPU over wall seconds
            return [t[cpu] / t[wall] if t[wall] else 0.0 for t in timings]

        result.metrics = {"ray": {
            "parallelism": self.n, "key_groups": self.groups, "rounds": rounds, "recoveries": recoveries,
            "transport": self.transport, "cpus": [t["cpus"] for t in timings], "max_future_differs": dict(self.differs),
            "start_s": running - started, "run_s": run_s, "driver_wait_s": self.waited, "driver_cpu_s": driver_cpu_s,
            "busy_s": [t["read_s"] + t["round_s"] for t in timings],
            "read_ms": per("read_s", "reads", 1e3),
            "round_ms": per("round_s", "rounds", 1e3),
            "call_s": [t["call_s"] for t in timings], "call_ms": per("call_s", "calls", 1e3),
            "round_faults": per("round_faults", "rounds"),
            "read_faults": per("read_faults", "readings"),
            "round_on_cpu": on_cpu("round_cpu_s", "round_s"),
            "round_preempted": per("round_preempted", "rounds"),
            "round_blocked": per("round_blocked", "rounds"),
            "reading_ms": per("reading_s", "readings", 1e3),
            "reading_on_cpu": on_cpu("reading_cpu_s", "reading_s"),
            "reading_preempted": per("reading_preempted", "readings"),
            "reading_blocked": per("reading_blocked", "readings"),
            "spread_ms": round_spread([t["round_ends"] for t in timings]),
            "last_share": last_shares([t["round_ends"] for t in timings]),
            "segments": [t["segments"] for t in timings],
            "query_waits_gave_up": sum(t["query_waits_gave_up"] for t in timings),
        }}
        result.checkpoints = written
        result.resumed_from = resumed_from
        return result

    def _round(self) -> None:
        """One round: every live source's oldest read to every window actor. A colocated
        source's next read comes back with its reading actor's round (one task per actor and
        round, not two); a source actor of its own (colocate=False) is asked for it."""
        ray = self.ray
        got = ray.get([q[0][0] for q in self.pending.values()])
        chans, parts, marks, ends, borns, raws = [], [], {"max": {}, "first": self.first}, [], [], []
        fed = []  # (source, channel) of each partition that sent a batch in these reads
        reads_in = {j: [] for j in range(self.n)}  # by window actor: the sources whose next read its round takes
        for (sid, q), value in zip(list(self.pending.items()), got):
            _, in_round = q.popleft()
            value = value if in_round is None else value[1][in_round]
            if isinstance(value, BaseException):  # a read that failed in its round: it fails here, in its turn
                raise value
            ref, (label, position, done, told) = value
            if done:
                self.ended.add(sid)
                del self.pending[sid]
                continue
            self.positions[sid] = position
            self.used[sid] += 1
            if isinstance(label, tuple):  # an aligned read: a label per step (SourceWorker._next_aligned)
                chans.append(tuple(self.chan_ids.setdefault((sid, x), len(self.chan_ids)) for x in label))
                ends.append(told["ends"])
                borns.append(told["born"])
                raws.append(told["raw"])
                fed += [(sid, c) for c, f in zip(chans[-1], told.get("fed", ())) if f]
            else:
                chans.append(self.chan_ids.setdefault((sid, label), len(self.chan_ids)))
                if told.get("fed"):
                    fed.append((sid, chans[-1]))
            for (wid, other), t in told["max"].items():  # SourceWorker.marks, by channel
                marks["max"][(wid, self.chan_ids.setdefault((sid, other), len(self.chan_ids)))] = t
            self.first.update(told["first"])  # where watermarks began: sent with every round
            parts.append(ref)  # Ray resolves it for each round (a zero-copy map)
            if self.rt.colocate:
                reads_in[self.reader_of[sid]].append(sid)
            else:
                q.append((self._read(sid), None))  # keeps `ahead` reads queued while windows work
        if ends:
            marks["ends"] = ends
            self._unions(chans, ends, borns, raws)
        wms = self.watermarks()
        if self.wall:
            self._wall_clock(fed, wms, marks)
        with self.query_lock:  # the queries asked since the last round see the actors before this one
            stamp, hold = self.round_no, self.asked
            self.round_no, self.asked = stamp + 1, 0
        refs, packed = [], packed_messages(parts, self.n)
        for j, w in enumerate(self.workers):
            released = {sid: n for sid, n in self.released.items() if self.reader_of.get(sid) == j}
            if packed is not None:
                message = (wms, chans, packed[j], tuple(reads_in[j]), released, stamp, hold, marks)
                refs.append(w.round_packed.remote(pickle.dumps(message, pickle.HIGHEST_PROTOCOL)))
            else:
                refs.append(w.round.remote(wms, chans, *parts, reads=tuple(reads_in[j]), released=released,
                                           stamp=stamp, hold=hold, marks=marks))
        for j, ref in enumerate(refs):
            for sid in reads_in[j]:
                self.pending[sid].append((ref, sid))
        self.inflight.append((refs, dict(self.used)))
        while len(self.inflight) >= self.rt.ahead:
            self._collect()

    def _collect(self) -> None:
        """Waits for the oldest round in flight and takes in its progress (for watermarks)."""
        since = time.perf_counter()
        refs, used = self.inflight.popleft()
        results = self.ray.get(refs)
        self.waited += time.perf_counter() - since
        self.released.update(used)  # those reads' segments may be written again
        for progress, _reads in results:
            for key, t in progress.items():
                self.top[key] = max(self.top.get(key, t), t)

    def _drain(self) -> None:
        while self.inflight:
            self._collect()

    def _checkpoint(self, store, fingerprint, epoch, guarantee, done) -> int:
        ray = self.ray
        self._drain()  # the snapshot holds every round the positions say were read
        snaps = ray.get([w.snapshot.remote() for w in self.workers])
        with_ops = [sid for sid in self.source_actors if self.plan.ops.get(sid) and sid not in self.ended]
        readers = dict(zip(with_ops, ray.get([self.source_actors[sid].ops_state.remote(sid, self.used[sid])
                                              for sid in with_ops])))
        handles = ray.get([w.pre_commit.remote(epoch, guarantee) for w in self.workers])
        slots: dict = {}
        for s in snaps:
            for wid, entries in s.items():
                slots.setdefault(wid, []).extend(entries)
        collected = {sid: self.collected[sid] + [b for h in handles for b in h.get(sid, [])] for sid in self.collected}
        payload = {
            "positions": dict(self.positions), "chan_ids": dict(self.chan_ids), "top": dict(self.top),
            "first": dict(self.first),
            "ended": sorted(self.ended), "slots": slots, "readers": readers, "guarantee": guarantee, "finished": done,
            "parallelism": self.n, "key_groups": self.groups,
            "sinks": [{sid: h for sid, h in hs.items() if sid not in self.collected} for hs in handles],
        }
        store.write(epoch, payload, fingerprint)
        # Collect output belongs to the driver once its epoch is durable, so a rollback to this
        # checkpoint neither loses nor repeats it (a new driver process starts without it).
        self.collected = collected
        ray.get([w.commit.remote(payload["sinks"][j]) for j, w in enumerate(self.workers)])
        return epoch

    def _recover_sinks(self, state, epoch: int) -> None:
        """Commits what the checkpoint pre-committed (whatever parallelism wrote it) and drops
        anything staged after it."""
        for sid, node in self.sink_nodes.items():
            sink = copy.deepcopy(node.params["sink"])
            if isinstance(sink, Collect):
                continue
            handles = [hs.get(sid) for hs in state["sinks"]] if state else []
            for h in handles or [None]:
                sink.recover(h, epoch)
