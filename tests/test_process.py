"""Keyed state and timers: process(fn, state=..., on_timer=..., ttl=...)."""

from __future__ import annotations

import pathlib
import pickle
import runpy

import numpy as np
import pytest

import pystream as ps
from pystream.process import KeyedProcessOperator
from pystream.testing import Advance, ManualClock, Script

HOUR = 3_600_000_000_000
EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "outage_alerts.py"


def outage_reference(keys, ts_ms, ooo_ms):
    """Per event, in arrival order: re-arm the key's timer at last + 1 h, move the watermark,
    fire every timer it passed (then end of input fires the rest)."""
    last, timer, alerts, wm = {}, {}, [], None
    for k, t in zip(keys.tolist(), (ts_ms * 1_000_000).tolist()):
        last[k] = max(last.get(k, t), t)
        timer[k] = last[k] + HOUR
        cand = max(last.values()) - ooo_ms * 1_000_000 - 1
        wm = cand if wm is None else max(wm, cand)
        for due_k in sorted((k2 for k2, tt in timer.items() if tt <= wm), key=lambda k2: (timer[k2], k2)):
            alerts.append((due_k, last[due_k], timer.pop(due_k)))
    for k2 in sorted(timer, key=lambda k2: (timer[k2], k2)):
        alerts.append((k2, last[k2], timer[k2]))
    return alerts


