"""The Ray runtime (issue 12): results equal the local runtime's row for row for every window
kind; exactly-once through an actor killed mid-run; a checkpoint taken at parallelism 2
restores at 3 (rescaling by key groups); key groups are stable across processes."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import pystream as ps
from pystream import _shm
from pystream.checkpoint import CheckpointStore
from pystream.datagen import meter_readings

ray = pytest.importorskip("ray")

from test_checkpoints import Flaky  # noqa: E402  (an Arrays source that fails after N batches)

DATA = meter_readings(40_000, 300, seed=5, max_delay_ms=60_000)
TIME = dict(unit="ms", max_out_of_orderness="2m")  # covers the delays: nothing is late
ROUND = 4_000  # rows per source per round: two 2,000-row batches, so runs take many rounds


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # Workers import test helpers (the Flaky source) as the test process does; a segment
    # released too early shows as wrong results (pystream/_shm.py POISON).
    ps.runtimes.init(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__)),
                                                           "PYSTREAM_SEGMENT_POISON": "1"}})
    yield
    ray.shutdown()


def sources(flow, data=DATA, n=2, make=ps.sources.Arrays, batch_size=2_000, **kw):
    """`data` as n sources (every n-th row each), unioned."""
    parts = [flow.source(make({k: v[i::n] for k, v in data.items()}, batch_size=batch_size, name=f"part{i}", **kw),
                         time=ps.EventTime("ts", **TIME)) for i in range(n)]
    return parts[0].union(*parts[1:]) if n > 1 else parts[0]


WINDOWS = {
    "tumbling": (ps.windows.Tumbling("15m"), "5m"),
    "sliding": (ps.windows.Sliding("1h", "15m"), "0s"),
    "session": (ps.windows.Session("40m"), "10m"),
    "calendar": (ps.windows.Calendar("day", tz="Europe/Berlin"), "0s"),
    "count": (ps.windows.CountSliding(6, 3), "0s"),
    "global": (ps.windows.Global(ps.triggers.Count(5), "purging"), "0s"),  # event-time triggers fire on watermark steps
}


def meter_flow(kind, sink=None):
    window, lateness = WINDOWS[kind]
    flow = ps.Flow(f"ray-{kind}")
    s = sources(flow).filter(lambda b: b["kwh"] >= 0).key_by("meter_id")
    res = s.window(window, allowed_lateness=lateness if kind not in ("count", "global") else "0s").aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh"), p90=ps.agg.quantile("kwh", 0.9),
        mine=ps.agg.custom("kwh", init=np.zeros, update=np.add.reduceat, merge=np.add, finalize=lambda a: a))
    res.sink(sink or ps.sinks.Collect("out"))
    res.late().sink(ps.sinks.Collect("late"))
    return flow


def reads(reader):
    """The parts of each read of an in-process SourceWorker, to the source's end."""
    while True:
        parts, (_label, _position, done, _marks) = reader.next()
        if done:
            return
        yield parts


def canon(batch):
    cols = sorted(batch.columns)
    rows = list(zip(*(np.round(batch[c], 9).tolist() if batch[c].dtype.kind == "f" else batch[c].tolist()
                      for c in cols)))
    return sorted(rows, key=repr)


@pytest.mark.parametrize("colocate", [True, False])
def test_relative_paths_name_in_the_actors_what_they_name_to_the_driver(tmp_path, monkeypatch, colocate):
    # A Files source read in the actors and a Files sink written there, both given paths
    # relative to the driver's working directory: the run reads and writes there.
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.csv as pacsv

    monkeypatch.chdir(tmp_path)
    os.makedirs("in")
    for i in range(2):
        pacsv.write_csv(pa.table({k: v[i::2] for k, v in DATA.items()}), f"in/part-{i}.csv")

    def flow(out):
        f = ps.Flow("relative")
        f.source(ps.sources.Files("in", batch_size=2_000, schema={"meter_id": "int64", "ts": "int64", "kwh": "float64"}),
                 time=ps.EventTime("ts", **TIME)).key_by("meter_id").window(ps.windows.Tumbling("15m")) \
            .aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count()).sink(ps.sinks.Files(out, name="usage"))
        return f

    flow("local").run()
    flow("out/usage").run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND, colocate=colocate))
    want = ps.sinks.Files.read(str(tmp_path / "local"))
    assert len(want) > 100 and canon(ps.sinks.Files.read(str(tmp_path / "out" / "usage"))) == canon(want)


@pytest.mark.parametrize("kind", sorted(WINDOWS))
def test_ray_results_equal_the_local_runtime_row_for_row(kind):
    local = meter_flow(kind).run()
    dist = meter_flow(kind).run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND))
    assert len(local["out"]) > 100
    assert canon(dist["out"]) == canon(local["out"])
    assert len(local["late"]) == len(dist["late"]) == 0
    m = dist.metrics["ray"]
    assert m["rounds"] > 5
    # Timings: each actor's reads and rounds; together no more than the run (one task thread).
    assert len(m["busy_s"]) == len(m["read_ms"]) == len(m["round_ms"]) == 2
    assert all(0 < b <= m["run_s"] for b in m["busy_s"]) and all(r > 0 for r in m["round_ms"])
    # Round tasks whole (packed through segments): each holds its round, its reads and the rest.
    assert all(0 < c <= m["run_s"] for c in m["call_s"])
    assert all(c >= r for c, r in zip(m["call_ms"], m["round_ms"]))
    assert 0 <= m["driver_wait_s"] <= m["run_s"] and m["spread_ms"] >= 0
    assert 0 < m["driver_cpu_s"] <= m["run_s"] * 1.001  # the driver thread worked, and no longer than the run
    assert len(m["round_faults"]) == len(m["read_faults"]) == 2
    assert all(f >= 0 for f in m["round_faults"] + m["read_faults"])
    # Threads' CPU seconds against wall seconds: never more (one thread is on one core at a time,
    # and each call's CPU clock is read inside its wall-clock interval; 0.1% for two clocks that
    # a VM may keep apart), and not nothing (rounds and reads did work).
    for share in m["round_on_cpu"] + m["reading_on_cpu"]:
        assert 0 < share <= 1.001, share
    assert all(x >= 0 for x in m["round_preempted"] + m["round_blocked"]) and all(r > 0 for r in m["reading_ms"])
    assert m["transport"] == "shared_memory"  # both actors on this machine
    assert len(m["last_share"]) == 2 and sum(m["last_share"]) == pytest.approx(1.0)


def test_a_window_actor_pins_every_thread_of_its_process_and_refuses_cpus_it_cannot_have():
    # In process: the calling thread, one started before, and one started after all run on
    # the CPU given; the test process gets its CPUs back.
    mine = sorted(os.sched_getaffinity(0))
    w = ps.runtimes.WindowWorker(meter_flow("tumbling"), 0, 2, 16)
    stop = threading.Event()
    before = threading.Thread(target=stop.wait)
    before.start()
    try:
        assert w.pin([mine[-1]]) == [mine[-1]]
        after = threading.Thread(target=stop.wait)
        after.start()
        for t in (before, after):
            assert os.sched_getaffinity(t.native_id) == {mine[-1]}
        assert os.sched_getaffinity(0) == {mine[-1]}
        with pytest.raises(ValueError, match=r"cannot pin window actor 0 to CPUs \[100000\] \(this machine's: "):
            w.pin([100_000])
    finally:
        stop.set()
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), mine)
            except ProcessLookupError:
                pass
    assert os.sched_getaffinity(0) == set(mine)
    for bad in ([], [[]], [[-1]], [["a"]], 5, [[1.5]], [[True]], [None]):
        with pytest.raises(ValueError, match="cpus must be a non-empty list of non-empty sets of CPU numbers"):
            ps.runtimes.Ray(cpus=bad)
    assert ps.runtimes.Ray(cpus=[{3, 1}, (2,)]).cpus == [[1, 3], [2]]


def segment_files() -> set:
    return {n for n in os.listdir("/dev/shm") if n.startswith("pystream-")} if os.path.isdir("/dev/shm") else set()


def test_reads_use_shared_memory_only_where_every_actor_can_map_it():
    from pystream._ray_driver import transport

    rt = ps.runtimes.Ray(parallelism=3)
    here = [("n1", True)] * 3
    assert transport(rt, here) == "shared_memory"
    assert transport(rt, [("n1", True), ("n2", True), ("n1", True)]) == "object_store"  # two machines
    assert transport(rt, [("n1", True), ("n1", False), ("n1", True)]) == "object_store"  # one has no /dev/shm
    assert transport(ps.runtimes.Ray(parallelism=3, shared_memory=False), here) == "object_store"
    assert transport(ps.runtimes.Ray(parallelism=3, colocate=False), here) == "object_store"  # sources apart
    assert transport(ps.runtimes.Ray(parallelism=1), here[:1]) == "object_store"  # nothing moves between actors


@pytest.mark.parametrize("shared_memory,ahead", [(True, 1), (True, 3), (False, 1)])
def test_reads_move_through_reused_segments_or_through_the_object_store(shared_memory, ahead):
    # Small reads and many rounds, so each reading actor writes its few segments again and
    # again: a segment written too early (before every actor is done with the round that
    # reads it) would change rows under a window. Both ways give the local results; no
    # segment is left behind.
    data = meter_readings(60_000, 200, seed=9, max_delay_ms=60_000)

    def flow():
        f = ps.Flow("ray-segments")
        parts = [f.source(ps.sources.Arrays({k: v[i::2] for k, v in data.items()}, batch_size=500, name=f"p{i}"),
                          time=ps.EventTime("ts", **TIME)) for i in range(2)]
        parts[0].union(parts[1]).key_by("meter_id").window(ps.windows.Sliding("1h", "15m")).aggregate(
            kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh")).sink(ps.sinks.Collect("out"))
        return f

    local = flow().run()
    before = segment_files()
    dist = flow().run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=500, ahead=ahead,
                                              shared_memory=shared_memory))
    assert len(local["out"]) > 1000 and canon(dist["out"]) == canon(local["out"])
    m = dist.metrics["ray"]
    assert m["transport"] == ("shared_memory" if shared_memory else "object_store")
    if shared_memory:
        # in use at once: reads done ahead, in rounds in flight, and collected but not yet
        # released; each reading actor makes that many when it opens its source (provisioned)
        assert m["rounds"] >= 50 and 3 * ahead <= min(m["segments"]) <= max(m["segments"]) <= 3 * ahead + 2, (
            m["rounds"], m["segments"])
    else:
        assert m["segments"] == [0, 0]
    assert segment_files() <= before


def test_thread_usage_counts_the_calling_thread():
    # The page-fault, CPU and blocked columns count the thread that does the work: what it does
    # counts, what another thread does meanwhile does not.
    from pystream.runtimes import _usage

    before = _usage()
    a = np.ones(8 << 20)  # 64 MB: mmapped fresh (over glibc's largest mmap threshold)
    spin_until = time.thread_time() + 0.05
    while time.thread_time() < spin_until:
        pass
    for _ in range(3):
        time.sleep(0.002)  # each sleep gives the core up: a voluntary switch
    here = [x - y for x, y in zip(_usage(), before)]
    before = _usage()

    def elsewhere():
        np.ones(8 << 20).sum()
        until = time.thread_time() + 0.05
        while time.thread_time() < until:
            pass

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    there = [x - y for x, y in zip(_usage(), before)]
    faults, cpu, _preempted, blocked = here
    assert faults > 16 and cpu >= 0.045 and blocked >= 3, here
    assert there[0] < 16 and there[1] < 0.03, there
    del a


