"""Count windows against a per-event reference, with Hypothesis: any keys, batch splits,
sizes and slides; snapshot -> restore -> continue; restore in a checkpointed flow."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pystream as ps
from test_checkpoints import Flaky  # an Arrays source that fails after N batches
from reference import aggregate
from test_engine_model import canon

AGGS = [("sum", 1), ("min", 1), ("max", 1), ("mean", 1), ("first", 1), ("last", 1), ("var", 1)]
CODES = {"count": 0, "sum": 1, "min": 2, "max": 3, "mean": 4, "first": 5, "last": 6, "var": 7, "std": 8}


def reference(n, slide, keys, ts, vals):
    """At a key's c-th event with c % slide == 0: aggregates of its last min(c, n) events."""
    seen: dict = {}
    rows = []
    for i, (k, t, v) in enumerate(zip(keys.tolist(), ts.tolist(), vals.tolist())):
        seen.setdefault(k, []).append((t, i, v))
        c = len(seen[k])
        if c % slide == 0:
            evs = seen[k][-min(c, n):]
            rows.append((k, evs[0][0], evs[-1][0], len(evs),
                         tuple(aggregate(kind, evs, ddof) for kind, ddof in AGGS)))
    return rows


def run(n, slide, keys, ts, vals, splits, engine=None):
    eng = engine or ps._core.CountWindowEngine(n, slide, True, [(0, 1)] + [(CODES[k], d) for k, d in AGGS])
    rows = []
    bounds = [0, *splits, len(ts)]
    for a, b in zip(bounds, bounds[1:]):
        out = eng.process(keys[a:b], ts[a:b], [None] + [vals[a:b]] * len(AGGS))
        for r in range(len(out["start"])):
            rows.append((int(out["key"][r]), int(out["start"][r]), int(out["end"][r]), int(out["cols"][0][r]),
                         tuple(c[r].item() for c in out["cols"][1:])))
    return rows, eng


def same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[:4] == w[:4], (g, w)
        for a, b in zip(g[4], w[4]):
            assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (g, w)


@st.composite
def streams(draw):
    n = draw(st.integers(1, 9))
    slide = draw(st.integers(1, n))
    size = draw(st.integers(0, 80))
    keys = np.array([draw(st.integers(-3, 3)) for _ in range(size)], dtype=np.int64)
    ts = np.array([draw(st.integers(-50, 50)) for _ in range(size)], dtype=np.int64)
    vals = np.array([draw(st.integers(-100, 100)) / 4 for _ in range(size)], dtype=np.float64)
    splits = sorted(draw(st.sets(st.integers(1, max(1, size - 1)), max_size=size)))
    return n, slide, keys, ts, vals, splits


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stream=streams())
def test_count_windows_match_reference_for_any_batching(stream):
    n, slide, keys, ts, vals, splits = stream
    want = reference(n, slide, keys, ts, vals)
    same(run(n, slide, keys, ts, vals, splits)[0], want)
    same(run(n, slide, keys, ts, vals, [])[0], want)


@SETTINGS
@given(stream=streams(), data=st.data())
def test_count_windows_snapshot_restore_continue(stream, data):
    n, slide, keys, ts, vals, _ = stream
    cut = data.draw(st.integers(0, len(ts)))
    want, _ = run(n, slide, keys, ts, vals, [])
    first, eng = run(n, slide, keys[:cut], ts[:cut], vals[:cut], [])
    fresh = ps._core.CountWindowEngine(n, slide, True, [(0, 1)] + [(CODES[k], d) for k, d in AGGS])
    fresh.restore(pickle.loads(pickle.dumps(eng.snapshot())))
    rest, _ = run(n, slide, keys[cut:], ts[cut:], vals[cut:], [], engine=fresh)
    assert canon([(r[0], r[1], r[2], r[4], r[3]) for r in first + rest]) == \
        canon([(r[0], r[1], r[2], r[4], r[3]) for r in want])


def test_trailing_group_never_fires_and_tumbling_is_sliding_with_equal_slide():
    data = {"k": np.array(["a"] * 7 + ["b"] * 2), "t": np.arange(9), "v": np.ones(9)}

    def out(window):
        flow = ps.Flow("c")
        src = flow.source(ps.sources.Arrays(data, batch_size=2), time=ps.EventTime("t", unit="s"))
        src.key_by("k").window(window).aggregate(v=ps.agg.sum("v")).sink(ps.sinks.Collect("o"))
        return flow.run()["o"]

    o = out(ps.windows.CountTumbling(3))
    assert list(zip(o["k"].tolist(), o["window_start"].tolist(), o["window_end"].tolist(), o["events"].tolist())) == \
        [("a", 0, 2, 3), ("a", 3, 5, 3)]  # a's 7th event and b's 2 events never fire
    assert out(ps.windows.CountSliding(3, 3)) == o


def test_count_windows_restore_exactly_in_a_checkpointed_flow(tmp_path):
    rng = np.random.default_rng(0)
    data = {"m": rng.integers(0, 50, 20_000), "t": np.arange(20_000) * 1000, "kwh": rng.random(20_000)}

    def flow_into(out, fail_after=None):
        flow = ps.Flow("count-ckpt")
        src = flow.source(Flaky(data, fail_after=fail_after, batch_size=700), time=ps.EventTime("t", unit="ms"))
        src.key_by("m").window(ps.windows.CountSliding(96, 4)).aggregate(kwh=ps.agg.sum("kwh")).sink(
            ps.sinks.Files(os.path.join(out, "o")))
        return flow

    flow_into(str(tmp_path / "ref")).run(checkpoints=str(tmp_path / "c1"), guarantee="exactly_once", checkpoint_every=3)
    with pytest.raises(ConnectionError):
        flow_into(str(tmp_path / "x"), fail_after=17).run(checkpoints=str(tmp_path / "c2"), guarantee="exactly_once",
                                                          checkpoint_every=3)
    res = flow_into(str(tmp_path / "x")).run(checkpoints=str(tmp_path / "c2"), guarantee="exactly_once", resume=True,
                                            checkpoint_every=3)
    assert res.resumed_from == 4
    assert ps.sinks.Files.read(str(tmp_path / "x" / "o")) == ps.sinks.Files.read(str(tmp_path / "ref" / "o"))


@pytest.mark.parametrize("make, match", [
    (lambda: ps.windows.CountTumbling(0), r"count window size must be a positive int \(a number of events\), got 0"),
    (lambda: ps.windows.CountTumbling("15m"), r"count window size must be a positive int"),
    (lambda: ps.windows.CountSliding(4, 5), r"count slide must be <= size, got slide=5 size=4"),
])
def test_invalid_count_windows(make, match):
    with pytest.raises(ValueError, match=match):
        make()
