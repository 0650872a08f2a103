"""Throughput of the window core on the smart-meter query (issue 2's benchmark).

10M readings (PYSTREAM_BENCH_ROWS), 100k meters, readings delayed up to 60 s (bounded
disorder), 15-minute tumbling sum/count/max per meter and 1 h / 15 min sliding sum, through
the bare kernel and through flow.run(). Each has a NumPy baseline of the same work in the
same run (bincount over precomputed window ids), so ratios hold on a noisy machine. Every
benchmark checks its answer against the baseline before its timing counts.

Run: pytest benchmarks --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps
from pystream import _core

from conftest import record, readings

MIN15 = 900_000  # ms
HOUR = 3_600_000
BATCH = 65_536


# -- NumPy baselines (window ids precomputed outside the timing) -----------------------------

def numpy_ids(d, meters, width_ms):
    w = d["ts"] // width_ms
    return (w - w.min()) * meters + d["meter_id"]


def numpy_tumbling(wid, kwh):
    n = np.bincount(wid)
    s = np.bincount(wid, weights=kwh)
    peak = np.full(len(n), -np.inf)
    np.maximum.at(peak, wid, kwh)
    nz = np.flatnonzero(n)
    return n[nz], s[nz], peak[nz]


def numpy_sliding(wid15, kwh, meters):
    """1 h windows every 15 min = sum of 4 consecutive 15-min slices per meter."""
    s = np.bincount(wid15, weights=kwh)
    n = np.bincount(wid15)
    slices = -(-len(s) // meters)
    s = np.pad(s, (0, slices * meters - len(s))).reshape(slices, meters)
    n = np.pad(n, (0, slices * meters - len(n))).reshape(slices, meters)
    total = np.zeros((slices + 3, meters))
    count = np.zeros((slices + 3, meters), dtype=np.int64)
    for lag in range(4):
        total[lag:lag + slices] += s
        count[lag:lag + slices] += n
    return total[count > 0]


# -- pystream runs -------------------------------------------------------------------------

def kernel_run(d, size_ms, slide_ms, aggs, check=True):
    """The bare engine over 65,536-row batches; `check` also totals the output columns (for the
    untimed correctness run: the timed runs only count rows, like the NumPy baseline)."""
    e = _core.WindowEngine(size_ms * 10**6, slide_ms * 10**6, 0, 60 * 10**9, 0, -1, True, [(c, 1) for c, _ in aggs], 10**6)
    ids, ts, kwh = d["meter_id"], d["ts"], d["kwh"]
    n_rows, totals = 0, np.zeros(len(aggs))
    for a in range(0, len(ts) + BATCH, BATCH):
        if a < len(ts):
            out = e.process(ids[a:a + BATCH], ts[a:a + BATCH], [None if c == 0 else kwh[a:a + BATCH] for c, _ in aggs], 10**6)
        else:
            out = e.flush()
        n_rows += len(out["start"])
        if check:
            totals += [col.sum() if name != "peak" else 0 for (c, name), col in zip(aggs, out["cols"])]
    return n_rows, totals


class StreamingSink(ps.sinks.Sink):
    """Consumes each batch and keeps only totals, like a sink writing to a store."""

    def __init__(self):
        self.name = "streaming"

    def open(self):
        self.rows, self.kwh = 0, 0.0

    def write(self, batch):
        self.rows += len(batch)
        self.kwh += float(batch["kwh"].sum())

    def close(self):
        return (self.rows, self.kwh)


def flow_run(d, window, sink, tumbling=True):
    flow = ps.Flow("bench")
    src = flow.source(ps.sources.Arrays(d, batch_size=BATCH), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    aggs = dict(kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh")) if tumbling else dict(kwh=ps.agg.sum("kwh"))
    src.key_by("meter_id").window(window).aggregate(**aggs).sink(sink)
    return flow.run()[sink.name]


TUMBLING_AGGS = [(0, "n"), (1, "kwh"), (3, "peak")]


@pytest.mark.parametrize("meters", [1_000, 100_000, 1_000_000])
def test_numpy_tumbling(benchmark, meters):
    d = readings(meters)
    wid = numpy_ids(d, meters, MIN15)
    n, s, _ = benchmark.pedantic(numpy_tumbling, args=(wid, d["kwh"]), rounds=3, iterations=1)
    assert n.sum() == len(wid)
    record(benchmark, f"numpy tumbling 15m sum/count/max keys={meters}", len(wid))


def numpy_tumbling_with_ids(d, meters):
    """The same work as the kernel does: window ids from timestamps, then the reductions."""
    return numpy_tumbling(numpy_ids(d, meters, MIN15), d["kwh"])


@pytest.mark.parametrize("meters", [1_000, 100_000, 1_000_000])
def test_numpy_tumbling_incl_window_ids(benchmark, meters):
    d = readings(meters)
    n, _, _ = benchmark.pedantic(numpy_tumbling_with_ids, args=(d, meters), rounds=3, iterations=1)
    assert n.sum() == len(d["ts"])
    record(benchmark, f"numpy+ids tumbling 15m sum/count/max keys={meters}", len(d["ts"]))


@pytest.mark.parametrize("meters", [1_000, 100_000, 1_000_000])
def test_kernel_tumbling(benchmark, meters):
    d = readings(meters)
    n, s, _ = numpy_tumbling(numpy_ids(d, meters, MIN15), d["kwh"])
    rows, totals = kernel_run(d, MIN15, MIN15, TUMBLING_AGGS)
    assert rows == len(n) and totals[0] == n.sum() and totals[1] == pytest.approx(s.sum(), rel=1e-9)
    benchmark.pedantic(kernel_run, args=(d, MIN15, MIN15, TUMBLING_AGGS, False), rounds=3, iterations=1)
    record(benchmark, f"kernel tumbling 15m sum/count/max keys={meters}", len(d["ts"]))


#: Meter ids as they come: dense 0..n-1; an actor's share of them at Ray parallelism 8
#: (one id in 8, spread over the range, as key groups hold them); and serial numbers (ids
#: near 10^12 that only the hash table holds). The same readings, ids mapped one to one.
KEY_IDS = {"dense": lambda m: m, "one-in-8": lambda m: m * 8 + 5, "serials": lambda m: m * 1_000_003 + 10**12}


@pytest.mark.parametrize("ids", sorted(KEY_IDS))
def test_kernel_tumbling_key_ids(benchmark, ids):
    d = readings(100_000)
    mapped = dict(d, meter_id=KEY_IDS[ids](d["meter_id"]))
    n, s, _ = numpy_tumbling(numpy_ids(d, 100_000, MIN15), d["kwh"])  # dense ids: the same windows
    rows, totals = kernel_run(mapped, MIN15, MIN15, TUMBLING_AGGS)
    assert rows == len(n) and totals[0] == n.sum() and totals[1] == pytest.approx(s.sum(), rel=1e-9)
    benchmark.pedantic(kernel_run, args=(mapped, MIN15, MIN15, TUMBLING_AGGS, False), rounds=3, iterations=1)
    record(benchmark, f"kernel tumbling 15m sum/count/max keys=100000 ids={ids}", len(d["ts"]))


def test_numpy_sliding(benchmark):
    d = readings(100_000)
    wid = numpy_ids(d, 100_000, MIN15)
    benchmark.pedantic(numpy_sliding, args=(wid, d["kwh"], 100_000), rounds=3, iterations=1)
    record(benchmark, "numpy sliding 1h/15m sum keys=100000", len(wid))


def test_kernel_sliding(benchmark):
    d = readings(100_000)
    want = numpy_sliding(numpy_ids(d, 100_000, MIN15), d["kwh"], 100_000)
    rows, totals = kernel_run(d, HOUR, MIN15, [(1, "kwh")])
    assert rows == len(want) and totals[0] == pytest.approx(want.sum(), rel=1e-9)
    benchmark.pedantic(kernel_run, args=(d, HOUR, MIN15, [(1, "kwh")], False), rounds=3, iterations=1)
    record(benchmark, "kernel sliding 1h/15m sum keys=100000", len(d["ts"]))


def test_flow_tumbling_streaming_sink(benchmark):
    d = readings(100_000)
    n, s, _ = numpy_tumbling(numpy_ids(d, 100_000, MIN15), d["kwh"])
    rows, kwh = flow_run(d, ps.windows.Tumbling("15m"), StreamingSink())
    assert rows == len(n) and kwh == pytest.approx(s.sum(), rel=1e-9)
    benchmark.pedantic(flow_run, args=(d, ps.windows.Tumbling("15m"), StreamingSink()), rounds=3, iterations=1)
    record(benchmark, "flow.run tumbling 15m sum/count/max keys=100000", len(d["ts"]))


def test_flow_tumbling_collect(benchmark):
    d = readings(100_000)
    n, _, _ = numpy_tumbling(numpy_ids(d, 100_000, MIN15), d["kwh"])
    out = flow_run(d, ps.windows.Tumbling("15m"), ps.sinks.Collect("usage"))
    assert len(out) == len(n) and out["n"].sum() == len(d["ts"])
    del out
    benchmark.pedantic(flow_run, args=(d, ps.windows.Tumbling("15m"), ps.sinks.Collect("usage")), rounds=3, iterations=1)
    record(benchmark, "flow.run+Collect tumbling 15m keys=100000", len(d["ts"]))


def test_flow_sliding_streaming_sink(benchmark):
    d = readings(100_000)
    want = numpy_sliding(numpy_ids(d, 100_000, MIN15), d["kwh"], 100_000)
    rows, kwh = flow_run(d, ps.windows.Sliding("1h", "15m"), StreamingSink(), tumbling=False)
    assert rows == len(want) and kwh == pytest.approx(want.sum(), rel=1e-9)
    benchmark.pedantic(flow_run, args=(d, ps.windows.Sliding("1h", "15m"), StreamingSink(), False), rounds=3, iterations=1)
    record(benchmark, "flow.run sliding 1h/15m sum keys=100000", len(d["ts"]))


def count_run(d, n, slide):
    e = _core.CountWindowEngine(n, slide, True, [(0, 1), (1, 1), (3, 1)])
    ids, ts, kwh = d["meter_id"], d["ts"], d["kwh"]
    rows = 0
    for a in range(0, len(ts), BATCH):
        rows += len(e.process(ids[a:a + BATCH], ts[a:a + BATCH], [None, kwh[a:a + BATCH], kwh[a:a + BATCH]])["start"])
    return rows


@pytest.mark.parametrize("n, slide", [(4, 4), (96, 4)])
def test_kernel_count_windows(benchmark, n, slide):
    """Count windows (sum/count/max per meter): every meter's events in groups of n."""
    d = readings(100_000)
    per_meter = np.bincount(d["meter_id"])
    assert count_run(d, n, slide) == int((per_meter // slide).sum())
    benchmark.pedantic(count_run, args=(d, n, slide), rounds=3, iterations=1)
    record(benchmark, f"kernel count window ({n}, {slide}) sum/count/max keys=100000", len(d["ts"]))


def session_run(d, gap_s):
    e = _core.SessionEngine(gap_s * 10**9, 60 * 10**9, 0, -1, True, [(0, 1), (1, 1), (3, 1)], 10**6)
    ids, ts, kwh = d["meter_id"], d["ts"], d["kwh"]
    n = 0
    for a in range(0, len(ts), BATCH):
        out = e.process(ids[a:a + BATCH], ts[a:a + BATCH], [None, kwh[a:a + BATCH], kwh[a:a + BATCH]], 10**6)
        n += int(out["cols"][0].sum())
    return n + int(e.flush()["cols"][0].sum())


@pytest.mark.parametrize("gap_s", [6 * 3600, 3600, 20 * 60])
def test_kernel_sessions(benchmark, gap_s):
    d = readings(100_000)
    assert session_run(d, gap_s) == len(d["ts"])  # every reading lands in exactly one session
    benchmark.pedantic(session_run, args=(d, gap_s), rounds=3, iterations=1)
    record(benchmark, f"kernel sessions gap={gap_s // 60}m sum/count/max keys=100000", len(d["ts"]))


# -- calendar days with a zone per meter (issue 3) -----------------------------------------------

CAL_ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]


def calendar_zone_ids(d):
    return (d["meter_id"] % len(CAL_ZONES)).astype(np.int32)


def numpy_calendar_ids(d, meters):
    """Local-day window ids per reading: searchsorted in each meter's zone's day bounds."""
    from pystream import _calendar

    zone = calendar_zone_ids(d)
    ts_ns = d["ts"] * 10**6
    wid = np.empty(len(ts_ns), dtype=np.int64)
    for z, name in enumerate(CAL_ZONES):
        sel = zone == z
        wid[sel] = np.searchsorted(_calendar.bounds(name, "day"), ts_ns[sel], side="right")
    return (wid - wid.min()) * meters + d["meter_id"]


def calendar_run(d, zones):
    from pystream import _calendar

    e = _core.CalendarEngine(60 * 10**9, 0, -1, True, [(c, 1) for c, _ in TUMBLING_AGGS], 10**6)
    for name in zones:
        e.add_zone(_calendar.bounds(name, "day"))
    ids, ts, kwh = d["meter_id"], d["ts"], d["kwh"]
    zone = calendar_zone_ids(d) if len(zones) > 1 else None
    n_rows, n = 0, 0
    for a in range(0, len(ts), BATCH):
        out = e.process(ids[a:a + BATCH], ts[a:a + BATCH], [None if c == 0 else kwh[a:a + BATCH] for c, _ in TUMBLING_AGGS],
                        None if zone is None else zone[a:a + BATCH], 10**6)
        n_rows += len(out["start"])
        n += int(out["cols"][0].sum())
    out = e.flush()
    return n_rows + len(out["start"]), n + int(out["cols"][0].sum())


def test_numpy_calendar_days(benchmark):
    d = readings(100_000)
    wid = numpy_calendar_ids(d, 100_000)
    n, _, _ = benchmark.pedantic(numpy_tumbling, args=(wid, d["kwh"]), rounds=3, iterations=1)
    assert n.sum() == len(wid)
    record(benchmark, "numpy calendar day per-key zones sum/count/max keys=100000", len(wid))


def test_numpy_calendar_days_incl_window_ids(benchmark):
    d = readings(100_000)
    benchmark.pedantic(lambda: numpy_tumbling(numpy_calendar_ids(d, 100_000), d["kwh"]), rounds=3, iterations=1)
    record(benchmark, "numpy+ids calendar day per-key zones sum/count/max keys=100000", len(d["ts"]))


@pytest.mark.parametrize("zones", [CAL_ZONES[:1], CAL_ZONES], ids=["one-zone", "four-zones"])
def test_kernel_calendar_days(benchmark, zones):
    """Local days (sum/count/max per meter); with four zones each meter has its own."""
    d = readings(100_000)
    rows, n = calendar_run(d, zones)
    assert n == len(d["ts"])
    if len(zones) > 1:
        assert rows == len(np.unique(numpy_calendar_ids(d, 100_000)))
    benchmark.pedantic(calendar_run, args=(d, zones), rounds=3, iterations=1)
    label = "per-key zones" if len(zones) > 1 else "one zone"
    record(benchmark, f"kernel calendar day {label} sum/count/max keys=100000", len(d["ts"]))


# -- global windows with triggers (issue 3) ------------------------------------------------------

def global_run(d, trigger, value, purge):
    e = _core.GlobalEngine(trigger, value, value, purge, 60 * 10**9, -1, True, [(0, 1), (1, 1), (3, 1)])
    ids, ts, kwh = d["meter_id"], d["ts"], d["kwh"]
    rows = 0
    for a in range(0, len(ts), BATCH):
        rows += len(e.process(ids[a:a + BATCH], ts[a:a + BATCH], [None, kwh[a:a + BATCH], kwh[a:a + BATCH]], 10**6)["start"])
    return rows + len(e.flush()["start"])


@pytest.mark.parametrize("trigger, value, purge", [(0, 4, True), (1, 15 * 60 * 10**9, False)],
                         ids=["count-4-purging", "event-time-15m-accumulating"])
def test_kernel_global_windows(benchmark, trigger, value, purge):
    d = readings(100_000)
    rows = global_run(d, trigger, value, purge)
    if trigger == 0:
        assert rows == int((np.bincount(d["meter_id"]) // value).sum())
    benchmark.pedantic(global_run, args=(d, trigger, value, purge), rounds=3, iterations=1)
    name = "count(4) purging" if trigger == 0 else "event-time 15m accumulating"
    record(benchmark, f"kernel global {name} sum/count/max keys=100000", len(d["ts"]))
