"""Wall-clock driven behaviour, tested deterministically with ps.testing.ManualClock:
idle partitions, quiet streams, processing time and ingestion time."""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps
from pystream.testing import Advance, ManualClock, Script

T0 = int(np.datetime64("2025-01-01T00:00", "ms").astype(np.int64))
MIN = 60_000


class Recorder(ps.sinks.Sink):
    """Remembers the wall-clock time at which each row arrived."""

    def __init__(self, clock, name="rec"):
        self.clock, self.name, self.rows = clock, name, []

    def write(self, batch):
        for i in range(len(batch)):
            self.rows.append((self.clock.now_ns(), {c: batch[c][i].item() for c in batch.columns}))

    def close(self):
        return self.rows


def readings(minutes, meter=1):
    minutes = np.atleast_1d(minutes)
    return {"meter_id": np.full(len(minutes), meter), "ts": T0 + np.asarray(minutes) * MIN, "kwh": np.ones(len(minutes))}


def fired_at(rows, window_start_min):
    """Wall-clock minutes (since the clock's start) at which a window's first row arrived."""
    start_ns = int(np.datetime64("2025-01-01T00:00", "ns").astype(np.int64))
    for wall, row in rows:
        if row["window_start"] == T0 + window_start_min * MIN:
            return (wall - start_ns) // (60 * 10**9)
    return None


def test_idle_partition_stops_holding_the_watermark_back():
    #   Source "fast" keeps sending; source "stuck" sent one reading at minute 0 and went
    #   silent. Without idleness the watermark is pinned at minute 0 until end of input; with
    #   idleness="5m" the stuck partition is dropped from the min after 5 wall-clock minutes.
    def run(idleness):
        clock = ManualClock()
        fast = Script(clock, [("f", readings(0))] + [step for m in range(1, 40, 3)
                                                     for step in (Advance("1m"), ("f", readings(m)))], name="fast")
        stuck = Script(clock, [("s", readings(0, meter=2))], name="stuck")
        flow = ps.Flow("idle")
        time = ps.EventTime("ts", unit="ms", idleness=idleness)
        a = flow.source(fast, time=time)
        b = flow.source(stuck, time=time)
        rec = Recorder(clock)
        a.union(b).key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(rec)
        return flow.run(clock=clock)["rec"]

    held = run(None)
    released = run("5m")
    assert fired_at(held, 0) == 13  # only at end of input (the script's last step is at wall minute 13)
    assert fired_at(released, 0) is not None and fired_at(released, 0) <= 7
    # Same results either way: idleness changes when windows fire, not what they contain.
    assert sorted((r["meter_id"], r["window_start"], r["n"]) for _, r in held) == \
        sorted((r["meter_id"], r["window_start"], r["n"]) for _, r in released)


def test_quiet_stream_closes_windows_by_the_wall_clock():
    #   Readings up to minute 10, then silence. With close_idle_after="20m", once the input has
    #   been quiet for 20 wall-clock minutes event time moves with the wall clock, and the
    #   window [0, 15m) fires (event time 10 + 20 > 15) without waiting for more data.
    clock = ManualClock()
    steps = [("p", readings([0, 5, 10]))] + [Advance("5m")] * 8
    flow = ps.Flow("quiet")
    src = flow.source(Script(clock, steps), time=ps.EventTime("ts", unit="ms", close_idle_after="20m"))
    rec = Recorder(clock)
    src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(rec)
    rows = flow.run(clock=clock)["rec"]
    assert fired_at(rows, 0) == 25  # first check after 20 min of quiet: at wall minute 25
    assert [r["n"] for _, r in rows] == [3]


def test_without_close_idle_after_a_quiet_stream_waits_for_data():
    clock = ManualClock()
    steps = [("p", readings([0, 5, 10]))] + [Advance("5m")] * 8
    flow = ps.Flow("quiet")
    src = flow.source(Script(clock, steps), time=ps.EventTime("ts", unit="ms"))
    rec = Recorder(clock)
    src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(rec)
    assert fired_at(flow.run(clock=clock)["rec"], 0) == 40  # end of input