def test_round_spread_is_how_long_after_the_first_actor_the_last_finished_a_round():
    from pystream._ray_driver import round_spread

    assert round_spread([[1.0, 2.0, 3.0], [1.5, 2.0, 3.25]]) == pytest.approx(1e3 * (0.5 + 0 + 0.25) / 3)
    assert round_spread([[0.5, 1.0, 2.0], [1.25, 2.5]]) == pytest.approx(1e3 * (0.25 + 0.5) / 2)  # latest rounds aligned
    assert round_spread([[1.0]]) == 0.0 and round_spread([[], [1.0]]) == 0.0


def test_last_shares_say_which_actor_ends_rounds_last():
    from pystream._ray_driver import last_shares

    assert last_shares([[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 2.9, 4.5]]) == [0.25, 0.75]
    assert last_shares([[0.5, 1.0, 2.0], [1.25, 2.5]]) == [0.0, 1.0]  # latest rounds aligned
    assert last_shares([[1.0]]) == [0.0] and last_shares([[], [1.0]]) == [0.0, 0.0]


def late_flow(kind, batch_size, make=ps.sources.Arrays, out=None, poison=(5_000, 17_000), **kw):
    """One source with transmission delays of up to 45 minutes against 1 minute of expected
    disorder (many rows late, some beyond the lateness), and clocks 10 years ahead at rows
    `poison`; from 14:00 UTC, so a Berlin day ends 9 hours in."""
    data = dict(meter_readings(30_000, 300, seed=7, max_delay_ms=45 * 60_000, start_ms=1_735_740_000_000))
    data["ts"] = data["ts"].copy()
    data["ts"][list(poison)] += 10 * 365 * 86_400_000
    if kind == "calendar-tz-column":
        # Meters in two zones; every 1,000th row names the other zone, 2 hours ahead: invalid,
        # yet its time moves the watermark (as at the source), on Ray as locally.
        zones = np.array(["Europe/Berlin", "America/New_York"], dtype=object)
        wrong = np.arange(2_500, len(data["ts"]), 1_000)  # no meter's first row
        flip = np.zeros(len(data["ts"]), dtype=np.int64)
        flip[wrong] = 1
        data["tz"] = zones[(data["meter_id"] + flip) % 2]
        data["ts"][wrong] += 2 * 3_600_000
    window, lateness = {
        "tumbling": (ps.windows.Tumbling("15m"), "5m"),
        "sliding": (ps.windows.Sliding("30m", "15m"), "10m"),
        "session": (ps.windows.Session("20m"), "10m"),
        "calendar": (ps.windows.Calendar("day", tz="Europe/Berlin"), "0s"),
        "calendar-tz-column": (ps.windows.Calendar("day", tz_column="tz"), "2h"),
        "global-event-time": (ps.windows.Global(ps.triggers.EventTimeInterval("30m"), "purging"), "0s"),
    }[kind]
    flow = ps.Flow(f"ray-late-{kind}")
    s = flow.source(make(data, batch_size=batch_size, **kw),
                    time=ps.EventTime("ts", unit="ms", max_out_of_orderness="1m", max_future="1d"))
    res = s.key_by("meter_id").window(window, allowed_lateness=lateness).aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh"))
    for name, stream in (("out", res), ("late", res.late()), ("invalid", res.invalid())):
        stream.sink(ps.sinks.Collect(name) if out is None else ps.sinks.Files(os.path.join(out, name), name=name))
    return flow


@pytest.mark.parametrize("kind", ["tumbling", "sliding", "session", "calendar", "calendar-tz-column",
                                  "global-event-time"])
def test_late_rows_on_ray_are_the_local_runtimes_row_for_row(kind):
    # Each window actor holds some keys of the one partition; the rows' watermark floors (the
    # partition's largest time before each row, whichever actor took it) make every actor judge
    # every row against the watermark the local runtime's one operator judges it by. A local
    # batch is what a round reads (two 2,000-row batches), so late updates coalesce alike.
    # Late updates of one batch may coalesce into one emission (DESIGN.md): an engine emits
    # its pending updates when the watermark fires something, and an actor's engine holds
    # fewer keys, so it fires at fewer rows. The rows fired on time, each window's last row and
    # the windows that got updates are the local runtime's.
    local = late_flow(kind, ROUND).run()
    dist = late_flow(kind, 2_000).run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND))
    assert canon(dist["late"]) == canon(local["late"])
    assert canon(dist["invalid"]) == canon(local["invalid"])
    assert len(local["invalid"]) == (30 if kind == "calendar-tz-column" else 2)  # clocks ahead, zones wrong
    on_time = [canon(r["out"].filter(~r["out"]["update"])) for r in (local, dist)]
    assert on_time[0] == on_time[1] and len(on_time[0]) > 100
    assert final_rows(dist["out"]) == final_rows(local["out"])
    updated = [{(r[0], r[-2]) for r in final_rows(r["out"]) if r[3]} for r in (local, dist)]
    assert updated[0] == updated[1]
    assert len(local["late"]) > 20 or kind.startswith("global")
    if kind in ("tumbling", "sliding", "session"):
        assert len(local["late"]) > 300 and len(updated[0]) > 100, (len(local["late"]), len(updated[0]))


@pytest.mark.parametrize("after", [2, 3])
def test_late_rows_on_ray_after_a_restore_are_the_local_runtimes(tmp_path, after):
    # A run that fails mid-way, resumed from its checkpoint (at parallelism 2, and rescaled to
    # 3): the sources' floors start again from the largest times the checkpoint's actors hold.
    # Every read begins with a clock 10 years ahead, so the first row after the restore is one:
    # judged from no earlier time, it would count, and make every later row late.
    poison = range(ROUND, 30_000, ROUND)
    local = late_flow("tumbling", ROUND, poison=poison).run()
    assert len(local["invalid"]) == len(poison)
    resumed_like_local(tmp_path, after, local, lambda out, fail: late_flow(
        "tumbling", 2_000, Flaky if fail else ps.sources.Arrays, out, poison=poison, **({"fail_after": 9} if fail else {})))


def resumed_like_local(tmp_path, after, local, flow_of):
    """Runs flow_of(out, True) on Ray at parallelism 2 until its source fails mid-way, then
    flow_of(out, False) resumed from its checkpoint at parallelism `after`; the late, invalid
    and on-time rows are the local run's."""
    out, ckpt = str(tmp_path / "out"), str(tmp_path / "ckpt")
    failing = flow_of(out, True)
    with pytest.raises(Exception, match="source went away"):
        failing.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND),
                    checkpoints=ckpt, guarantee="exactly_once", checkpoint_every=2)
    some = "late" if len(local["late"]) else "out"  # a global window's rows are never late here
    assert 0 < len(ps.sinks.Files.read(os.path.join(out, some))) < len(local[some])
    # The checkpoint holds where the window's watermark began (SourceWorker.marks' "first").
    _, payload = CheckpointStore(ckpt).latest()
    assert list(payload["first"]) == [n.id for n in failing._nodes if n.kind == "window"]
    res = flow_of(out, False).run(runtime=ps.runtimes.Ray(parallelism=after, key_groups=16, round_rows=ROUND),
                                  checkpoints=ckpt, resume=True, guarantee="exactly_once", checkpoint_every=2)
    assert res.resumed_from is not None
    got = {name: ps.sinks.Files.read(os.path.join(out, name)) for name in ("out", "late", "invalid")}
    assert canon(got["late"]) == canon(local["late"])
    assert canon(got["invalid"]) == canon(local["invalid"])
    assert canon(got["out"].filter(~got["out"]["update"])) == canon(local["out"].filter(~local["out"]["update"]))


class Partitioned(ps.sources.Source):
    """The rows in three partitions, read in turns a batch at a time (one partition per read, as
    a Kafka topic's are): the keys actor 1 owns (parallelism 2, 16 key groups) in partition 2,
    whose clocks run 40 minutes behind, the rest in partitions 0 and 1 by key. So actor 0 never
    takes a row of partition 2, which holds the watermark back at every row of the local
    runtime's one operator."""

    replayable = True
    name = "partitioned"

    def __init__(self, data, batch_size, fail_after=None):
        self.data, self.batch_size, self.fail_after = data, batch_size, fail_after

    def partitions(self):
        return [0, 1, 2]

    def read(self, position=None):
        keys = self.data["meter_id"]
        owner = {int(k): ps.runtimes.key_owner(int(k), ("meter_id",), 2, 16) for k in np.unique(keys)}
        part = np.where(np.array([owner[int(k)] for k in keys]) == 1, 2, keys % 2)
        rows = [np.flatnonzero(part == p) for p in range(3)]
        reads = [(p, rows[p][i:i + self.batch_size]) for i in range(0, len(keys), self.batch_size) for p in range(3)]
        reads = [(p, idx) for p, idx in reads if len(idx)]
        for k in range(0 if position is None else int(position), len(reads)):
            if self.fail_after is not None and k == self.fail_after:
                raise ConnectionError("source went away")
            p, idx = reads[k]
            batch = {c: v[idx] for c, v in self.data.items()}
            if p == 2:
                batch["ts"] = batch["ts"] - 40 * 60_000
            yield ps.Batch(batch), k + 1, p

    def fingerprint(self):
        return f"partitioned:{self.batch_size}"


@pytest.mark.parametrize("kind", ["tumbling", "session", "calendar", "global-event-time"])
def test_late_rows_of_several_partitions_on_ray_are_the_local_runtimes(kind):
    # Each actor's operators learn, before a read, how far the source's other partitions have
    # got (SourceWorker.marks), and the read's floors are judged against what those allow: so
    # a partition whose rows all went to the other actor holds back each actor's watermark as
    # the local runtime's one operator's. Without the marks, 321 rows were late on Ray against
    # 8,902 locally (tumbling).
    local = late_flow(kind, 2_000, Partitioned).run()
    dist = late_flow(kind, 2_000, Partitioned).run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16,
                                                                           round_rows=ROUND))
    assert_judged_alike(local, dist, kind)


def assert_judged_alike(local, dist, kind):
    """A Ray run's late and invalid rows (2 locally), its on-time rows and each window's last
    row are the local run's; over 100 rows late locally, but for global windows."""
    assert canon(dist["late"]) == canon(local["late"])
    assert canon(dist["invalid"]) == canon(local["invalid"]) and len(local["invalid"]) == 2
    on_time = [canon(r["out"].filter(~r["out"]["update"])) for r in (local, dist)]
    assert on_time[0] == on_time[1] and len(on_time[0]) > 100
    assert final_rows(dist["out"]) == final_rows(local["out"])
    assert len(local["late"]) > 100 or kind.startswith("global")


def union_late_flow(kind, batch_sizes=(2_000, 1_500, 2_500), lags_min=(0, 40, 15), max_future="1d", split="rows",
                    out=None, fail_after=None):
    """Three sources unioned into one window, each with rows of one delayed stream (as
    late_flow's), its clocks `lags_min` minutes behind and batches of its own size; clocks 10
    years ahead at two rows of the first. `split` "rows": every third row each; "owner": the
    second source holds exactly the keys that actor 1 owns (parallelism 2, 16 key groups), the
    others the rest, a row each in turn. A source that lags holds the union's watermark back as
    far as it has got, row by row, in the order the local runtime takes the sources' batches
    (one of each in turn). `out`: Files sinks there; `fail_after`: the first source fails after
    that many batches (Flaky)."""
    data = dict(meter_readings(30_000, 300, seed=7, max_delay_ms=45 * 60_000, start_ms=1_735_740_000_000))
    if split == "rows":
        rows = [np.arange(i, len(data["ts"]), 3) for i in range(3)]
    else:
        owner = {int(k): ps.runtimes.key_owner(int(k), ("meter_id",), 2, 16) for k in np.unique(data["meter_id"])}
        ones = np.array([owner[int(k)] == 1 for k in data["meter_id"]])
        rest = np.flatnonzero(~ones)
        rows = [rest[0::2], np.flatnonzero(ones), rest[1::2]]
    flow = ps.Flow(f"ray-union-{kind}")
    streams = []
    for i, (size, lag) in enumerate(zip(batch_sizes, lags_min)):
        part = {k: v[rows[i]].copy() for k, v in data.items()}
        part["ts"] -= lag * 60_000
        if i == 0:
            part["ts"][[2_700, 5_600]] += 10 * 365 * 86_400_000
        source = (Flaky(part, fail_after=fail_after, batch_size=size, name=f"u{i}") if i == 0 and fail_after
                  else ps.sources.Arrays(part, batch_size=size, name=f"u{i}"))
        streams.append(flow.source(source,
                                   time=ps.EventTime("ts", unit="ms", max_out_of_orderness="1m",
                                                     max_future=max_future)))
    return union_window(flow, streams, kind, out)


