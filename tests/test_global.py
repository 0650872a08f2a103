"""Global windows with count, event-time and processing-time triggers, accumulating and purging,
against a plain per-event model (Hypothesis), for any batching and across snapshot/restore."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pystream as ps
from pystream import _core
from opcheck import assert_resume_equals_whole
from reference import aggregate
from test_engine_model import canon, split_points, streams

AGGS = [("sum", 1), ("max", 1), ("first", 1), ("last", 1)]
CODES = {"count": 0, "sum": 1, "max": 3, "first": 5, "last": 6}


class RefGlobal:
    """One window per key; rows are (key, first t, last t, events, aggregates)."""

    def __init__(self, trigger, value, purge, ooo, max_future):
        self.trigger, self.value, self.purge, self.ooo, self.max_future = trigger, value, purge, ooo, max_future
        self.contents, self.pending, self.order = {}, {}, {}
        self.wm = self.top = self.next = None
        self.rows, self.invalid = [], []
        self.arrival = 0

    def fire(self, key):
        evs = self.contents[key]
        vals = tuple(aggregate(kind, evs, ddof) for kind, ddof in AGGS)
        self.rows.append((key, evs[0][0], evs[-1][0], len(evs), vals))
        self.pending[key] = 0
        if self.purge:
            self.contents[key] = []

    def fire_all(self):
        for key in sorted((k for k, p in self.pending.items() if p), key=self.order.__getitem__):
            self.fire(key)

    def event(self, i, key, t, v):
        self.order.setdefault(key, len(self.order))
        if self.wm is not None and self.max_future is not None and t > self.wm + self.max_future:
            self.invalid.append(i)
            return
        self.contents.setdefault(key, []).append((t, self.arrival, v))
        self.arrival += 1
        self.pending[key] = self.pending.get(key, 0) + 1
        if self.trigger == 0 and self.pending[key] == self.value:
            self.fire(key)
        self.top = t if self.top is None else max(self.top, t)
        cand = self.top - self.ooo - 1
        if self.wm is None or cand > self.wm:
            first = self.wm is None
            self.wm = cand
            if self.trigger == 1 and not first and cand >= self.next:
                self.fire_all()
            self.next = (cand // self.value + 1) * self.value

    def flush(self):
        if self.trigger != 0:
            self.fire_all()


def run_engine(trigger, value, purge, p, keys, ts, vals, splits, snapshot_at=None):
    def make():
        return _core.GlobalEngine(trigger, value, value, purge, p["ooo"], -1 if p["max_future"] is None else p["max_future"],
                                  True, [(0, 1)] + [(CODES[k], d) for k, d in AGGS])
    eng = make()
    rows, invalid = [], []
    bounds = [0, *splits, len(ts)]

    def collect(out):
        for r in range(len(out["start"])):
            rows.append((int(out["key"][r]), int(out["start"][r]), int(out["end"][r]), int(out["cols"][0][r]),
                         tuple(c[r].item() for c in out["cols"][1:])))
    for a, b in zip(bounds, bounds[1:]):
        if snapshot_at is not None and a == snapshot_at:
            state = eng.snapshot()
            eng = make()
            eng.restore(state)
        out = eng.process(keys[a:b], ts[a:b], [None] + [vals[a:b]] * len(AGGS))
        collect(out)
        invalid.extend(int(i) + a for i in out["invalid"])
    collect(eng.flush())
    return rows, invalid


def run_reference(trigger, value, purge, p, keys, ts, vals):
    ref = RefGlobal(trigger, value, purge, p["ooo"], p["max_future"])
    for i in range(len(ts)):
        ref.event(i, int(keys[i]), int(ts[i]), float(vals[i]))
    ref.flush()
    return ref.rows, ref.invalid


def canon_rows(rows):
    return canon([(r[0], r[1], r[2], r[4], r[3]) for r in rows])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trigger=st.sampled_from([0, 1]), value=st.integers(1, 12), purge=st.booleans(),
       p=st.fixed_dictionaries({"ooo": st.integers(0, 12), "max_future": st.one_of(st.none(), st.integers(0, 40))}),
       stream=streams(), data=st.data())
def test_global_windows_match_reference_for_any_batching(trigger, value, purge, p, stream, data):
    keys, ts, vals = stream
    want, want_invalid = run_reference(trigger, value, purge, p, keys, ts, vals)
    for splits in (data.draw(split_points(len(ts))), list(range(1, len(ts))), []):
        rows, invalid = run_engine(trigger, value, purge, p, keys, ts, vals, splits)
        assert canon_rows(rows) == canon_rows(want)
        assert invalid == want_invalid
    splits = data.draw(split_points(len(ts)))
    if splits:
        resumed, _ = run_engine(trigger, value, purge, p, keys, ts, vals, splits, snapshot_at=splits[len(splits) // 2])
        assert canon_rows(resumed) == canon_rows(want)


def test_invalid_rows_are_refused_by_the_guard():
    e = _core.GlobalEngine(1, 0, 10, False, 0, 5, True, [(0, 1)])
    out = e.process(np.array([1, 1, 1]), np.array([0, 100, 3]), [None])
    assert out["invalid"].tolist() == [1]


def test_processing_time_trigger_fires_on_the_wall_clock():
    """Readings arrive over time; every 10 s of wall clock the keys that got readings since
    their last firing emit their running totals (accumulating)."""
    clock = ps.testing.ManualClock("2025-01-01T00:00:00")
    steps = [("p", {"m": [1, 2], "t": [0, 1], "kwh": [1.0, 2.0]}), ps.testing.Advance("4s"),
             ("p", {"m": [1], "t": [2], "kwh": [3.0]}), ps.testing.Advance("7s"),   # 11 s: fire m=1 (4.0), m=2 (2.0)
             ("p", {"m": [2], "t": [3], "kwh": [5.0]}), ps.testing.Advance("10s"),  # 21 s: fire m=2 only (7.0)
             ps.testing.Advance("10s"),                                              # 31 s: nothing new
             ("p", {"m": [1], "t": [4], "kwh": [1.0]})]                              # end of input: m=1 (5.0)
    flow = ps.Flow("ptime")
    src = flow.source(ps.testing.Script(clock, steps), time=ps.EventTime("t", unit="s"))
    (src.key_by("m").window(ps.windows.Global(ps.triggers.ProcessingTimeInterval("10s")))
     .aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("o")))
    o = flow.run(clock=clock)["o"]
    assert list(zip(o["m"].tolist(), o["kwh"].tolist(), o["events"].tolist())) == [
        (1, 4.0, 2), (2, 2.0, 1), (2, 7.0, 2), (1, 5.0, 3)]


def test_global_window_errors():
    with pytest.raises(TypeError, match="expects a ps.triggers trigger"):
        ps.windows.Global("96")
    with pytest.raises(ValueError, match="mode must be"):
        ps.windows.Global(ps.triggers.Count(3), mode="sometimes")
    with pytest.raises(ValueError, match="positive int"):
        ps.triggers.Count(0)
    with pytest.raises(ValueError, match="interval must be > 0"):
        ps.triggers.EventTimeInterval("0s")
    flow = ps.Flow("g")
    src = flow.source(ps.sources.Arrays({"m": np.arange(3), "t": np.arange(3)}), time=ps.EventTime("t", unit="s"))
    with pytest.raises(ValueError, match="nothing is late for a global window"):
        src.key_by("m").window(ps.windows.Global(ps.triggers.Count(2)), allowed_lateness="1m").aggregate(n=ps.agg.count())
    with pytest.raises(ValueError, match="early_every applies to time windows"):
        src.key_by("m").window(ps.windows.Global(ps.triggers.Count(2)), early_every="1m")


def test_global_windows_in_a_flow_and_their_snapshots():
    """A purging count trigger (= CountTumbling) and an accumulating event-time trigger in one
    flow; each operator's snapshot restored midway continues exactly."""
    rng = np.random.default_rng(5)
    n = 3_000
    data = {"m": rng.integers(0, 30, n), "t": np.sort(rng.integers(0, 50_000, n)), "kwh": rng.random(n)}

    def build(limit=None):
        flow = ps.Flow("global-ckpt")
        d = data if limit is None else {k: v[:limit] for k, v in data.items()}
        src = flow.source(ps.sources.Arrays(d, batch_size=256), time=ps.EventTime("t", unit="s", max_out_of_orderness="5s"))
        keyed = src.key_by("m")
        keyed.window(ps.windows.Global(ps.triggers.Count(7), mode="purging")).aggregate(kwh=ps.agg.sum("kwh")).sink(
            ps.sinks.Collect("count"))
        keyed.window(ps.windows.Global(ps.triggers.EventTimeInterval("1h"))).aggregate(kwh=ps.agg.sum("kwh")).sink(
            ps.sinks.Collect("hourly"))
        return flow

    whole = build().run()
    # Each key's purged count windows hold 7 events; the last event-time firing of each key
    # covers all of its events (accumulating).
    assert set(whole["count"]["events"].tolist()) == {7}
    h = whole["hourly"]
    last = {k: s for k, s in zip(h["m"].tolist(), h["kwh"].tolist())}
    totals = np.bincount(data["m"], weights=data["kwh"])
    assert all(abs(last[k] - totals[k]) < 1e-9 for k in last)
    from pystream.operators import make_window_operator

    batch = ps.Batch(data)
    for window in (ps.windows.Global(ps.triggers.Count(7), mode="purging"), ps.windows.Global(ps.triggers.EventTimeInterval("1h"))):
        assert_resume_equals_whole(lambda: make_window_operator(window, {"kwh": ps.agg.sum("kwh")}, ps.EventTime("t", unit="s"), ("m",)),
                                   batch, 300, 1500)
