"""Early (speculative) firings of time windows against the reference model, with Hypothesis:
on-time and early rows identical in sequence for any batching."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pystream as ps
from pystream import _core
from reference import RefWindows
from test_engine_model import canon, params, split_points, streams
from test_partitions import partitioned_script

AGGS = [("count", 1), ("sum", 1), ("max", 1)]
CODES = {"count": 0, "sum": 1, "max": 3}


def run(p, early, keys, ts, vals, splits):
    eng = _core.WindowEngine(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"],
                             -1 if p["max_future"] is None else p["max_future"], p["keyed"],
                             [(CODES[k], d) for k, d in AGGS], 1, early)
    rows = []
    bounds = [0, *splits, len(ts)]
    for a, b in zip(bounds, bounds[1:]):
        out = eng.process(keys[a:b] if p["keyed"] else None, ts[a:b], [None if k == "count" else vals[a:b] for k, _ in AGGS])
        rows += [(int(out["key"][r]) if p["keyed"] else None, int(out["start"][r]), int(out["end"][r]),
                  tuple(c[r].item() for c in out["cols"]), bool(out["update"][r]), bool(out["early"][r]))
                 for r in range(len(out["start"]))]
    return [r for r in rows if not r[4]]  # on-time and early rows (late updates coalesce per batch)


def reference(p, early, keys, ts, vals):
    ref = RefWindows(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"], p["max_future"], list(AGGS), p["keyed"],
                     early_every=early)
    for i in range(len(ts)):
        ref.event(i, int(keys[i]), int(ts[i]), [float(vals[i])] * len(AGGS))
    return [(r.key, r.start, r.end, r.values, r.update, r.early) for r in ref.rows if not r.update]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=params(), early=st.integers(1, 15), stream=streams(), data=st.data())
def test_early_firings_match_reference_for_any_batching(p, early, stream, data):
    keys, ts, vals = stream
    want = reference(p, early, keys, ts, vals)
    for splits in (data.draw(split_points(len(ts))), list(range(1, len(ts))), []):
        got = run(p, early, keys, ts, vals, splits)
        assert [r[5] for r in got] == [r[5] for r in want]
        assert canon([r[:5] for r in got]) == canon([r[:5] for r in want])


def test_early_every_in_a_flow_marks_partial_results():
    minute = 60_000
    data = {"m": np.zeros(8, dtype=np.int64), "t": np.array([0, 10, 20, 35, 50, 61, 80, 130]) * minute, "kwh": np.ones(8)}
    flow = ps.Flow("early")
    src = flow.source(ps.sources.Arrays(data, batch_size=3), time=ps.EventTime("t", unit="ms"))
    src.key_by("m").window(ps.windows.Tumbling("1h"), early_every="15m").aggregate(kwh=ps.agg.sum("kwh")).sink(
        ps.sinks.Collect("o"))
    o = flow.run()["o"]
    rows = list(zip((o["window_start"] // minute).tolist(), o["kwh"].tolist(), o["final"].tolist()))
    # Partial sums of the first hour as the watermark passes 0, 15, 30 and 45 min (after the
    # readings at 10, 20, 35 and 50 min), then its final row once the reading at 61 min arrives.
    assert rows[:5] == [(0, 2.0, False), (0, 3.0, False), (0, 4.0, False), (0, 5.0, False), (0, 5.0, True)]
    assert rows[5:] == [(60, 1.0, False), (60, 2.0, False), (60, 2.0, True), (120, 1.0, False), (120, 1.0, True)]


def test_early_every_refused_for_count_and_session_windows():
    import pytest

    flow = ps.Flow("e")
    src = flow.source(ps.sources.Arrays({"m": np.arange(3), "t": np.arange(3)}), time=ps.EventTime("t", unit="s"))
    with pytest.raises(ValueError, match=r"early_every applies to time windows"):
        src.key_by("m").window(ps.windows.Session("1m"), early_every="10s")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=params(), early=st.integers(1, 15), steps=partitioned_script(), declared=st.integers(0, 3))
def test_early_firings_with_partitions_match_reference(p, early, steps, declared):
    # Partitions declared before any data (as a flow's operators declare their source's) hold
    # the watermark back while data comes in: the first watermark then finds data in the
    # windows, and early firings go on from there (they had stopped for good).
    eng = _core.WindowEngine(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"],
                             -1 if p["max_future"] is None else p["max_future"], p["keyed"],
                             [(CODES[k], d) for k, d in AGGS], 1, early)
    ref = RefWindows(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"], p["max_future"], list(AGGS), p["keyed"],
                     early_every=early)
    for q in range(declared):
        eng.set_partition_idle(q, False)
        ref.set_idle(q, False)
    got, index = [], 0
    for step in steps:
        if step[0] == "idle":
            out = eng.set_partition_idle(step[1], step[2])
            ref.set_idle(step[1], step[2])
        else:
            _, part, keys, ts, vals = step
            out = eng.process(keys if p["keyed"] else None, ts, [None if k == "count" else vals for k, _ in AGGS],
                              1, part)
            ref.batch_from(part)
            for i in range(len(ts)):
                ref.event(index, int(keys[i]), int(ts[i]), [float(vals[i])] * len(AGGS))
                index += 1
        got += [(int(out["key"][r]) if p["keyed"] else None, int(out["start"][r]), int(out["end"][r]),
                 tuple(c[r].item() for c in out["cols"]), bool(out["update"][r]), bool(out["early"][r]))
                for r in range(len(out["start"]))]
    got = [r for r in got if not r[4]]  # on-time and early rows (late updates coalesce per batch)
    want = [(r.key, r.start, r.end, r.values, r.update, r.early) for r in ref.rows if not r.update]
    assert canon([r for r in got if r[5]]) == canon([r for r in want if r[5]])
    assert canon([r[:5] for r in got]) == canon([r[:5] for r in want])