def test_processing_time_windows_fire_by_the_clock():
    #   Batches arrive at wall minutes 0, 0, 1, 3; one-minute processing-time windows fire as
    #   the clock passes their end, data or not.
    clock = ManualClock()
    b = {"meter_id": np.array([1, 2]), "kwh": np.array([1.0, 2.0])}
    steps = [("p", b), ("p", b), Advance("1m"), ("p", b), Advance("1m"), Advance("1m"), ("p", b), Advance("2m")]
    flow = ps.Flow("proc")
    src = flow.source(Script(clock, steps), time=ps.ProcessingTime())
    rec = Recorder(clock)
    src.window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count(), kwh=ps.agg.sum("kwh")).sink(rec)
    rows = flow.run(clock=clock)["rec"]
    start = ManualClock().now_ns()  # datetime64[ns] values come back from .item() as int ns
    got = [((r["window_start"] - start) // (60 * 10**9), r["n"], (wall - start) // (60 * 10**9)) for wall, r in rows]
    assert got == [(0, 4, 1), (1, 2, 2), (3, 2, 5)]  # (window minute, events, fired at wall minute)


def test_ingestion_time_from_the_clock_and_from_a_column():
    clock = ManualClock()
    steps = [("p", {"v": np.ones(3)}), Advance("10m"), ("p", {"v": np.ones(2)}), Advance("10m"), ("p", {"v": np.ones(1)})]
    flow = ps.Flow("ingest")
    src = flow.source(Script(clock, steps), time=ps.IngestionTime())
    src.window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    assert flow.run(clock=clock)["o"]["n"].tolist() == [5, 1]

    appended = {"v": np.ones(4), "append_ts": np.array([0, 1, 16, 17]) * MIN}
    flow = ps.Flow("ingest-col")
    src = flow.source(ps.sources.Arrays(appended), time=ps.IngestionTime("append_ts", unit="ms"))
    src.window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    assert flow.run()["o"]["n"].tolist() == [2, 2]


def test_union_of_sources_is_watermarked_per_source():
    #   Two sources, one lagging by an hour: the operator's watermark is the min of the two, so
    #   the lagging source's readings are not late (they would be with one shared watermark).
    lead = readings(np.arange(60, 120))
    lag = readings(np.arange(0, 60), meter=2)
    flow = ps.Flow("two")
    t = ps.EventTime("ts", unit="ms")
    a = flow.source(ps.sources.Arrays(lead, batch_size=10, name="lead"), time=t)
    b = flow.source(ps.sources.Arrays(lag, batch_size=10, name="lag"), time=t)
    res = a.union(b).key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count())
    res.sink(ps.sinks.Collect("o"))
    res.late().sink(ps.sinks.Collect("late"))
    out = flow.run()
    assert len(out["late"]) == 0
    assert out["o"]["n"].sum() == 120


@pytest.mark.parametrize("bad", [{"idleness": "0s"}, {"close_idle_after": "-1m"}])
def test_invalid_idle_settings(bad):
    with pytest.raises(ValueError, match=r"must be (> 0|>= 0)"):
        ps.EventTime("ts", unit="ms", **bad)


def test_manual_clock_does_not_go_back():
    c = ManualClock("2025-01-01T00:00")
    c.advance("1h")
    with pytest.raises(ValueError, match="does not go back"):
        c.set(0)


def test_a_paced_source_reads_as_arrays_with_a_pause_before_each_batch():
    import time

    data = {"ts": np.arange(10, dtype=np.int64), "v": np.arange(10.0)}
    t0 = time.monotonic()
    paced = list(ps.testing.Paced(data, pause=0.02, batch_size=3).read())
    waited = time.monotonic() - t0
    plain = list(ps.sources.Arrays(data, batch_size=3).read())
    assert len(paced) == len(plain) == 4 and waited >= 4 * 0.02  # sleeps last at least as long as asked
    for (a, *pa), (b, *pb) in zip(paced, plain):
        assert pa == pb and a.columns == b.columns and all(np.array_equal(a[c], b[c]) for c in a.columns)
    with pytest.raises(ValueError, match=r"pause must be >= 0 seconds, got -1"):
        ps.testing.Paced(data, pause=-1)