def union_window(flow, streams, kind, out=None):
    """`streams` unioned into one window of `kind` by meter, its results, late and invalid
    rows into sinks ("out", "late", "invalid": Collect, or Files under `out`); returns `flow`."""
    window, lateness = {
        "tumbling": (ps.windows.Tumbling("15m"), "5m"),
        "session": (ps.windows.Session("20m"), "10m"),
        "calendar": (ps.windows.Calendar("day", tz="Europe/Berlin"), "0s"),
        "global-event-time": (ps.windows.Global(ps.triggers.EventTimeInterval("30m"), "purging"), "0s"),
        "count": (ps.windows.CountSliding(6, 3), "0s"),
    }[kind]
    res = streams[0].union(*streams[1:]).key_by("meter_id").window(window, allowed_lateness=lateness).aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh"))
    for name, stream in (("out", res), ("late", res.late()), ("invalid", res.invalid())):
        stream.sink(ps.sinks.Collect(name) if out is None else ps.sinks.Files(os.path.join(out, name), name=name))
    return flow


@pytest.mark.parametrize("kind,split,round_rows", [
    ("tumbling", "rows", ROUND), ("session", "rows", ROUND), ("calendar", "rows", ROUND),
    ("global-event-time", "rows", ROUND), ("count", "rows", ROUND), ("tumbling", "owner", ROUND),
    ("session", "owner", ROUND), ("global-event-time", "owner", ROUND),
    # four batches of every source a read: routed in one pass, each actor's rows sliced per batch
    ("tumbling", "owner", 10_000), ("global-event-time", "owner", 10_000), ("count", "rows", 10_000)])
def test_late_rows_of_a_union_on_ray_are_the_local_runtimes(kind, split, round_rows):
    # Three sources, one 40 and one 15 minutes behind the first, with batches of three sizes,
    # unioned into one window: every actor takes the sources' batches in the local runtime's
    # order (one of each in turn: reads hold the same number of batches of every source), and
    # after each batch raises that source's partition to how far it has got (whichever actor
    # took its rows), so the lagging sources hold back each actor's watermark, row by row, as
    # the local runtime's one operator's; with split "owner" actor 0 never takes a row of the
    # source 40 minutes behind. Before, reads took whole batches up to round_rows rows of each
    # source (so a read held one batch of one and two of another), and an actor took a round's
    # reads by event time: 6,354 rows late on Ray against 6,024 locally (tumbling, rows).
    local = union_late_flow(kind, split=split).run()
    dist = union_late_flow(kind, split=split).run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16,
                                                                          round_rows=round_rows))
    assert dist.metrics["ray"]["max_future_differs"] == {}  # no source got max_future (1 day) past the others
    if kind == "count":
        assert canon(dist["late"]) == canon(local["late"])
        assert canon(dist["invalid"]) == canon(local["invalid"]) and len(local["invalid"]) == 0
        assert canon(dist["out"]) == canon(local["out"]) and len(local["out"]) > 1_000
        return
    assert_judged_alike(local, dist, kind)


@pytest.mark.parametrize("kind,round_rows", [("tumbling", ROUND), ("session", 10_000), ("global-event-time", 10_000)])
def test_late_rows_of_a_partitioned_source_in_a_union_on_ray_are_the_local_runtimes(kind, round_rows):
    # A source of three partitions (read in turns, one batch each; the third, 40 minutes
    # behind, holds only actor 1's keys) unioned with a plain one 15 minutes behind: an
    # aligned read holds batches of several partitions, each step its own channel and marks.
    data = dict(meter_readings(30_000, 300, seed=7, max_delay_ms=45 * 60_000, start_ms=1_735_740_000_000))
    plain = {k: v[1::2].copy() for k, v in data.items()}
    plain["ts"] -= 15 * 60_000
    plain["ts"][[5_000, 9_000]] += 10 * 365 * 86_400_000  # once every partition has sent

    def flow():
        f = ps.Flow(f"ray-union-partitioned-{kind}")
        time_ = ps.EventTime("ts", unit="ms", max_out_of_orderness="1m", max_future="1d")
        streams = [f.source(Partitioned({k: v[0::2] for k, v in data.items()}, 1_500), time=time_),
                   f.source(ps.sources.Arrays(plain, batch_size=2_000, name="plain"), time=time_)]
        return union_window(f, streams, kind)

    local = flow().run()
    dist = flow().run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=round_rows))
    assert_judged_alike(local, dist, kind)


def test_a_source_max_future_past_the_union_it_feeds_is_warned_of():
    # max_future 30 minutes, one source 40 minutes behind: each reader applies the guard
    # against its own source's partitions, the local runtime's one operator against the
    # union's watermark, which the lagging source holds back; so rows may count on Ray that
    # the local runtime refuses. The driver sees it from the reads' marks and says so, as it
    # does where a reader refused a row before every source had sent (test_floors.py has both
    # and a Hypothesis test: unless the driver warns, the rows are judged as locally).
    flow = union_late_flow("tumbling", max_future="30m")
    with pytest.warns(RuntimeWarning, match=r"source 'u[0-2]' reached event time .* more than max_future \(1800000000000 "
                                            r"ns\) past the watermark of the union it feeds"):
        dist = flow.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND))
    differs = dist.metrics["ray"]["max_future_differs"]
    assert list(differs) == [n.id for n in flow._nodes if n.kind == "window"] and next(iter(differs.values())) > 10, differs


@pytest.mark.parametrize("kind,after", [("tumbling", 2), ("tumbling", 3), ("global-event-time", 3)])
def test_late_rows_of_a_union_on_ray_after_a_restore_are_the_local_runtimes(tmp_path, kind, after):
    # A union (split "owner": actor 0 takes no row of the source 40 minutes behind) that
    # fails mid-way, resumed at parallelism 2 and rescaled to 3: reads start again aligned at
    # the checkpoint's positions (a whole number of reads of every source), each source's
    # floors from the largest times the actors hold, and the watermark's start (where a
    # global window's event-time trigger starts its schedule) from the checkpoint.
    sizes = (400, 300, 500)  # 8 batches of each source a read (ROUND // 500)
    local = union_late_flow(kind, sizes, split="owner").run()
    assert len(local["invalid"]) == 2
    resumed_like_local(tmp_path, after, local, lambda out, fail: union_late_flow(
        kind, sizes, split="owner", out=out, fail_after=18 if fail else None))


def test_a_restored_reader_keeps_where_the_watermark_began():
    # Where a window's watermark began (a global window's event-time trigger starts there) is
    # part of the checkpoint: a reader restored mid-run sends the one it was given, not the
    # watermark of its first read since.
    f = late_flow("global-event-time", 2_000, Partitioned)
    src = f._nodes[0].id
    wid = next(n.id for n in f._nodes if n.kind == "window")
    fresh = ps.runtimes.SourceWorker(f, src, 2, 16, round_rows=ROUND)
    marks = [fresh.next()[1][3] for _ in range(4)]
    assert wid not in marks[1]["first"]  # partition 2 had sent nothing: no watermark yet
    began = marks[2]["first"][wid]
    assert marks[3]["first"][wid] == began
    carry = {"max": dict(fresh.carry), "first": {wid: began}}
    restored = ps.runtimes.SourceWorker(f, src, 2, 16, position=4, round_rows=ROUND, carry=carry)
    assert restored.next()[1][3]["first"][wid] == began
    forgot = ps.runtimes.SourceWorker(f, src, 2, 16, position=4, round_rows=ROUND, carry={"max": carry["max"]})
    assert forgot.next()[1][3]["first"][wid] > began


@pytest.mark.parametrize("after", [2, 3])
def test_late_rows_of_several_partitions_on_ray_after_a_restore_are_the_local_runtimes(tmp_path, after):
    # Resumed from a checkpoint taken mid-run (at parallelism 2, and rescaled to 3): the
    # readers' floors and marks start again from the largest times the checkpoint's actors hold
    # per partition.
    local = late_flow("tumbling", 2_000, Partitioned).run()
    resumed_like_local(tmp_path, after, local, lambda out, fail: late_flow(
        "tumbling", 2_000, Partitioned, out, fail_after=8 if fail else None))


def final_rows(out):
    """Each key's rows that no later row of that key supersedes (a later row of the same
    window, or of a session that grew over it), canonical; as (key, kwh, n, update, start, end)."""
    by_key: dict = {}
    for row in zip(out["meter_id"].tolist(), np.round(out["kwh"], 9).tolist(), out["n"].tolist(),
                   out["update"].tolist(), out["window_start"].tolist(), out["window_end"].tolist()):
        by_key.setdefault(row[0], []).append(row)
    final = []
    for rows in by_key.values():
        final += [r for i, r in enumerate(rows) if not any(q[4] <= r[4] and r[5] <= q[5] for q in rows[i + 1:])]
    return sorted(final)


@pytest.mark.parametrize("ahead", [1, 4])
def test_any_number_of_rounds_ahead_gives_the_local_results(ahead):
    local = meter_flow("session").run()
    dist = meter_flow("session").run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND,
                                                            ahead=ahead))
    assert canon(dist["out"]) == canon(local["out"])


def test_sources_in_their_own_actors_give_the_same_results():
    local = meter_flow("sliding").run()
    dist = meter_flow("sliding").run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND,
                                                             colocate=False))
    assert canon(dist["out"]) == canon(local["out"])


class SlowOpen(ps.sources.Arrays):
    """An Arrays source whose reading starts `delay` seconds late (a connection being made)."""

    def __init__(self, data, delay=0.0, **kw):
        super().__init__(data, **kw)
        self.delay = delay

    def read(self, position=None):
        time.sleep(self.delay)
        yield from super().read(position)


@pytest.mark.parametrize("colocate", [True, False])
def test_a_sources_opening_counts_in_the_start_not_in_the_rounds(colocate):
    # metrics["ray"]: start_s is the actors' start, each source's opening and first read
    # included; run_s the rounds. Sources in actors of their own used to open in the first
    # round (the scaling benchmark saw 3.3 M events/s "in the rounds" against 23.4 colocated).
    delay = 2.0

    def flow(make, **kw):
        f = ps.Flow("ray-slow-open")
        sources(f, make=make, **kw).key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="5m") \
            .aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count()).sink(ps.sinks.Collect("out"))
        return f

    local = flow(ps.sources.Arrays).run()
    res = flow(SlowOpen, delay=delay).run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND,
                                                                 colocate=colocate))
    assert res.metrics["ray"]["start_s"] >= delay
    assert canon(res["out"]) == canon(local["out"])


def test_more_sources_than_actors_straight_into_the_window():
    # Three sources unioned straight into the window (a read's batches routed as chunks, not
    # joined) at parallelism 2: actor 0 reads two of them, and its rounds hand back both
    # next reads.
    def flow():
        f = ps.Flow("ray-three")
        sources(f, n=3).key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="5m").aggregate(
            kwh=ps.agg.sum("kwh"), n=ps.agg.count()).sink(ps.sinks.Collect("out"))
        return f

    f = flow()
    assert all(ps.runtimes.SourceWorker(f, n.id, 2, 16, read=False).direct for n in f._nodes if n.kind == "source")
    local = flow().run()
    dist = f.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND))  # two batches a read
    assert len(local["out"]) > 100 and canon(dist["out"]) == canon(local["out"])
    assert dist.metrics["ray"]["rounds"] >= 4


