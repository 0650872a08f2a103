"""Smart-meter operators (register deltas, de-duplication, gaps) against plain per-event models,
with Hypothesis: same results for any batching and across snapshot/restore."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pystream as ps
from pystream import _core
from pystream.meters import Dedupe, Gaps, RegisterDeltas

TIME = ps.EventTime("t", unit="ns", max_out_of_orderness="7ns", max_future="500ns")
MOD, MAX_DELTA = 1000.0, 100.0


def arrival_model(ts, ooo=7, max_future=500):
    """Per event, in arrival order: (status, watermark before it); 0 on time, 1 behind, 2 future."""
    wm, top, out = None, None, []
    for t in ts:
        if wm is not None and t > wm + max_future:
            out.append((2, wm))
            continue
        out.append((0 if wm is None or t > wm else 1, wm))
        top = t if top is None else max(top, t)
        if wm is None or top - ooo - 1 > wm:
            wm = top - ooo - 1
    return out


def ref_deltas(keys, ts, vals):
    status = arrival_model(ts)
    per_key = {}
    late, invalid = [], []
    for i, (s, _) in enumerate(status):
        if s == 2:
            invalid.append(i)
        elif s == 1:
            late.append(i)
        else:
            per_key.setdefault(int(keys[i]), []).append((int(ts[i]), i, float(vals[i])))
    rows, anomalies = [], []
    for k, evs in per_key.items():
        evs.sort()
        base, base_t = None, None
        for t, i, v in evs:
            if base is None:
                base, base_t = v, t
                continue
            if t == base_t:
                anomalies.append(i)
                continue
            d = v - base
            if d < 0 and d + MOD <= MAX_DELTA:
                d += MOD
            if d < 0 or d > MAX_DELTA:
                anomalies.append(i)
            else:
                rows.append((k, t, base_t, d))
            base, base_t = v, t
    return sorted(rows), sorted(anomalies), late, invalid


def ref_dedupe(keys, ts, horizon):
    seen, out, dups, late, invalid = set(), [], [], [], []
    for i, (s, wm) in enumerate(arrival_model(ts)):
        if s == 2:
            invalid.append(i)
        elif wm is not None and ts[i] + horizon <= wm:
            late.append(i)
        elif (int(keys[i]), int(ts[i])) in seen:
            dups.append(i)
        else:
            seen.add((int(keys[i]), int(ts[i])))
            out.append(i)
    return out, dups, late, invalid


def ref_gaps(keys, ts, every):
    per_key = {}
    for i, (s, _) in enumerate(arrival_model(ts)):
        if s == 0:
            per_key.setdefault(int(keys[i]), []).append(int(ts[i]))
    gaps = []
    for k, times in per_key.items():
        times.sort()
        for a, b in zip(times, times[1:]):
            if b - a > every:
                gaps.append((k, a, b, (b - a - 1) // every))
    return sorted(gaps)


def run(make, batch, cuts, snapshot_at=None):
    """All outputs by port, with the input row index where the output rows are input rows."""
    op, outs = make(), {}
    bounds = [0, *cuts, len(batch)]
    for a, b in zip(bounds, bounds[1:]):
        if snapshot_at is not None and a == snapshot_at:
            fresh = make()
            fresh.restore(pickle.loads(pickle.dumps(op.snapshot())))
            op = fresh
        for port, rows in op.process(batch.slice(a, b)).items():
            outs.setdefault(port, []).append(rows)
    for port, rows in op.finish().items():
        outs.setdefault(port, []).append(rows)
    return {p: ps.Batch.concat(v) for p, v in outs.items()}


def ids(outs, port):
    return sorted(outs[port]["i"].tolist()) if port in outs else []


@st.composite
def meter_streams(draw, max_events=50):
    n = draw(st.integers(0, max_events))
    keys = np.array([draw(st.integers(0, 3)) for _ in range(n)], dtype=np.int64)
    ts = np.array([i * draw(st.sampled_from([1, 2, 5])) + draw(st.integers(-12, 12)) for i in range(n)], dtype=np.int64)
    if n and draw(st.booleans()):
        ts[draw(st.integers(0, n - 1))] += draw(st.sampled_from([-200, 900]))
    if n > 2 and draw(st.booleans()):  # a re-sent reading
        j = draw(st.integers(0, n - 2))
        k = draw(st.integers(j + 1, n - 1))
        keys[k], ts[k] = keys[j], ts[j]
    # Registers grow with time per meter, with an occasional wrap at MOD or a reset.
    vals = (np.maximum(ts, 0) * 3.0 + keys * 100.0) % MOD
    if n and draw(st.booleans()):
        vals[draw(st.integers(0, n - 1))] = 1.0  # a reset/replacement
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4)))) if n > 1 else []
    return keys, ts, vals, cuts


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stream=meter_streams())
def test_register_deltas_match_model_for_any_batching_and_restore(stream):
    keys, ts, vals, cuts = stream
    batch = ps.Batch({"m": keys, "t": ts, "reg": vals, "i": np.arange(len(ts))})
    want_rows, want_anom, want_late, want_invalid = ref_deltas(keys, ts, vals)

    def make():
        return RegisterDeltas(("m",), TIME, "reg", out="kwh", modulus=MOD, max_delta=MAX_DELTA)

    for c in (cuts, list(range(1, len(ts))), []):
        outs = run(make, batch, c)
        got = sorted(zip(*(outs["out"][k].tolist() for k in ("m", "t", "interval_start", "kwh")))) if "out" in outs else []
        assert [r[:3] for r in got] == [r[:3] for r in want_rows]
        assert np.allclose([r[3] for r in got], [r[3] for r in want_rows])
        assert ids(outs, "anomalies") == want_anom
        assert ids(outs, "late") == want_late and ids(outs, "invalid") == want_invalid
    if cuts:
        a = run(make, batch, cuts)
        b = run(make, batch, cuts, snapshot_at=cuts[len(cuts) // 2])
        assert {p: v.to_dict().keys() for p, v in a.items()} == {p: v.to_dict().keys() for p, v in b.items()}
        for p in a:
            assert all(np.array_equal(a[p][k], b[p][k]) for k in a[p].columns)


@SETTINGS
@given(stream=meter_streams(), horizon=st.sampled_from([1, 10, 50, 10_000]))
def test_dedupe_matches_model_for_any_batching(stream, horizon):
    keys, ts, _, cuts = stream
    batch = ps.Batch({"m": keys, "t": ts, "i": np.arange(len(ts))})
    want = ref_dedupe(keys, ts, horizon)
    for c in (cuts, list(range(1, len(ts))), []):
        outs = run(lambda: Dedupe(("m",), TIME, f"{horizon}ns"), batch, c)
        assert (ids(outs, "out"), ids(outs, "duplicates"), ids(outs, "late"), ids(outs, "invalid")) == want
    if cuts:
        outs = run(lambda: Dedupe(("m",), TIME, f"{horizon}ns"), batch, cuts, snapshot_at=cuts[0])
        assert (ids(outs, "out"), ids(outs, "duplicates"), ids(outs, "late"), ids(outs, "invalid")) == want


@SETTINGS
@given(stream=meter_streams(), every=st.sampled_from([1, 3, 8]))
def test_gaps_match_model_for_any_batching(stream, every):
    keys, ts, _, cuts = stream
    batch = ps.Batch({"m": keys, "t": ts})
    want = ref_gaps(keys, ts, every)
    for c in (cuts, []):
        outs = run(lambda: Gaps(("m",), TIME, f"{every}ns"), batch, c)
        got = sorted(zip(*(outs["out"][k].tolist() for k in ("m", "gap_start", "gap_end", "missing")))) if "out" in outs else []
        assert got == want


def test_register_pipeline_in_a_flow_with_side_outputs():
    """Re-sent readings are dropped, a 5-digit register wraps, a replaced meter restarts, a
    quarter-hour is missing: usage per hour is exact and every oddity is reported."""
    q = 15 * 60
    t = np.array([0, 1, 2, 3, 3, 5, 6, 7, 8], dtype=np.int64) * q  # meter 1; quarter 4 missing
    reg = np.array([99_990.0, 99_995.0, 2.0, 7.0, 7.0, 17.0, 5.0, 9.0, 14.0])  # wraps at 1e5; replaced at 6
    data = {"meter": np.ones(len(t), dtype=np.int64), "t": t, "register": reg}
    flow = ps.Flow("registers")
    src = flow.source(ps.sources.Arrays(data, batch_size=2), time=ps.EventTime("t", unit="s"))
    dedup = src.key_by("meter").dedupe("6h")
    usage = dedup.register_deltas("register", out="kwh", modulus=100_000)
    usage.window(ps.windows.Tumbling("1h")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("hourly"))
    usage.side("anomalies").sink(ps.sinks.Collect("anomalies"))
    dedup.side("duplicates").sink(ps.sinks.Collect("dups"))
    dedup.gaps("15m").sink(ps.sinks.Collect("gaps"))
    r = flow.run()
    assert r["dups"]["t"].tolist() == [3 * q]
    assert r["anomalies"]["register"].tolist() == [5.0] and "backwards" in r["anomalies"]["reason"][0]
    # Hour 0: 5, 7 (wrapped at 1e5), 5; hour 1: 10 and 4 (the replacement only sets a baseline);
    # hour 2: 5.
    assert r["hourly"]["kwh"].tolist() == [17.0, 14.0, 5.0]
    assert list(zip(r["gaps"]["gap_start"].tolist(), r["gaps"]["gap_end"].tolist(), r["gaps"]["missing"].tolist())) == [
        (3 * q, 5 * q, 1)]
    with pytest.raises(ValueError, match="has side outputs"):
        usage.side("duplicates")
    with pytest.raises(ValueError, match="modulus must be > 0"):
        src.key_by("meter").register_deltas("register", modulus=-1)
    with pytest.raises(ValueError, match="works per key"):
        RegisterDeltas((), TIME, "register")


def test_dedupe_memory_follows_the_live_pairs_not_time():
    """A day of readings with a 1-minute horizon: the seen-pairs table stays at the size of
    one horizon's pairs (expired pairs are dropped when the table is rebuilt)."""

    s = _core.PairSet()
    for minute in range(1_440):
        t = np.full(100, minute * 60, dtype=np.int64)
        dup = s.insert(np.arange(100, dtype=np.int64), t)
        assert not dup.any()
        s.expire(minute * 60 - 60)
    assert len(s) <= 200 and s.capacity <= 4_096
    assert s.insert(np.array([5], dtype=np.int64), np.array([1_439 * 60], dtype=np.int64)).tolist() == [1]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.one_of(
    st.lists(st.integers(-5, 5), max_size=300),  # many ties
    st.lists(st.integers(-2**63, 2**63 - 1), max_size=300),  # the whole int64 range
    st.lists(st.integers(0, 2**40), max_size=3000)))
def test_native_stable_argsort_is_numpys_stable_argsort(keys):
    a = np.array(keys, dtype=np.int64)
    assert _core.stable_argsort(a).tolist() == np.argsort(a, kind="stable").tolist()


def test_stable_order_helpers_agree_with_numpy_for_every_dtype_they_take():
    from pystream._order import stable_argsort, stable_order

    rng = np.random.default_rng(3)
    for keys in (rng.integers(0, 5, 500).astype(np.uint8), rng.integers(-9, 9, 500).astype(np.int32),
                 rng.integers(2**63, 2**64 - 1, 500, dtype=np.uint64),  # beyond int64: NumPy's sort
                 (rng.integers(0, 10**6, 500) * 10**6).astype("datetime64[ns]"), rng.random(500)):
        assert stable_argsort(keys).tolist() == np.argsort(keys, kind="stable").tolist(), keys.dtype
    major, minor = rng.integers(0, 50, 1_000), rng.integers(-10**12, 10**12, 1_000)
    assert stable_order(major, minor).tolist() == np.lexsort((minor, major)).tolist()  # packed
    wide = rng.integers(-2**62, 2**62, 1_000)
    assert stable_order(major, wide).tolist() == np.lexsort((wide, major)).tolist()  # too wide to pack