def test_outage_example_matches_a_per_event_reference():
    ns = runpy.run_path(str(EXAMPLE))
    keep = ns["readings"]["meter_id"] < 50  # the first 50 meters, the dark ones (7, 8) among them
    data = {k: v[keep] for k, v in ns["readings"].items()}
    flow = ps.Flow("outage-small")
    # Batches of one reading give per-event timer semantics; the example uses 5,000-row batches.
    stream = flow.source(ps.sources.Arrays(data, batch_size=1),
                         time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    stream.key_by("meter_id").process(ns["track"], state={"total_kwh": 0.0, "last_reading": np.int64(0)},
                                      on_timer=ns["outage"], ttl="1d").sink(ps.sinks.Collect("alerts"))
    got = flow.run()["alerts"]
    want = outage_reference(data["meter_id"], data["ts"], 60_000)
    assert list(zip(got["meter_id"].tolist(), got["silent_since"].astype(np.int64).tolist(),
                    got["alert_at"].astype(np.int64).tolist())) == want
    during = got["alert_at"].astype(np.int64) <= data["ts"].max() * 1_000_000  # not just end of input
    assert set(got["meter_id"][during].tolist()) == {7, 8}
    per_meter = np.bincount(data["meter_id"], weights=data["kwh"])
    at_outage = got["total_kwh"][during & (got["meter_id"] == 7)][0]
    before = (data["meter_id"] == 7) & (data["ts"] * 1_000_000 < got["alert_at"][during & (got["meter_id"] == 7)][0].astype(np.int64))
    assert at_outage == pytest.approx(data["kwh"][before].sum()) and at_outage < per_meter[7]
    final = dict(zip(got["meter_id"].tolist(), got["total_kwh"].tolist()))  # end-of-input alerts carry the totals
    assert final[49] == pytest.approx(per_meter[49])


def test_outage_example_with_large_batches_finds_the_same_outages():
    ns = runpy.run_path(str(EXAMPLE))
    got = ns["flow"].run()["alerts"]
    during = got["alert_at"].astype(np.int64) <= ns["readings"]["ts"].max() * 1_000_000
    assert set(got["meter_id"][during].tolist()) == {7, 8}


def test_state_is_per_key_and_vectorized():
    seen_batch_sizes = []

    def count(batch, ctx):
        seen_batch_sizes.append(len(batch))
        ctx.state["n"] += np.bincount(ctx.row, minlength=len(ctx.keys))
        return {"site": ctx.keys["site"], "n": ctx.state["n"]}

    flow = ps.Flow("p")
    data = {"site": np.array(["a", "b", "a", "c", "a", "b"]), "t": np.arange(6)}
    src = flow.source(ps.sources.Arrays(data, batch_size=3), time=ps.EventTime("t", unit="s"))
    src.key_by("site").process(count, state={"n": 0}).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    assert seen_batch_sizes == [3, 3]
    assert list(zip(o["site"].tolist(), o["n"].tolist())) == [("a", 2), ("b", 1), ("a", 3), ("b", 2), ("c", 1)]


def test_processing_time_timers_fire_by_the_clock():
    clock = ManualClock()

    def arm(batch, ctx):
        ctx.set_processing_timer(ctx.now + ps.parse_duration("10m"))

    def ring(timers, ctx):
        return {"k": timers["k"], "at": np.full(len(timers), ctx.now)}

    steps = [("p", {"k": np.array([1, 2]), "t": np.array([0, 0])}), Advance("5m"),
             ("p", {"k": np.array([2]), "t": np.array([1])}), Advance("6m"), Advance("5m")]
    flow = ps.Flow("proc-timers")
    src = flow.source(Script(clock, steps), time=ps.EventTime("t", unit="s"))
    src.key_by("k").process(arm, on_timer=ring).sink(ps.sinks.Collect("o"))
    o = flow.run(clock=clock)["o"]
    start = ManualClock().now_ns()
    # key 1 armed at 0 -> fires at the first check after 10 min (wall 11m); key 2 re-armed at 5m -> 15m (16m).
    assert [(k, (at - start) // 60_000_000_000) for k, at in zip(o["k"].tolist(), o["at"].tolist())] == [(1, 11), (2, 16)]


def test_ttl_drops_state_of_silent_keys():
    def total(batch, ctx):
        ctx.state["sum"] += np.bincount(ctx.row, weights=batch["v"], minlength=len(ctx.keys))
        return {"k": ctx.keys["k"], "sum": ctx.state["sum"]}

    data = {"k": np.array([1, 2, 2, 2, 1]), "t": np.array([0, 10, 100, 200, 300]), "v": np.ones(5)}
    flow = ps.Flow("ttl")
    src = flow.source(ps.sources.Arrays(data, batch_size=1), time=ps.EventTime("t", unit="s"))
    src.key_by("k").process(total, state={"sum": 0.0}, ttl="150s").sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    # key 1 silent from t=0 to t=300 (> 150 s): its sum starts again; key 2 never silent that long.
    assert o["sum"].tolist() == [1.0, 1.0, 2.0, 3.0, 1.0]


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_process_state_and_timers_survive_snapshot(cut):
    ns = runpy.run_path(str(EXAMPLE))
    data = ns["readings"]
    batches = [ps.Batch({k: v[i:i + 4000] for k, v in data.items()}) for i in range(0, len(data["ts"]), 4000)]

    def make():
        return KeyedProcessOperator(ns["track"], ("meter_id",), ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"),
                                    {"total_kwh": 0.0, "last_reading": np.int64(0)}, ns["outage"], ps.parse_duration("1d"))

    def drain(op, bs):
        out = [op.process(b) for b in bs]
        return [b for b in out if b is not None]

    straight = make()
    want = drain(straight, batches) + [straight.finish()]
    first = make()
    got = drain(first, batches[:cut])
    second = make()
    second.restore(pickle.loads(pickle.dumps(first.snapshot())))
    got += drain(second, batches[cut:]) + [second.finish()]
    assert ps.Batch.concat(got) == ps.Batch.concat(want)


def test_process_errors():
    flow = ps.Flow("e")
    src = flow.source(ps.sources.Arrays({"k": np.arange(3)}))
    with pytest.raises(ValueError, match=r"process\(\) needs a time notion for its timers"):
        src.key_by("k").process(lambda b, c: None)
    timed = ps.Flow("e2").source(ps.sources.Arrays({"k": np.arange(3), "t": np.arange(3)}), time=ps.EventTime("t", unit="s"))
    with pytest.raises(TypeError, match=r"state 'x': the default must be a number or a numeric array"):
        timed.key_by("k").process(lambda b, c: None, state={"x": "text"})
    with pytest.raises(TypeError, match=r"on_timer must be a function"):
        timed.key_by("k").process(lambda b, c: None, on_timer=5)


def test_array_state_per_key_keeps_the_last_readings():
    """Array state: each meter keeps its last three readings (a fixed-shape array per key)."""
    def recent(batch, ctx):
        # Shift each key's window left by the number of its readings in this batch, then fill
        # the tail in arrival order; vectorized over rows via each row's rank within its key.
        counts = np.bincount(ctx.row, minlength=len(ctx.keys))
        order = np.argsort(ctx.row, kind="stable")
        rank = np.empty(len(batch), dtype=np.int64)
        rank[order] = np.arange(len(batch)) - np.repeat(np.cumsum(counts) - counts, counts)
        hist = ctx.state["last3"]
        shift = np.minimum(counts, 3)
        for s in (1, 2, 3):  # three fixed cases, not a loop over events
            sel = shift == s
            hist[sel] = np.roll(hist[sel], -s, axis=1)
        keep = rank >= counts[ctx.row] - 3
        slot = 3 - (counts[ctx.row] - rank)
        hist[ctx.row[keep], slot[keep]] = batch["v"][keep]
        return {"k": ctx.keys["k"], "a": hist[:, 0], "b": hist[:, 1], "c": hist[:, 2]}

    data = {"k": np.array([1, 1, 2, 1, 1, 2, 1]), "t": np.arange(7), "v": np.arange(7, dtype=float) * 10}
    flow = ps.Flow("arr")
    src = flow.source(ps.sources.Arrays(data, batch_size=4), time=ps.EventTime("t", unit="s"))
    src.key_by("k").process(recent, state={"last3": np.full(3, np.nan)}).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    last = {k: (a, b, c) for k, a, b, c in zip(o["k"].tolist(), o["a"].tolist(), o["b"].tolist(), o["c"].tolist())}
    assert last[1] == (30.0, 40.0, 60.0)
    assert np.isnan(last[2][0]) and last[2][1:] == (20.0, 50.0)


def test_future_clocks_do_not_reach_process_or_its_watermark():
    fired = []

    def arm(batch, ctx):
        ctx.set_event_timer(ctx.ts + 10**9)

    def ring(timers, ctx):
        fired.append(len(timers))

    data = {"k": np.array([1, 2, 3, 1]), "t": np.array([0, 1, 10**9, 2])}  # key 3's clock is far ahead
    flow = ps.Flow("guard")
    src = flow.source(ps.sources.Arrays(data, batch_size=2), time=ps.EventTime("t", unit="s", max_future="1h"))
    src.key_by("k").process(arm, on_timer=ring).sink(ps.sinks.Collect("o"))
    flow.run()
    assert fired[:-1] == [] and fired[-1] == 2  # nothing fired early; at end of input keys 1 and 2 only