def test_string_keys_and_an_unkeyed_window_run_on_ray():
    def flow():
        f = ps.Flow("ray-str")
        s = sources(f).map(lambda b: b.with_columns(meter=np.char.add("m-", b["meter_id"].astype(str)).astype(object)))
        s.key_by("meter").window(ps.windows.Tumbling("1h")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("m"))
        s.window(ps.windows.Tumbling("1h")).aggregate(load=ps.agg.sum("kwh"), d=ps.agg.count_distinct("meter_id")) \
            .sink(ps.sinks.Collect("load"))
        return f

    local, dist = flow().run(), flow().run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=8, round_rows=ROUND))
    assert canon(dist["m"]) == canon(local["m"]) and canon(dist["load"]) == canon(local["load"])
    assert dist["m"]["meter"][0].startswith("m-")


def test_exactly_once_when_a_window_actor_is_killed_mid_run(tmp_path):
    # The actors are pinned to a CPU each: the restarted one (a new process) is pinned again.
    local = meter_flow("sliding").run()["out"]
    out = str(tmp_path / "usage")
    before = segment_files()
    mine = sorted(os.sched_getaffinity(0))
    cpus = [[mine[0]], [mine[-1]]]
    res = meter_flow("sliding", ps.sinks.Files(out, name="usage")).run(
        runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=2_000, fail_worker_after=7, cpus=cpus),
        checkpoints=str(tmp_path / "ckpt"), guarantee="exactly_once", checkpoint_every=3)
    assert res.metrics["ray"]["recoveries"] == 1
    assert res.metrics["ray"]["cpus"] == cpus
    assert res.metrics["ray"]["transport"] == "shared_memory"
    assert segment_files() <= before  # the killed actor's segments too
    got = ps.sinks.Files.read(out)
    assert canon(got) == canon(local)  # nothing lost, nothing twice
    names = os.listdir(out)
    assert any("-w0." in n for n in names) and any("-w1." in n for n in names)


@pytest.mark.parametrize("before,after", [(2, 3), (3, 2)])
def test_a_checkpoint_restores_at_another_parallelism(tmp_path, before, after):
    out, load_out, ckpt = str(tmp_path / "usage"), str(tmp_path / "load"), str(tmp_path / "ckpt")

    def flow(fail_after=None, local=False):
        window, lateness = WINDOWS["tumbling"]
        f = ps.Flow("ray-rescale")
        s = (sources(f) if local else sources(f, make=Flaky, fail_after=fail_after)).filter(lambda b: b["kwh"] >= 0)
        usage = s.key_by("meter_id").window(window, allowed_lateness=lateness).aggregate(
            kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh"), p90=ps.agg.quantile("kwh", 0.9),
            mine=ps.agg.custom("kwh", init=np.zeros, update=np.add.reduceat, merge=np.add, finalize=lambda a: a))
        # Unkeyed: one key group, whose state a rescale copies to every new actor that overlaps
        # its old owner's range; only the group's new owner may emit it.
        load = s.window(ps.windows.Tumbling("1h")).aggregate(load=ps.agg.sum("kwh"), n=ps.agg.count())
        usage.sink(ps.sinks.Collect("usage") if local else ps.sinks.Files(out, name="usage"))
        load.sink(ps.sinks.Collect("load") if local else ps.sinks.Files(load_out, name="load"))
        return f

    local = flow(local=True).run()
    with pytest.raises(Exception, match="source went away"):
        flow(6).run(runtime=ps.runtimes.Ray(parallelism=before, key_groups=16, round_rows=ROUND), checkpoints=ckpt,
                    guarantee="exactly_once", checkpoint_every=2)
    first = ps.sinks.Files.read(out)
    assert 0 < len(first) < len(local["usage"])
    res = flow().run(runtime=ps.runtimes.Ray(parallelism=after, key_groups=16, round_rows=ROUND), checkpoints=ckpt,
                     resume=True, guarantee="exactly_once", checkpoint_every=2)
    assert res.resumed_from is not None
    assert canon(ps.sinks.Files.read(out)) == canon(local["usage"])
    assert canon(ps.sinks.Files.read(load_out)) == canon(local["load"])


@pytest.mark.parametrize("after", [3, 1])
@pytest.mark.parametrize("kind", [*WINDOWS, "calendar_tz", "custom", "unkeyed"])
def test_a_rescaled_actor_keeps_only_its_own_keys_where_the_state_allows(kind, after):
    # In process, without Ray: actors at parallelism 2 take the first half of the readings,
    # their snapshots restart `after` actors, which take the rest; the union of what they emit
    # is the local run's. Every window kind's state is split (each new actor holds its own keys
    # only), a Python aggregation's accumulators with it. At 1 the one actor holds both old
    # actors' slots, and its rows come without their key groups (it computes them to split).
    data = DATA
    if kind == "calendar_tz":  # a zone per meter: the keys' zones move with them
        data = {**DATA, "tz": np.where(DATA["meter_id"] % 3 == 0, "America/New_York", "Europe/Berlin").astype(object)}
        window, lateness = ps.windows.Calendar("day", tz_column="tz"), "0s"
    else:
        window, lateness = WINDOWS["tumbling" if kind in ("custom", "unkeyed") else kind]
    aggs = {"kwh": ps.agg.sum("kwh"), "n": ps.agg.count(), "p90": ps.agg.quantile("kwh", 0.9)}
    if kind == "custom":
        aggs["mine"] = ps.agg.custom("kwh", init=np.zeros, update=np.add.reduceat, merge=np.add, finalize=lambda a: a)

    def flow(data):
        f = ps.Flow("split")
        s = f.source(ps.sources.Arrays(data, batch_size=2_000, name="all"), time=ps.EventTime("ts", **TIME))
        s = s if kind == "unkeyed" else s.key_by("meter_id")
        s.window(window, allowed_lateness=lateness if kind not in ("count", "global") else "0s") \
            .aggregate(**aggs).sink(ps.sinks.Collect("out"))
        return f

    def feed(workers, data, slots):
        f = flow(data)
        src = f._nodes[0].id
        reader = ps.runtimes.SourceWorker(f, src, len(workers), 16, round_rows=4_000)
        for w in workers:
            w.start({}, slots)
        for parts in reads(reader):
            for w in workers:
                w.round({}, [0], parts)

    half = len(data["ts"]) // 2
    first = [ps.runtimes.WindowWorker(flow(data), j, 2, 16) for j in range(2)]
    feed(first, {k: v[:half] for k, v in data.items()}, None)
    slots = {}
    for w in first:
        for wid, entries in w.snapshot().items():
            slots.setdefault(wid, []).extend(entries)
    out = [b for w in first for b in w.pre_commit(0, None)[next(iter(w.pending))]]
    second = [ps.runtimes.WindowWorker(flow(data), j, after, 16) for j in range(after)]
    feed(second, {k: v[half:] for k, v in data.items()}, slots)
    held = [(s.pure, s.op.engine.num_keys if s.op.engine is not None else 0, s.lo, s.hi)
            for w in second for ss in w.slots.values() for s in ss]
    stores = [(s.lo < 8, s.op._py.stores[0]) for w in second for ss in w.slots.values() for s in ss  # by old actor
              if s.op._py is not None]
    for w in second:
        w.finish()
        sid = next(iter(w.pending))
        out += w.close()[sid]
    got = ps.Batch.concat([b for b in out if len(b)])
    assert canon(got) == canon(flow(data).run()["out"])
    assert all(pure for pure, *_ in held)
    if kind == "unkeyed":  # its one key is group 0: only group 0's owner took the state
        assert [lo for _, _, lo, _hi in held] == ([0, 6, 11] if after == 3 else [0, 8])
        assert [s.op.engine is not None for w in second for ss in w.slots.values() for s in ss] == \
            [True] + [False] * (len(held) - 1)
        return
    groups = ps.runtimes.key_groups(ps.Batch({"meter_id": np.unique(data["meter_id"])}), ("meter_id",), 16)
    assert sum(n for _, n, *_ in held) == len(groups)  # each key held once, by its owner
    for _, n, lo, hi in held:
        assert n <= int(((groups >= lo) & (groups < hi)).sum())
    if kind == "custom":  # each of an old operator's accumulators kept once, by the actor whose rows use it
        for origin in (True, False):
            handles = [set(st.handles.tolist()) for o, st in stores if o == origin]
            assert sum(len(h) for h in handles) == len(set().union(*handles)) > 0


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("kind", ["count", "tumbling"])
def test_batches_a_filter_empties_pass_the_window_actors(kind, parallelism):
    # In process, without Ray: a filter drops every third hour of readings, so whole batches
    # (1,000 rows: ~36 minutes) come out of it empty, and at parallelism 1 reach the actor as
    # messages of their own (count windows take rows in arrival order, batch by batch); the
    # union of what the actors emit is still the local run's.
    window, lateness = WINDOWS[kind]

    def flow():
        f = ps.Flow("empty")
        f.source(ps.sources.Arrays(DATA, batch_size=1_000, name="all"), time=ps.EventTime("ts", **TIME)) \
            .filter(lambda b: b["ts"] // 3_600_000 % 3 != 0).key_by("meter_id") \
            .window(window, allowed_lateness=lateness).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count()) \
            .sink(ps.sinks.Collect("out"))
        return f

    f = flow()
    reader = ps.runtimes.SourceWorker(f, f._nodes[0].id, parallelism, 16, round_rows=4_000)
    workers = [ps.runtimes.WindowWorker(flow(), j, parallelism, 16) for j in range(parallelism)]
    for w in workers:
        w.start({}, None)
    empty = 0
    for parts in reads(reader):
        msgs = [(rows, groups) for part in parts for step in part for _wid, rows, groups in step]
        empty += sum(len(rows) == 0 for rows, _ in msgs)
        # one actor: rows come without their key groups (it holds one slot; nothing to split)
        assert all((groups is None) == (parallelism == 1) for _, groups in msgs)
        for w in workers:
            w.round({}, [0], parts)
    out = []
    for w in workers:
        w.finish()
        sid = next(iter(w.pending))
        out += w.close()[sid]
    assert (empty > 0) == (parallelism == 1)  # routing sends no empty parts
    assert canon(ps.Batch.concat([b for b in out if len(b)])) == canon(flow().run()["out"])


def _refaults() -> int:
    """Page faults while this thread writes a 64 MB array right after freeing one of that size (the
    thread's own: a Ray worker's other threads fault pages too)."""
    import resource

    a = np.ones(8 << 20)
    del a
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    b = np.ones(8 << 20)
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    del b
    return faults


def test_window_actors_reuse_freed_batch_memory():
    from pystream._ray_driver import ActorWindowWorker, _graph

    f = ps.Flow("pages")
    sources(f).key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()) \
        .sink(ps.sinks.Discard("n"))
    actor = ray.remote(ActorWindowWorker).remote(_graph(f), 0, 1, 16)
    in_actor = ray.get(actor.__ray_call__.remote(lambda _self: _refaults()))
    ray.kill(actor)
    # The same in a fresh Python with glibc's defaults: the array's pages come back from the
    # kernel (fresh mmap), one fault per page or huge page.
    code = f"import numpy as np\n{inspect.getsource(_refaults)}\nprint(_refaults())"
    plain = int(subprocess.check_output([sys.executable, "-c", code]))
    assert plain > 16  # what this measures: a 64 MB array in fresh pages
    assert in_actor <= 8, (in_actor, plain)


