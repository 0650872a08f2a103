"""The native engine against the per-event reference model, with Hypothesis.

Random keys, timestamps (negative ones too), disorder, window size/slide/offset (indivisible
slides included), out-of-orderness, allowed lateness, max_future and batch splits. For every
batching of the same stream:
  - on-time firings (update=False) equal the model's, row for row and in order;
  - every (key, window)'s final value equals the model's final value;
  - the set of (key, window) pairs that got late updates is the model's;
  - late and invalid side outputs are the same events.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pystream import _core
from reference import RefWindows

AGGS = [("count", 1), ("sum", 1), ("min", 1), ("max", 1), ("mean", 1), ("first", 1), ("last", 1), ("var", 1), ("std", 0)]
CODES = {"count": 0, "sum": 1, "min": 2, "max": 3, "mean": 4, "first": 5, "last": 6, "var": 7, "std": 8}


def make_engine(p, aggs=AGGS):
    return _core.WindowEngine(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"],
                              -1 if p["max_future"] is None else p["max_future"], p["keyed"],
                              [(CODES[k], d) for k, d in aggs])


def run_engine(p, keys, ts, vals, splits, aggs=AGGS, engine=None):
    """Runs the stream through one engine in batches cut at `splits`; returns rows, late, invalid."""
    eng = engine or make_engine(p, aggs)
    rows, late, invalid = [], [], []
    bounds = [0, *splits, len(ts)]
    for a, b in zip(bounds, bounds[1:]):
        out = eng.process(keys[a:b] if p["keyed"] else None, ts[a:b], [None if k == "count" else vals[a:b] for k, _ in aggs])
        collect(out, rows, p["keyed"])
        late.extend(int(i) + a for i in out["late"])
        invalid.extend(int(i) + a for i in out["invalid"])
    collect(eng.flush(), rows, p["keyed"])
    return rows, late, invalid


def collect(out, rows, keyed):
    n = len(out["start"])
    for r in range(n):
        key = int(out["key"][r]) if keyed else None
        vals = tuple(c[r].item() for c in out["cols"])
        rows.append((key, int(out["start"][r]), int(out["end"][r]), vals, bool(out["update"][r])))


def run_reference(p, keys, ts, vals, aggs=AGGS):
    ref = RefWindows(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"], p["max_future"], list(aggs), p["keyed"])
    for i in range(len(ts)):
        ref.event(i, int(keys[i]), int(ts[i]), [float(vals[i])] * len(aggs))
    ref.flush()
    rows = [(r.key, r.start, r.end, r.values, r.update) for r in ref.rows]
    return rows, ref.late, ref.invalid


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def same_row(x, y):
    return x[:3] == y[:3] and x[4] == y[4] and all(close(a, b) for a, b in zip(x[3], y[3]))


def canon(rows):
    """Rows with NaN made comparable (NaN != NaN would fail exact equality)."""
    return [(*r[:3], tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in r[3]), r[4]) for r in rows]


def final_values(rows):
    last = {}
    for r in rows:
        last[r[:3]] = r[3]
    return last


def assert_matches_model(engine_out, model_out):
    rows, late, invalid = engine_out
    mrows, mlate, minvalid = model_out
    assert late == mlate
    assert invalid == minvalid
    on_time = [r for r in rows if not r[4]]
    m_on_time = [r for r in mrows if not r[4]]
    assert len(on_time) == len(m_on_time), (on_time, m_on_time)
    for x, y in zip(on_time, m_on_time):
        assert same_row(x, y), (x, y)
    assert {r[:3] for r in rows if r[4]} == {r[:3] for r in mrows if r[4]}
    fe, fm = final_values(rows), final_values(mrows)
    assert fe.keys() == fm.keys()
    for k in fm:
        assert all(close(a, b) for a, b in zip(fe[k], fm[k])), (k, fe[k], fm[k])


@st.composite
def params(draw):
    size = draw(st.integers(1, 24))
    slide = draw(st.one_of(st.just(size), st.integers(1, size)))
    return {
        "size": size,
        "slide": slide,
        "offset": draw(st.integers(-40, 40)),
        "ooo": draw(st.integers(0, 12)),
        "lateness": draw(st.sampled_from([0, 0, 1, 5, 17])),
        "max_future": draw(st.one_of(st.none(), st.integers(0, 40))),
        "keyed": draw(st.booleans()),
    }


@st.composite
def streams(draw, max_events=60):
    n = draw(st.integers(0, max_events))
    base = draw(st.integers(-200, 200))
    step = draw(st.sampled_from([0, 1, 2, 3]))
    jitter = draw(st.integers(0, 30))
    ts = [base + i * step + draw(st.integers(-jitter, jitter)) for i in range(n)]
    # An occasional big jump forward or backward (devices sending backlog, poison clocks).
    if n and draw(st.booleans()):
        i = draw(st.integers(0, n - 1))
        ts[i] += draw(st.sampled_from([-500, -60, 60, 500, 10_000]))
    keys = [draw(st.integers(0, 4)) for _ in range(n)]
    vals = [float(draw(st.integers(-1000, 1000))) / 8 for _ in range(n)]
    return np.array(keys, dtype=np.int64), np.array(ts, dtype=np.int64), np.array(vals, dtype=np.float64)


@st.composite
def split_points(draw, n):
    kind = draw(st.sampled_from(["one", "two", "random", "whole"]))
    if kind == "whole" or n == 0:
        return []
    if kind == "one":
        return list(range(1, n))
    if kind == "two":
        return list(range(2, n, 2))
    return sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=n)))


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(p=params(), stream=streams(), data=st.data())
def test_engine_matches_reference_model(p, stream, data):
    keys, ts, vals = stream
    splits = data.draw(split_points(len(ts)))
    assert_matches_model(run_engine(p, keys, ts, vals, splits), run_reference(p, keys, ts, vals))


@SETTINGS
@given(p=params(), stream=streams(), data=st.data())
def test_results_do_not_depend_on_batch_size(p, stream, data):
    keys, ts, vals = stream
    whole = run_engine(p, keys, ts, vals, [])
    ones = run_engine(p, keys, ts, vals, list(range(1, len(ts))))
    rand = run_engine(p, keys, ts, vals, data.draw(split_points(len(ts))))
    for other in (ones, rand):
        assert other[1] == whole[1] and other[2] == whole[2]
        # On-time firings are identical, not merely equivalent: same rows, same order.
        assert canon([r for r in other[0] if not r[4]]) == canon([r for r in whole[0] if not r[4]])
        assert final_values(canon(other[0])) == final_values(canon(whole[0]))


@SETTINGS
@given(p=params(), stream=streams(), data=st.data())
def test_snapshot_restore_continue_equals_uninterrupted(p, stream, data):
    keys, ts, vals = stream
    splits = data.draw(split_points(len(ts)))
    expected = run_engine(p, keys, ts, vals, splits)
    # Stop after a random batch, snapshot, restore into a fresh engine, continue.
    bounds = [0, *splits, len(ts)]
    stop = data.draw(st.integers(0, len(bounds) - 1))
    eng = make_engine(p)
    rows, late, invalid = [], [], []
    for a, b in zip(bounds[:stop], bounds[1:stop + 1]):
        out = eng.process(keys[a:b] if p["keyed"] else None, ts[a:b], [None if k == "count" else vals[a:b] for k, _ in AGGS])
        collect(out, rows, p["keyed"])
        late.extend(int(i) + a for i in out["late"])
        invalid.extend(int(i) + a for i in out["invalid"])
    state = eng.snapshot()
    del eng
    fresh = make_engine(p)
    fresh.restore(state)
    cut = bounds[stop] if stop < len(bounds) else len(ts)
    rest = run_engine(p, keys[cut:], ts[cut:], vals[cut:], [s - cut for s in splits if s > cut], engine=fresh)
    rows += rest[0]
    late += [i + cut for i in rest[1]]
    invalid += [i + cut for i in rest[2]]
    assert (canon(rows), late, invalid) == (canon(expected[0]), expected[1], expected[2])


@settings(max_examples=150, deadline=None)
@given(p=params(), stream=streams(max_events=40))
def test_nan_values_propagate_like_numpy(p, stream):
    keys, ts, vals = stream
    vals = vals.copy()
    vals[::3] = np.nan
    assert_matches_model(run_engine(p, keys, ts, vals, []), run_reference(p, keys, ts, vals))


@settings(max_examples=40, deadline=None)
@given(p=params(), seed=st.integers(0, 2**32 - 1), nkeys=st.sampled_from([300, 700]))
def test_many_keys_cross_the_kernels_block_boundaries(p, seed, nkeys):
    """Hundreds of keys, so firings of several slices (sliding windows) merge and count over
    more than one block of 256 slots and rows; the streams above use five keys."""
    p = {**p, "keyed": True}
    rng = np.random.default_rng(seed)
    n = 3_000
    ts = np.sort(rng.integers(0, 60, n)) + rng.integers(-p["ooo"] - 3, 3, n)  # dense: >256 keys per window
    keys = rng.integers(0, nkeys, n).astype(np.int64)
    vals = rng.integers(-1000, 1000, n) / 8
    splits = sorted(rng.choice(np.arange(1, n), 5, replace=False).tolist())
    assert_matches_model(run_engine(p, keys, ts.astype(np.int64), vals, splits),
                         run_reference(p, keys, ts.astype(np.int64), vals))