def test_a_reading_actor_reads_ahead_in_order_and_a_failed_read_ahead_surfaces_on_the_next_read():
    # In process: the actor's reads (each taken on its thread while the previous one was
    # being windowed) are the source's reads, in order; a read that fails ahead of time
    # raises when the driver asks for it, after every read before it was returned whole.
    def flow(source):
        f = ps.Flow("ahead")
        f.source(source, time=ps.EventTime("ts", **TIME)).key_by("meter_id").window(ps.windows.Tumbling("15m")) \
            .aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("n"))
        return f

    def reads(read):
        rows = []
        while True:
            parts, (_label, _position, done, _marks) = read()
            if done:
                return rows
            rows.append(sum(len(b) for msgs in parts[1] for _wid, b, _g in msgs))  # actor 1's part

    f = flow(ps.sources.Arrays(DATA, batch_size=2_000, name="all"))
    src = f._nodes[0].id
    want = reads(ps.runtimes.SourceWorker(f, src, 2, 16, round_rows=4_000).next)

    def read():
        ref, meta = w.read_source(src)
        if meta[2]:
            assert not w.ahead[src]  # nothing is read past the end
            return None, meta
        assert len(w.ahead[src]) == w.depth  # the next reads are under way
        parts = ray.get(ref)  # the other actors' parts, put into Ray's object store
        assert parts[0] == src  # actor 0's own part stays here
        return parts, meta

    for depth in (1, 3):
        w = ps.runtimes.WindowWorker(f, 0, 2, 16)
        w.open_source(f, src, 2, 16, round_rows=4_000, depth=depth)
        assert w.depth == depth
        assert reads(read) == want and len(want) == 10
        w.close()

    seen = set()

    class Threads(ps.sources.Arrays):  # notes the thread each batch is read on
        def read(self, position=None):
            for item in super().read(position):
                seen.add(threading.get_ident())
                yield item

    f = flow(Threads(DATA, batch_size=2_000, name="all"))
    w = ps.runtimes.WindowWorker(f, 0, 2, 16)
    w.open_source(f, src, 2, 16, round_rows=4_000)
    reads(read)
    assert len(seen) == 1 and threading.get_ident() not in seen  # one thread, not the task's
    w.close()

    f = flow(Flaky(DATA, fail_after=5, batch_size=2_000, name="all"))  # batches 0-4: reads 0-1, half of 2
    w = ps.runtimes.WindowWorker(f, 0, 2, 16)
    w.open_source(f, src, 2, 16, round_rows=4_000)
    got = [w.read_source(src) for _ in range(2)]
    for (ref, _meta), own in zip(got, w.kept[src]):  # two whole batches each
        assert sum(len(b) for msgs in ray.get(ref)[1] + own for _wid, b, _g in msgs) == 4_000
    with pytest.raises(ConnectionError, match="source went away"):
        w.read_source(src)


@pytest.mark.skipif(not _shm.available(), reason="no /dev/shm")
@pytest.mark.parametrize("depth", [1, 2])
def test_opening_a_source_reads_once_and_makes_the_segments_its_reads_will_hold(depth):
    # In process: open_source takes the first read at once and, sized by it, makes 3 * depth
    # segments (reads done ahead, in rounds in flight, collected but not yet released), so
    # their pages' first writes fall in the actors' start, not in rounds. The reads the
    # driver then takes are the source's reads, in order, the first one included.
    f = ps.Flow("provision")
    f.source(ps.sources.Arrays(DATA, batch_size=2_000, name="all"), time=ps.EventTime("ts", **TIME)) \
        .key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("n"))
    src = f._nodes[0].id
    positions = []
    w = ps.runtimes.SourceWorker(f, src, 2, 16, round_rows=ROUND)
    while not positions or not positions[-1][2]:
        positions.append(w.next()[1])
    prefix = f"pystream-test-{os.getpid()}-provision-"
    w = ps.runtimes.WindowWorker(f, 0, 2, 16)
    try:
        w.open_source(f, src, 2, 16, round_rows=ROUND, depth=depth, segments=prefix)
        pool = w.pools[src]
        assert len(w.ahead[src]) == 1 and w.ahead[src][0].done()  # the first read, taken while opening
        assert pool.made == 3 * depth and len(pool.free) == 3 * depth - 1 and pool.largest > ROUND * 16
        got = []
        while not got or not got[-1][2]:
            shared, meta = w.read_source(src)
            got.append(meta)
            assert meta[2] or shared.names  # routed into the segments
        assert got == positions
    finally:
        w.close()
    assert not [n for n in os.listdir(_shm.DIRECTORY) if n.startswith(prefix)]

    # A first read that fails provisions nothing; it fails where the driver takes it.
    f = ps.Flow("provision-fails")
    f.source(Flaky(DATA, fail_after=0, batch_size=2_000, name="all"), time=ps.EventTime("ts", **TIME)) \
        .key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("n"))
    w = ps.runtimes.WindowWorker(f, 0, 2, 16)
    try:
        w.open_source(f, src, 2, 16, round_rows=ROUND, depth=depth, segments=prefix)
        assert w.pools[src].made == 0
        with pytest.raises(ConnectionError, match="source went away"):
            w.read_source(src)
    finally:
        w.close()


def test_a_round_takes_whole_batches_of_one_partition_up_to_round_rows():
    clock = ps.testing.ManualClock()
    b = {"meter_id": np.arange(10), "ts": np.arange(10), "kwh": np.ones(10)}
    steps = [("p0", b), ("p0", b), ("p0", b), ("p1", b), ps.testing.Advance("1s"), ("p1", b), ("p0", b)]
    f = ps.Flow("rounds")
    f.source(ps.testing.Script(clock, steps), time=ps.EventTime("ts", unit="ms")).key_by("meter_id") \
        .window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("out"))
    src = f._nodes[0].id
    w = ps.runtimes.SourceWorker(f, src, 2, 16, round_rows=25)
    rounds = []
    while True:
        parts, (label, position, done, _marks) = w.next()
        if done:
            break
        rounds.append((label, position, sum(len(m[1]) for steps in parts for msgs in steps for m in msgs)))
    # 25 rows: three 10-row batches of p0 (whole batches, the last one over the limit); a
    # partition change or a no-data step ends a round early, and the step after it starts the next.
    assert rounds == [("p0", 3, 30), ("p1", 4, 10), (None, 5, 0), ("p1", 6, 10), ("p0", 7, 10)]


def test_one_actors_keys_spread_over_its_whole_key_index():
    # The native key index (csrc/key_index.h) puts key k at mix64(k) & (size - 1), the same
    # mix key groups start from: if groups came from those low bits, every key of one actor
    # would share them and probe a fraction of the table (measured: 2x slower per row).
    from pystream.runtimes import _mix

    keys = np.arange(200_000)
    groups = ps.runtimes.key_groups(ps.Batch({"meter_id": keys}), ("meter_id",), 128)
    mine = keys[ps.runtimes.owner(groups, 8, 128) == 0]  # actor 0 of 8: ~25,000 keys
    slots = _mix(mine.astype(np.uint64)) & np.uint64(1023)
    assert len(np.unique(slots)) == 1024


def test_key_groups_are_the_same_in_every_process():
    batch = ps.Batch({"a": np.arange(-50, 50), "s": np.array([f"meter-{i}" for i in range(100)], dtype=object)})
    here = ps.runtimes.key_groups(batch, ("a", "s"), 128).tolist()
    code = ("import numpy as np, pystream as ps; b = ps.Batch({'a': np.arange(-50, 50), 's': np.array("
            "[f'meter-{i}' for i in range(100)], dtype=object)}); print(ps.runtimes.key_groups(b, ('a', 's'), 128).tolist())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/",
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert str(here) == there
    groups = ps.runtimes.key_groups(ps.Batch({"a": np.arange(100_000)}), ("a",), 128)
    counts = np.bincount(groups, minlength=128)
    assert counts.min() > 600 and counts.max() < 960  # 781 expected per group
    assert ps.runtimes.owner(127, 3, 128) == 2 and ps.runtimes.owner(42, 3, 128) == 0


def test_graphs_the_ray_runtime_refuses():
    rt = ps.runtimes.Ray(parallelism=2)
    f = ps.Flow("joined")
    s = sources(f).key_by("meter_id")
    a = s.window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"))
    b = s.window(ps.windows.Tumbling("1h")).aggregate(kwh=ps.agg.sum("kwh"))
    a.union(b).sink(ps.sinks.Collect("o"))
    with pytest.raises(ValueError, match="joins the outputs of several windows"):
        f.run(runtime=rt)
    f = ps.Flow("deduped union")
    sources(f).key_by("meter_id").dedupe("1h").key_by("meter_id").window(ps.windows.Tumbling("1h")).aggregate(
        n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    with pytest.raises(ValueError, match=r"op\(\) node \d+ takes the rows of several sources"):
        f.run(runtime=rt)
    f = ps.Flow("bypassed")
    s = sources(f, n=1).key_by("meter_id")
    s.dedupe("1h").union(s).key_by("meter_id").window(ps.windows.Tumbling("1h")).aggregate(
        n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    with pytest.raises(ValueError, match="window node \\d+ takes the outputs of several operators, or an operator's "
                                         "output and rows that bypass it"):
        f.run(runtime=rt)
    f = ps.Flow("no window")
    sources(f).sink(ps.sinks.Collect("raw"))
    with pytest.raises(ValueError, match="the flow has no window"):
        f.run(runtime=rt)
    with pytest.raises(ValueError, match="parallelism must be an int >= 1, got 0"):
        ps.runtimes.Ray(parallelism=0)
    with pytest.raises(ValueError, match=r"key_groups must be an int in parallelism \(4\)..65536, got 2"):
        ps.runtimes.Ray(parallelism=4, key_groups=2)
    with pytest.raises(ValueError, match="round_rows must be an int >= 1, got 0"):
        ps.runtimes.Ray(round_rows=0)
    with pytest.raises(ValueError, match="ahead must be an int >= 1, got 0"):
        ps.runtimes.Ray(ahead=0)


def queryable_flow(kind, make=ps.sources.Arrays, **kw):
    window, _ = WINDOWS[kind]
    flow = ps.Flow(f"q-{kind}")
    usage = sources(flow, make=make, **kw).key_by("meter_id").window(window).aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count(),
        mine=ps.agg.custom("kwh", init=np.zeros, update=np.add.reduceat, merge=np.add, finalize=lambda a: a))
    usage.queryable("usage", history_rows=1_000_000)
    return flow


@pytest.mark.parametrize("kind", ["tumbling", "session", "count", "global"])
def test_queryable_state_on_ray_answers_as_the_local_runtime_after_the_run(kind):
    """Every key's partial and fired rows, and top over the open and the last fired windows,
    as the local runtime answers them (count and global windows keep trailing partial rows)."""
    local = queryable_flow(kind)
    local.run()
    dist = queryable_flow(kind)
    dist.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND))
    meters = sorted(set(DATA["meter_id"].tolist()))
    for m in meters[::7]:
        a, b = local.query("usage", key=m, last=10_000), dist.query("usage", key=m, last=10_000)
        assert canon(a["last"]) == canon(b["last"]) and len(a["last"]) > 0, m
        assert canon(a["partial"]) == canon(b["partial"]), m
    everything = local.state("usage").partial()
    assert canon(dist.state("usage").partial()) == canon(everything)
    assert (len(everything) > 0) == (kind in ("count", "global"))
    for window in ("open", "fired"):
        want = local.state("usage").top("kwh", k=5, window=window)
        assert canon(dist.state("usage").top("kwh", k=5, window=window)) == canon(want), window
    # The newest fired rows of all keys: by the round they fired in, then window end (actors
    # fire side by side). All of them are the local runtime's; event-time windows fire in
    # order of their ends, so the newest 50 are those of the latest ends.
    fired = local.query("usage", last=10**7)["last"]
    assert canon(dist.query("usage", last=10**7)["last"]) == canon(fired)
    newest = dist.query("usage", last=50)["last"]
    assert len(newest) == 50 and set(canon(newest)) <= set(canon(fired))
    if kind in ("tumbling", "session"):
        assert newest["window_end"].min() == np.sort(fired["window_end"])[-50]
    d, w = dist.state("usage").describe(), local.state("usage").describe()
    assert d["num_keys"] == w["num_keys"] == len(meters) and d["watermark"] == w["watermark"]
    with pytest.raises(ps.query.QueryError, match="no key 10000000"):
        dist.query("usage", key=10_000_000)


def test_queryable_state_on_ray_answers_while_the_flow_runs_and_over_http():
    # 40 one-batch rounds of 500 rows per source, 0.1 s each: a run of seconds, queried all along.
    flow = queryable_flow("tumbling", make=ps.testing.Paced, pause=0.1, batch_size=500)
    import json
    import urllib.error
    import urllib.request

    seen, errors = [], []
    with flow.serve("127.0.0.1:0") as srv:
        th = threading.Thread(target=lambda: flow.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16,
                                                                                round_rows=500)), daemon=True)
        th.start()
        deadline = time.time() + 60
        while th.is_alive() and time.time() < deadline:
            try:
                st = flow.state("usage")
                if not flow.live.running:
                    time.sleep(0.01)
                    continue
                wm, part = st.watermark, st.partial()
                with urllib.request.urlopen(srv.url + "/api/state/usage/top?by=kwh&k=3", timeout=10) as r:
                    top = json.loads(r.read())
            except ps.query.NotStarted:
                time.sleep(0.01)
                continue
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                break
            if len(part):
                seen.append((wm, part, top))
                if len(seen) == 1:  # refused queries, answered by the actors: the rule, not a Ray traceback
                    with pytest.raises(urllib.error.HTTPError) as bad:
                        urllib.request.urlopen(srv.url + "/api/state/usage?key=x", timeout=10)
                    assert bad.value.code == 400 and json.loads(bad.value.read())["error"] == \
                        "key column 'meter_id' holds integers; 'x' is not one"
                    with pytest.raises(ps.query.QueryError, match="no key 123456789"):
                        flow.query("usage", key=123456789)
            time.sleep(0.05)
        th.join(60)
    assert not errors and not th.is_alive()
    assert len(seen) >= 3, len(seen)  # answered while running, with data in open windows (9 here)
    assert any(wm is not None for wm, _, _ in seen)
    for wm, part, top in seen:
        # Open windows only: none the watermark the actors stood at had closed.
        assert wm is None or (part["window_end"].astype(np.int64) - 1 > wm // 1_000_000).all()
        # (top came in a later call, after more rounds, maybe after the last, when every window
        # had fired: checked on its own) the 3 largest of one window
        kwh = [r["kwh"] for r in top["rows"]]
        assert len(kwh) in (0, 3) and kwh == sorted(kwh, reverse=True) and len({r["window_end"] for r in top["rows"]}) <= 1
    assert any(len(top["rows"]) == 3 for _, _, top in seen)
    final = flow.query("usage", last=1_000_000)
    assert len(final["partial"]) == 0 and len(final["last"]) > 100  # after the run: every window fired


class Gated(ps.sources.Arrays):
    """An Arrays source that, after `before` batches, says so (a file NAME.waiting in `gate`)
    and waits until the file `gate`/open exists: a feed that has gone quiet."""

    def __init__(self, data, gate="", before=0, **kw):
        super().__init__(data, **kw)
        self.gate, self.before = gate, before

    def read(self, position=None):
        for i, item in enumerate(super().read(position)):
            if i == self.before:
                open(os.path.join(self.gate, f"{self.name}.waiting"), "w").close()
                while not os.path.exists(os.path.join(self.gate, "open")):
                    time.sleep(0.01)
            yield item


def test_queries_on_their_own_thread_see_a_window_actor_between_two_rounds():
    # In process: rounds of 8 batches on this thread, queries on another (as Ray runs them in
    # their concurrency group). Every answer counts the rows of a whole number of rounds
    # (open windows plus fired rows), never those of part of one; before `start` gives the
    # actor its state, a query is told to ask again.
    def flow():
        f = ps.Flow("between")
        usage = f.source(ps.sources.Arrays(DATA, batch_size=1_000, name="all"), time=ps.EventTime("ts", **TIME)) \
            .key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count())
        usage.queryable("usage", history_rows=10**6)
        usage.sink(ps.sinks.Discard("out"))
        return f

    f = flow()
    reader = ps.runtimes.SourceWorker(f, f._nodes[0].id, 1, 16, round_rows=8_000)
    w = ps.runtimes.WindowWorker(flow(), 0, 1, 16)
    wid = w.queryable[0]
    assert isinstance(w.query(wid, "partial", None), ps.query.NotStarted)
    w.start({}, None)
    totals, answers, stop = {0}, [], threading.Event()

    def ask():
        while not stop.is_set():
            (partial,), ((last, _stamps),), _watermarks = zip(*w.query(wid, "view", None, 10**6))
            answers.append(int(partial["n"].sum() + last["n"].sum()) if partial is not None else 0)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        for parts in reads(reader):
            w.round({}, [0], parts)
            totals.add(max(totals) + sum(len(b) for step in parts[0] for _wid, b, _g in step))
            # the next round waits for a query asked after this one (else the asking thread,
            # left without the GIL, may answer from between two rounds only)
            asked, deadline = len(answers), time.monotonic() + 5
            while len(answers) < asked + 2 and time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        stop.set()
        asker.join()
    assert max(totals) == len(DATA["ts"]) and len(totals) == 6  # 5 rounds
    assert len(answers) > 20 and set(answers) <= totals, sorted(set(answers) - totals)
    assert len(set(answers)) > 2  # answers from between several rounds


@pytest.mark.parametrize("keys", [("meter_id",), ("name",), ("feeder", "name")])
def test_key_owner_names_the_window_actor_that_holds_the_key(keys):
    # In process, 3 window actors fed by routed reads: for every key (integers, strings, and
    # pairs of them, as queries name them: Python values), key_owner names the one actor
    # whose operator holds it; a key of another shape names none.
    data = {**DATA, "name": np.array([f"m-{m}" for m in DATA["meter_id"]], dtype=object),
            "feeder": DATA["meter_id"] % 7}

    def flow():
        f = ps.Flow("owner")
        usage = f.source(ps.sources.Arrays(data, batch_size=2_000, name="all"), time=ps.EventTime("ts", **TIME)) \
            .key_by(*keys).window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count())
        usage.queryable("usage")
        usage.sink(ps.sinks.Discard("out"))
        return f

    f = flow()
    reader = ps.runtimes.SourceWorker(f, f._nodes[0].id, 3, 16, round_rows=8_000)
    workers = [ps.runtimes.WindowWorker(flow(), j, 3, 16) for j in range(3)]
    for w in workers:
        w.start({}, None)
    for parts in reads(reader):
        for w in workers:
            w.round({}, [0], parts)
    wid = workers[0].queryable[0]
    pairs = sorted(set(zip(*(data[k].tolist() for k in keys))))
    owners = set()
    for pair in pairs:
        key = pair if len(keys) > 1 else pair[0]
        held = [j for j, w in enumerate(workers) if w.query(wid, "partial", key) != [None]]
        assert held == [ps.runtimes.key_owner(key, keys, 3, 16)], key
        owners.add(held[0])
    assert owners == {0, 1, 2}
    assert ps.runtimes.key_owner((1, 2), keys, 3, 16) is None if len(keys) == 1 else \
        ps.runtimes.key_owner(1, keys, 3, 16) is None


def test_queries_of_all_keys_see_every_actor_after_the_same_round():
    # Two paced sources of equal size, one 1,000-row batch a round each: after any round the
    # actors together have counted a multiple of 2,000 rows (open windows plus fired rows). A
    # query of all keys asks both actors, which stand a round or more apart as their sources'
    # reads come; each answers from after the same round, the latest handed out when the
    # query was asked.
    flow = queryable_flow("tumbling", make=ps.testing.Paced, pause=0.03, batch_size=1_000)
    totals, errors = [], []

    def ask():
        while not flow.live.running:
            time.sleep(0.005)
        while flow.live.running:
            try:
                q = flow.query("usage", last=10**6)
                totals.append(int(q["partial"]["n"].sum() + q["last"]["n"].sum()))
            except ps.query.NotStarted:
                pass
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return
            time.sleep(0.003)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    res = flow.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=1_000))
    asker.join(30)
    assert not errors
    assert len(totals) >= 10 and len(set(totals)) > 4, totals
    assert res.metrics["ray"]["query_waits_gave_up"] == 0
    assert all(t % 2_000 == 0 for t in totals), sorted({t for t in totals if t % 2_000})


def test_a_query_answers_while_the_actors_wait_for_their_next_reads(tmp_path):
    """Both sources go quiet after 4 batches: each window actor's round waits (for its
    source's next read) until they go on. A query is answered meanwhile, from the rows
    before the gap: queries run beside the rounds, not behind them."""
    flow = queryable_flow("tumbling", make=Gated, gate=str(tmp_path), before=4)
    run = threading.Thread(target=lambda: flow.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16,
                                                                            round_rows=2_000)), daemon=True)
    run.start()
    deadline = time.time() + 60
    while len(list(tmp_path.glob("*.waiting"))) < 2 and time.time() < deadline:
        time.sleep(0.02)
    answered = {}

    def ask():
        while time.time() < deadline:
            try:
                answered["state"] = flow.query("usage", last=10**6)
                answered["keys"] = [flow.query("usage", key=m) for m in answered["state"]["partial"]["meter_id"][:20]]
                return
            except ps.query.NotStarted:
                time.sleep(0.01)

    try:
        assert len(list(tmp_path.glob("*.waiting"))) == 2
        query = threading.Thread(target=ask, daemon=True)
        query.start()
        query.join(30)
        before_the_gate_opened = dict(answered)
    finally:
        (tmp_path / "open").touch()
        run.join(60)
    assert not run.is_alive()
    assert "state" in before_the_gate_opened, "the query waited for the rounds"
    state = before_the_gate_opened["state"]
    seen = int(state["partial"]["n"].sum() + state["last"]["n"].sum())
    first = [{k: v[i::2][:4 * 2_000] for k, v in DATA.items()} for i in range(2)]  # each source's first 4 batches
    assert 0 < seen <= 2 * 4 * 2_000
    assert set(state["partial"]["meter_id"].tolist()) <= {m for f in first for m in f["meter_id"].tolist()}
    # A key's answer comes from the actor that holds it, with that actor's watermark: its
    # partial rows are of windows open against it, and it is at least every actor's lowest.
    assert len(before_the_gate_opened["keys"]) == 20 and state["watermark"] is not None
    for q in before_the_gate_opened["keys"]:
        assert len(q["partial"]) and q["watermark"] >= state["watermark"]
        assert (q["partial"]["window_end"].astype(np.int64) - 1 > q["watermark"] // 1_000_000).all()
    assert flow.query("usage", last=10**6)["last"]["n"].sum() == len(DATA["ts"])  # then the run went on to the end


def test_queryable_state_after_an_actor_died_and_the_flow_recovered(tmp_path):
    """The state is rebuilt from the checkpoint, so what the windows hold at the end (count
    windows' trailing partial rows, every key) equals the local runtime's; the history of fired
    rows holds what fired since the recovery."""
    local = queryable_flow("count")
    local.run()
    dist = queryable_flow("count")
    # Queries of all keys all along, through the recovery: none is waited for in vain (one
    # asked of the actor that died is answered "ask again"), and the results stand.
    answered, errors = [0, 0], []

    def ask():
        while not dist.live.running:
            time.sleep(0.005)
        while dist.live.running:
            try:
                dist.query("usage", last=10)
                answered[0] += 1
            except ps.query.NotStarted:
                answered[1] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    res = dist.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=2_000, fail_worker_after=7),
                   checkpoints=str(tmp_path / "ckpt"), guarantee="exactly_once", checkpoint_every=3)
    asker.join(30)
    assert not errors and answered[0] > 0, (errors, answered)
    assert res.metrics["ray"]["recoveries"] == 1 and res.metrics["ray"]["query_waits_gave_up"] == 0
    want = local.state("usage").partial()
    assert len(want) > 100 and canon(dist.state("usage").partial()) == canon(want)
    assert dist.state("usage").describe()["num_keys"] == local.state("usage").describe()["num_keys"]
    fired = set(canon(local.query("usage", last=10**7)["last"]))
    since = dist.query("usage", last=10**7)["last"]
    assert len(since) > 0 and set(canon(since)) <= fired


def test_a_kafka_topic_on_ray_gives_the_local_runtimes_windows():
    # A topic of four partitions (keyed by meter) read by one reading actor, from an actor
    # (the partitions asked of the broker there), its rows split between two window actors by
    # key group: the windows are the local runtime's, and with readings in order per meter
    # none is late on either.
    pytest.importorskip("confluent_kafka", reason="pip install 'pystream[kafka]'")
    from kafka_mock import MockCluster

    cluster = MockCluster()
    data = meter_readings(20_000, 100, seed=3)
    topic = f"ray{os.getpid()}"
    cluster.produce_json(topic, data, key="meter_id")

    def flow():
        f = ps.Flow("ray-kafka")
        src = f.source(ps.sources.Kafka(topic, cluster.bootstrap, batch_size=2_000, stop_at_end=True),
                       time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
        res = src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count())
        res.sink(ps.sinks.Collect("o"))
        res.late().sink(ps.sinks.Collect("late"))
        return f

    local = flow().run()
    dist = flow().run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=ROUND))
    assert ps.sources.Kafka(topic, cluster.bootstrap).partitions() == [0, 1, 2, 3]
    assert len(local["late"]) == len(dist["late"]) == 0
    assert canon(dist["o"]) == canon(local["o"]) and int(np.sum(local["o"]["n"])) == 20_000


def demo_flow(seed=3):
    """The smart-meter demo's flow (pystream/demo.py: dedupe, register deltas and a process()
    timer before its windows, keyed and unkeyed, calendar days by each row's zone), every
    output into a Collect sink, on a small fleet with re-sends, delays and clock faults."""
    from pystream import demo

    sim = ps.sources.MeterSimulator(300, commercial_share=0.2, duration="24h", seed=seed)
    return demo.build(sim, sink=ps.sinks.Collect)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_the_demo_with_its_operators_before_the_windows_on_ray_is_the_local_runtimes(parallelism):
    # Operators over one source's rows run in its reader (every row, in order, as locally); their
    # outputs reach the windows as partitions of their own and their side outputs' sinks are
    # written by a window actor. Every output equals the local run's, row for row.
    local = demo_flow().run()
    dist = demo_flow().run(runtime=ps.runtimes.Ray(parallelism=parallelism, key_groups=16, round_rows=3_000))
    names = ("usage_15m", "usage_1h", "daily_bill", "system_5m", "system_rolling_1h", "register_usage_1h",
             "duplicates", "invalid", "late", "register_anomalies", "register_late", "outage_alerts")
    for name in names:
        assert canon(dist[name]) == canon(local[name]), name
    for name in ("usage_15m", "register_usage_1h", "duplicates", "outage_alerts", "late"):
        assert len(local[name]) > 0, name  # each kind of output is exercised
    assert dist.metrics["ray"]["rounds"] > 5


def _alerts(batch, ctx):
    """Event-time timers: an alert for each meter whose readings stop for 10 minutes."""
    newest = np.full(len(ctx.keys), np.iinfo(np.int64).min)
    np.maximum.at(newest, ctx.row, ctx.ts)
    ctx.state["last"] = np.maximum(ctx.state["last"], newest)
    ctx.set_event_timer(ctx.state["last"] + 10 * 60 * 10**9)


def _alerted(timers, ctx):
    return {"meter_id": timers["meter_id"], "at": timers["timer"] // 1_000_000,
            "end": np.full(len(timers), ctx.end_of_input)}


OPS_OUTPUTS = ("usage", "usage_late", "load", "duplicates", "dedupe_late", "raw_b", "gaps", "alerts", "sessions")


def two_sources_with_operators(sink=ps.sinks.Collect, make=ps.sources.Arrays, **kw):
    """Two sources, each with operators of its own before its windows, side outputs and a sink
    of the raw rows (written by a window actor on Ray); `sink(name)` makes each sink, `make`
    the first source (with `kw`)."""
    rng = np.random.default_rng(11)
    flow = ps.Flow("two-with-ops")
    t = ps.EventTime("ts", unit="ms", max_out_of_orderness="1m")
    a_data = meter_readings(30_000, 200, seed=21, max_delay_ms=300_000)
    again = rng.random(30_000) < 0.02  # re-sends, later in the stream
    a_data = {k: np.concatenate([v, v[again]]) for k, v in a_data.items()}
    a = flow.source(make(a_data, batch_size=1_700, name="a", **kw), time=t)
    clean = a.key_by("meter_id").dedupe("30m")
    clean.side("duplicates").sink(sink("duplicates"))
    clean.late().sink(sink("dedupe_late"))
    usage = clean.map(lambda b: b.with_columns(wh=b["kwh"] * 1000)).key_by("meter_id").window(
        ps.windows.Tumbling("15m"), allowed_lateness="2m").aggregate(wh=ps.agg.sum("wh"), n=ps.agg.count())
    usage.sink(sink("usage"))
    usage.late().sink(sink("usage_late"))
    clean.unkeyed().window(ps.windows.Tumbling("1h")).aggregate(n=ps.agg.count()).sink(sink("load"))
    b = flow.source(ps.sources.Arrays(meter_readings(20_000, 150, seed=22, max_delay_ms=120_000), batch_size=2_300,
                                      name="b"), time=t)
    b.filter(lambda x: x["meter_id"] % 7 == 0).sink(sink("raw_b"))
    keyed = b.key_by("meter_id")
    keyed.gaps("5m", tolerance="6m").sink(sink("gaps"))
    keyed.process(_alerts, state={"last": np.int64(0)}, on_timer=_alerted).sink(sink("alerts"))
    keyed.window(ps.windows.Session("30m")).aggregate(n=ps.agg.count()).sink(sink("sessions"))
    return flow


@pytest.mark.parametrize("colocate", [True, False])
def test_operators_of_several_sources_and_sinks_before_windows_on_ray_are_the_local_runtimes(colocate):
    local = two_sources_with_operators().run()
    dist = two_sources_with_operators().run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=5_000,
                                                                    colocate=colocate))
    for name in OPS_OUTPUTS:
        assert canon(dist[name]) == canon(local[name]), name
    for name in ("usage", "duplicates", "raw_b", "gaps", "alerts", "sessions"):
        assert len(local[name]) > 0, name


def test_operators_before_windows_recover_exactly_when_a_window_actor_dies(tmp_path):
    # Actor 0 reads the first source (its operators' state dies with it): the flow rolls back to
    # the last checkpoint, whose reader state replays from its snapshot; every output is the
    # local run's, nothing lost, nothing twice.
    local = two_sources_with_operators().run()
    res = two_sources_with_operators().run(
        runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=2_000, fail_worker_after=8),
        checkpoints=str(tmp_path / "ckpt"), guarantee="exactly_once", checkpoint_every=3)
    assert res.metrics["ray"]["recoveries"] == 1
    for name in OPS_OUTPUTS:
        assert canon(res[name]) == canon(local[name]), name
    _, payload = CheckpointStore(str(tmp_path / "ckpt")).latest()
    assert payload["finished"]


@pytest.mark.parametrize("after", [2, 3])
def test_operators_before_windows_resume_from_a_checkpoint_at_any_parallelism(tmp_path, after):
    # The first source fails mid-way; the run resumes from its checkpoint (at parallelism 2, or
    # rescaled to 3: the operators' state is the reader's, whatever the parallelism). The
    # checkpoint holds its reader's operators as of a snapshot before its read and the batches
    # to replay; the exactly-once files hold every output as locally.
    local = two_sources_with_operators().run()
    out, ckpt = str(tmp_path / "out"), str(tmp_path / "ckpt")

    def files(name):
        return ps.sinks.Files(os.path.join(out, name), name=name)

    with pytest.raises(Exception, match="source went away"):  # a checkpoint each round; snapshots every 16 reads
        two_sources_with_operators(files, Flaky, fail_after=13).run(
            runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=2_000), checkpoints=ckpt,
            guarantee="exactly_once", checkpoint_every="1ms")
    _, payload = CheckpointStore(ckpt).latest()
    a = next(n.id for n in two_sources_with_operators()._nodes if n.kind == "source")
    assert set(payload["readers"]) <= {n.id for n in two_sources_with_operators()._nodes if n.kind == "source"}
    assert not payload["readers"][a]["ops_done"] and payload["readers"][a]["skip"] > 5  # replays to the checkpoint
    res = two_sources_with_operators(files).run(
        runtime=ps.runtimes.Ray(parallelism=after, key_groups=16, round_rows=2_000), checkpoints=ckpt, resume=True,
        guarantee="exactly_once", checkpoint_every=4)
    assert res.resumed_from is not None
    for name in OPS_OUTPUTS:
        assert canon(ps.sinks.Files.read(os.path.join(out, name))) == canon(local[name]), name


def _routed(parts):
    """A read's parts as comparable rows: per actor, per step, each message's target and rows
    (without the watermark floors, which the reader's carry decides, tested elsewhere), or
    an operator's watermark passed on."""
    floor = ps.runtimes.FLOOR
    return [[[(target, g) if b is None else (target, canon(b.without_column(floor) if floor in b else b))
              for target, b, g in step] for step in steps] for steps in parts]


@pytest.mark.parametrize("every", [1, 3])
def test_a_reader_restored_from_its_operators_snapshot_replays_to_the_checkpoint_and_goes_on_alike(every):
    # The reader is ahead of the rounds that take its reads; a checkpoint at read m holds the
    # snapshot of its operators taken at or before m and how many batches lie in between. A
    # reader restored from that sends, from read m + 1 on, what the first one sent: the same
    # rows to the same windows and sinks (operators' state included, so dedupe's, timers' and
    # register deltas' outputs are alike), then nothing more once its operators have finished.
    flow = demo_flow()
    sid = next(n.id for n in flow._nodes if n.kind == "source")

    def reader(**kw):
        return ps.runtimes.SourceWorker(flow, sid, 2, 16, round_rows=3_000, snapshot_every=every, keep_reads=6, **kw)

    first, whole, positions = reader(), [], []
    while True:
        parts, (_label, position, done, _marks) = first.next()
        if done:
            break
        whole.append(_routed(parts))
        positions.append(position)
    assert len(whole) > 10
    for m in (0, 1, 4, 7, len(whole) - 1, len(whole)):  # the last read fires what the operators held
        ahead = reader()
        for _ in range(min(m + 5, len(whole))):  # up to 5 reads past the checkpoint's, as a reading thread is
            ahead.next()
        state = ahead.ops_state(sid, m)
        assert state["ops_done"] == (m == len(whole))
        if state["ops_done"]:  # at the source's end, past its operators' last output: nothing more
            assert list(reads(reader(position=positions[m - 1], replay=state))) == []
            continue
        assert (state["skip"] > 0) == (m % every != 0)
        again = reader(position=state["position"], replay=state)
        assert [_routed(p) for p in reads(again)] == whole[m:], m


def test_the_demo_runs_on_ray_with_checkpoints_and_gives_the_local_results(tmp_path, capsys):
    # `pystream demo --ray 2` (smaller reads): exactly-once part files, checkpoints every 4 rounds; every
    # result equals a local run's (it checks itself that every reading is accounted for).
    from pystream import demo

    local = demo.run(20_000, 200, seed=4, out=str(tmp_path / "local"))
    dist = demo.run(20_000, 200, seed=4, out=str(tmp_path / "ray"),
                    ray=ps.runtimes.Ray(parallelism=2, round_rows=2_000))
    assert "on the Ray runtime: 2 window actors" in capsys.readouterr().out
    assert len(dist["result"].checkpoints) > 1
    for name in demo.RESULTS:
        assert canon(dist["outputs"][name]) == canon(local["outputs"][name]), name
    with pytest.raises(SystemExit, match="--postgres runs locally"):
        demo.run(1_000, 10, seed=4, out=str(tmp_path / "pg"), postgres="postgresql://unused", ray=2)


def lagging_flow_with_operators(batch_size=500):
    """Three partitions, one 40 minutes behind (test_flow.Lagging): a window below a dedupe
    (its rows keep their partitions), one below register_deltas (which passes its watermark on),
    late rows of both."""
    from test_flow import Lagging, _register_readings

    flow = ps.Flow("lagging-ops")
    s = flow.source(Lagging(_register_readings(), batch_size),
                    time=ps.EventTime("ts", unit="ms", max_out_of_orderness="1m"))
    clean = s.key_by("meter_id").dedupe("2h")
    usage = clean.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"),
                                                                                   n=ps.agg.count())
    usage.sink(ps.sinks.Collect("usage"))
    usage.late().sink(ps.sinks.Collect("late"))
    deltas = clean.register_deltas("register", out="used")
    deltas.late().sink(ps.sinks.Collect("unordered"))
    hourly = deltas.window(ps.windows.Tumbling("1h")).aggregate(used=ps.agg.sum("used"), n=ps.agg.count())
    hourly.sink(ps.sinks.Collect("hourly"))
    hourly.late().sink(ps.sinks.Collect("hourly_late"))
    # process() passes its rows on as rows of its own: below it they are judged against its
    # watermark as it was before their batch (late rows only where that reached the actors).
    passed = s.key_by("meter_id").process(_as_they_come).key_by("meter_id")
    again = passed.window(ps.windows.Tumbling("1m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count())
    again.sink(ps.sinks.Collect("again"))
    again.late().sink(ps.sinks.Collect("again_late"))
    return flow


def _as_they_come(batch, ctx):
    return batch


def test_operators_over_a_partitioned_source_on_ray_are_the_local_runtimes():
    # On Ray as locally: the dedupe's rows keep their partitions (floors per partition), the
    # register deltas reach the actors as rows of their own followed by the operator's watermark.
    local = lagging_flow_with_operators(200).run()
    dist = lagging_flow_with_operators(200).run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=1_000))
    assert len(local["late"]) > 0 and len(local["hourly"]) > 0 and len(local["hourly_late"]) == 0
    assert len(local["again_late"]) > 0  # the process's watermark reached the window as it went
    for name in ("usage", "late", "unordered", "hourly", "hourly_late", "again", "again_late"):
        assert canon(dist[name]) == canon(local[name]), name


T0 = 1_767_225_600_000  # 2026-01-01, ms


class Stalling(ps.sources.Source):
    """Two partitions: "a" sends a batch every `pause` wall-clock seconds, its times 10 minutes
    on each time; "b" sends one batch first, then nothing until a last one after all of a's,
    with the times of its first. With idleness shorter than a's run, b is idle while a runs, so
    a alone moves the watermark and b's last batch comes late; without, b holds it back."""

    replayable = True
    name = "stalling"

    def __init__(self, pause, batches=16):
        self.pause, self.batches = pause, batches

    def partitions(self):
        return ["a", "b"]

    def read(self, position=None):
        steps = [("b", 0)] + [("a", i) for i in range(self.batches)] + [("b", 0)]
        for k in range(0 if position is None else int(position), len(steps)):
            part, i = steps[k]
            if part == "a":
                time.sleep(self.pause)
            meters = np.arange(20) + (0 if part == "a" else 100)
            yield ps.Batch({"meter_id": meters, "ts": T0 + i * 600_000 + meters * 1000,
                            "kwh": np.ones(20)}), k + 1, part

    def fingerprint(self):
        return f"stalling:{self.batches}"


class Quiet(ps.sources.Source):
    """Readings over the first 0.8 s of event time, then `quiet` wall-clock seconds with no data
    (the source says so: (None, position)), then readings at 0.5 s: late once the quiet has
    closed the 1-second window they fall in, on time otherwise."""

    replayable = True
    name = "quiet"

    def __init__(self, quiet):
        self.quiet = quiet

    def read(self, position=None):
        meters = np.arange(10)
        yield ps.Batch({"meter_id": meters, "ts": T0 + meters * 80, "kwh": np.ones(10)}), 1
        for k in range(10):
            time.sleep(self.quiet / 10)
            yield None, 1
        yield ps.Batch({"meter_id": meters, "ts": np.full(10, T0 + 500), "kwh": np.ones(10)}), 2

    def fingerprint(self):
        return "quiet"


def _wall_flow(source, window, **time_kw):
    f = ps.Flow("ray-wall-clock")
    w = f.source(source, time=ps.EventTime("ts", unit="ms", **time_kw)).key_by("meter_id").window(window)
    res = w.aggregate(n=ps.agg.count(), kwh=ps.agg.sum("kwh"))
    res.sink(ps.sinks.Collect("out"))
    res.late().sink(ps.sinks.Collect("late"))
    return f


@pytest.mark.parametrize("idleness", [None, "500ms"])
def test_an_idle_partition_stops_holding_the_watermark_back_on_ray(idleness):
    # The driver marks a partition that sent nothing for `idleness` (wall clock) idle in every
    # actor at once, as the local runtime's one operator marks it: b's last batch is late on
    # both, the same rows; without idleness it is on time on both.
    def run(runtime=None):
        return _wall_flow(Stalling(0.1), ps.windows.Tumbling("15m"), max_out_of_orderness="1m",
                          idleness=idleness).run(runtime=runtime)

    local = run()
    dist = run(ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=20))
    assert canon(dist["late"]) == canon(local["late"])
    assert canon(dist["out"]) == canon(local["out"])
    assert len(local["late"]) == (20 if idleness else 0)


@pytest.mark.parametrize("close_idle_after", [None, "300ms"])
def test_a_quiet_stream_closes_its_windows_by_the_wall_clock_on_ray(close_idle_after):
    # After `close_idle_after` without data the watermark moves with the wall clock from the
    # largest event time, on Ray as locally: the window [0, 1s) closes in the quiet, and the
    # readings at 0.5 s that come after it are late (without close_idle_after, on time).
    def run(runtime=None):
        return _wall_flow(Quiet(1.5), ps.windows.Tumbling("1s"), close_idle_after=close_idle_after).run(
            runtime=runtime)

    local = run()
    dist = run(ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=20))
    assert canon(dist["late"]) == canon(local["late"])
    assert canon(dist["out"]) == canon(local["out"])
    assert len(local["late"]) == (10 if close_idle_after else 0)


class Stamped(ps.sinks.Sink):
    """Appends the wall-clock time (ns) at which each batch was written, and its rows, to a
    file, wherever it runs (a window actor too)."""

    name = "stamped"

    def __init__(self, path):
        self.path = path

    def write(self, batch):
        with open(self.path, "a") as f:
            f.write(f"{time.time_ns()} {len(batch)}\n")

    def fingerprint(self):
        return f"stamped:{self.path}"


class ThenQuiet(ps.testing.Paced):
    """Paced, then `quiet` seconds of no data (the source says so) before its end."""

    def __init__(self, data, quiet: float, **kw):
        super().__init__(data, **kw)
        self.quiet = quiet

    def read(self, position=None):
        for item in super().read(position):
            yield item
            position = item[1]
        for _ in range(10):
            time.sleep(self.quiet / 10)
            yield None, position


def test_processing_time_windows_fire_by_the_wall_clock_on_ray(tmp_path):
    # Rows are stamped in the actors as they reach the window; the driver moves every actor's
    # watermark to its clock each round, so windows fire as the wall clock passes their end,
    # data or not: the last window fires in the quiet after the data, not at the end of
    # input; every row counted once, none late.
    data = meter_readings(2_000, 50, seed=3)
    path = str(tmp_path / "written")
    f = ps.Flow("ray-proc")
    res = f.source(ThenQuiet(data, 1.0, pause=0.05, batch_size=100), time=ps.ProcessingTime()) \
        .key_by("meter_id").window(ps.windows.Tumbling("200ms")).aggregate(n=ps.agg.count())
    res.sink(Stamped(path))
    res.sink(ps.sinks.Collect("out"))
    res.late().sink(ps.sinks.Collect("late"))
    t0 = time.time_ns()
    out = f.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=100))
    ended = time.time_ns()
    assert int(out["out"]["n"].sum()) == 2_000 and len(out["late"]) == 0
    starts = out["out"]["window_start"].astype(np.int64)
    assert len(set(starts.tolist())) >= 3 and (starts % 200_000_000 == 0).all()
    assert ((starts >= t0 - 200_000_000) & (starts <= ended)).all()  # the actors' clocks, as the driver's
    with open(path) as fh:
        written = [int(line.split()[0]) for line in fh]
    assert max(written) < ended - 500_000_000  # every window fired in the 1 s quiet, before the end


def test_windows_after_operators_keep_their_wall_clock_local():
    # Refused before anything starts, with its reason.
    f = ps.Flow("ray-op-idle")
    f.source(ps.sources.Arrays(DATA), time=ps.EventTime("ts", unit="ms", idleness="1m")).key_by("meter_id") \
        .dedupe("1h").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("out"))
    with pytest.raises(ValueError, match="on Ray they apply to windows that take a source's rows"):
        f.run(runtime=ps.runtimes.Ray(parallelism=2, key_groups=16))


class Returning(ps.sources.Source):
    """Partition b sends once, goes idle while a runs (the watermark moves to 69 minutes with
    a), then sends again, the same times (late now, and no news of how far b has got), its
    rows all for window actor 1 (parallelism 2, 16 key groups); then a sends readings at 300
    minutes and at 100 minutes, for actor 0. Once b is back it holds the watermark again, at
    69 minutes, in every actor, so the readings at 100 minutes are on time; an actor that
    still held b idle would have its watermark at 299 minutes and find them late."""

    replayable = True
    name = "returning"

    def read(self, position=None):
        owner = {m: ps.runtimes.key_owner(m, ("meter_id",), 2, 16) for m in range(200)}
        ones, zeros = [m for m in owner if owner[m] == 1][:5], [m for m in owner if owner[m] == 0][:5]

        def rows(meters, minute):
            return {"meter_id": np.array(meters), "ts": np.full(len(meters), T0 + minute * 60_000),
                    "kwh": np.ones(len(meters))}

        steps = ([("b", rows(ones, 0))] + [("a", rows(zeros, 10 * i)) for i in range(8)]
                 + [("b", rows(ones, 0)), ("a", rows(zeros, 300)), ("a", rows(zeros, 100))])
        for k in range(0 if position is None else int(position), len(steps)):
            part, batch = steps[k]
            if 1 <= k <= 8:
                time.sleep(0.1)
            yield ps.Batch(batch), k + 1, part

    def partitions(self):
        return ["a", "b"]

    def fingerprint(self):
        return "returning"


def test_a_partition_that_sends_again_holds_every_actors_watermark_again():
    def run(runtime=None):
        return _wall_flow(Returning(), ps.windows.Tumbling("15m"), max_out_of_orderness="1m",
                          idleness="300ms").run(runtime=runtime)

    local = run()
    dist = run(ps.runtimes.Ray(parallelism=2, key_groups=16, round_rows=5))
    assert len(local["late"]) == 5 and set(local["late"]["ts"].tolist()) == {T0}  # b's return alone
    assert canon(dist["late"]) == canon(local["late"])
    assert canon(dist["out"]) == canon(local["out"])
