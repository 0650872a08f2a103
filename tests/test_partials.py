"""Partial results (queryable live state) of every window kind against the reference models,
with Hypothesis: after each batch, the engine's peek() of all keys and of each key equals what
the model holds in the windows that have not fired yet, and peeking changes nothing (the whole
run still matches the model). Then the same through flow.query, flow.state(...).top and HTTP."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pystream as ps
from pystream import _core
from reference import RefCalendar, RefWindows, aggregate
import test_calendar as tcal
import test_count_windows as tc
import test_engine_model as tm
import test_global as tg
import test_sessions as ts_
from test_query import MIN, Gate, get, start

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def peek_rows(out, keyed=True):
    """(key, start, end, values, update) per row of an engine's output, sorted."""
    rows = []
    for r in range(len(out["start"])):
        key = int(out["key"][r]) if keyed else None
        rows.append((key, int(out["start"][r]), int(out["end"][r]), tuple(c[r].item() for c in out["cols"]),
                     bool(out["update"][r])))
    return sorted(rows, key=lambda x: (x[0] is not None, x[0] or 0, x[1], x[2]))


def assert_same_rows(got, want):
    assert [r[:3] + (r[4],) for r in got] == [r[:3] + (r[4],) for r in want], (got, want)
    for g, w in zip(got, want):
        assert all(tm.close(a, b) for a, b in zip(g[3], w[3])), (g, w)


def check_peeks(engine, want, keys, keyed=True):
    """peek() equals `want`; peek(k) equals want's rows of k for every key the engine holds."""
    assert_same_rows(peek_rows(engine.peek(), keyed), want)
    if keyed:
        for k in keys:
            assert_same_rows(peek_rows(engine.peek(k)), [r for r in want if r[0] == k])


def batches(n, splits):
    bounds = [0, *splits, n]
    return list(zip(bounds, bounds[1:]))


# -- time windows (tumbling and sliding) -------------------------------------------------------

def ref_window_partials(ref):
    W = ref.wm
    rows = []
    for (k, j), evs in ref.contents.items():
        if W is None or ref.end(j) - 1 > W:
            row = ref._row(k, j, False)
            rows.append((k, row.start, row.end, row.values, False))
    return sorted(rows, key=lambda x: (x[0] is not None, x[0] or 0, x[1], x[2]))


@SETTINGS
@given(p=tm.params(), stream=tm.streams(), data=st.data())
def test_time_window_partials_match_the_model_between_batches(p, stream, data):
    keys, ts, vals = stream
    splits = data.draw(tm.split_points(len(ts)))
    eng = tm.make_engine(p)
    ref = RefWindows(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"], p["max_future"], list(tm.AGGS), p["keyed"])
    rows, late, invalid = [], [], []
    check_peeks(eng, [], [], p["keyed"])
    for a, b in batches(len(ts), splits):
        out = eng.process(keys[a:b] if p["keyed"] else None, ts[a:b], [None if k == "count" else vals[a:b] for k, _ in tm.AGGS])
        tm.collect(out, rows, p["keyed"])
        late += [int(i) + a for i in out["late"]]
        invalid += [int(i) + a for i in out["invalid"]]
        for i in range(a, b):
            ref.event(i, int(keys[i]), int(ts[i]), [float(vals[i])] * len(tm.AGGS))
        check_peeks(eng, ref_window_partials(ref), sorted(set(keys[:b].tolist())), p["keyed"])
    tm.collect(eng.flush(), rows, p["keyed"])
    tm.assert_matches_model((rows, late, invalid), tm.run_reference(p, keys, ts, vals))
    assert len(eng.peek()["start"]) == 0  # flushed: nothing is open


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=tcal.cases())
def test_calendar_partials_match_the_model_between_batches(case):
    p, zones, keys, ts, vals, zone_ids, splits = case
    eng = tcal.make_engine(p, zones)
    ref = RefCalendar(0, 0, 0, p["ooo"], p["lateness"], p["max_future"], list(tcal.AGGS), True, unit=p["unit"],
                      week_start=p["week_start"])
    for a, b in batches(len(ts), splits):
        eng.process(keys[a:b], ts[a:b], [None if k == "count" else vals[a:b] for k, _ in tcal.AGGS], zone_ids[a:b])
        for i in range(a, b):
            ref.calendar_event(i, int(keys[i]), int(ts[i]), [float(vals[i])] * len(tcal.AGGS), zones[zone_ids[i]])
        check_peeks(eng, ref_window_partials(ref), sorted(set(keys[:b].tolist())))


# -- sessions -----------------------------------------------------------------------------------

def ref_session_partials(ref):
    W = ref.wm
    return sorted(((k, s["start"], s["last"] + ref.gap, ref._row(k, s, False)[3], s["emitted"])
                   for k, ss in ref.sessions.items() for s in ss if W is None or s["last"] + ref.gap - 1 > W),
                  key=lambda x: (x[0], x[1], x[2]))


@SETTINGS
@given(case=ts_.cases())
def test_session_partials_match_the_model_between_batches(case):
    p, keys, ts, vals, splits = case
    eng = _core.SessionEngine(p["gap"], p["ooo"], p["lateness"], -1 if p["max_future"] is None else p["max_future"], True,
                              [(ts_.CODES[k], d) for k, d in ts_.AGGS])
    ref = ts_.RefSessions(p["gap"], p["ooo"], p["lateness"], p["max_future"])
    rows, late, invalid = [], [], []
    for a, b in batches(len(ts), splits):
        r, lt, inv, eng = ts_.run_engine(p, keys[a:b], ts[a:b], vals[a:b], [], engine=eng)
        rows += r
        late += [i + a for i in lt]
        invalid += [i + a for i in inv]
        for i in range(a, b):
            ref.event(i, int(keys[i]), int(ts[i]), float(vals[i]))
        check_peeks(eng, ref_session_partials(ref), sorted(set(keys[:b].tolist())))
    ts_.check(rows + ts_.flush_rows(eng), late, invalid, ts_.reference(p, keys, ts, vals))


# -- count windows ------------------------------------------------------------------------------

def ref_count_partials(n, slide, seen):
    """Per key, the window that fires next over the events it holds so far."""
    rows = []
    for k, evs in seen.items():
        c = len(evs)
        frm = max(0, (c // slide + 1) * slide - n)
        if c > frm:
            part = evs[frm:c]
            vals = (len(part),) + tuple(aggregate(kind, part, ddof) for kind, ddof in tc.AGGS)
            rows.append((k, part[0][0], part[-1][0], vals, False))
    return sorted(rows, key=lambda x: (x[0], x[1], x[2]))


@SETTINGS
@given(stream=tc.streams())
def test_count_window_partials_match_the_model_between_batches(stream):
    n, slide, keys, ts, vals, splits = stream
    eng = _core.CountWindowEngine(n, slide, True, [(0, 1)] + [(tc.CODES[k], d) for k, d in tc.AGGS])
    seen: dict = {}
    rows = []
    for a, b in batches(len(ts), splits):
        r, eng = tc.run(n, slide, keys[a:b], ts[a:b], vals[a:b], [], engine=eng)
        rows += r
        for i in range(a, b):
            seen.setdefault(int(keys[i]), []).append((int(ts[i]), i, float(vals[i])))
        check_peeks(eng, ref_count_partials(n, slide, seen), sorted(seen))
    tc.same(rows, tc.reference(n, slide, keys, ts, vals))


# -- global windows -----------------------------------------------------------------------------

def ref_global_partials(ref):
    rows = []
    for k, pending in ref.pending.items():
        if pending:
            evs = ref.contents[k]
            vals = (len(evs),) + tuple(aggregate(kind, evs, ddof) for kind, ddof in tg.AGGS)
            rows.append((k, evs[0][0], evs[-1][0], vals, False))
    return sorted(rows, key=lambda x: (x[0], x[1], x[2]))


@SETTINGS
@given(trigger=st.sampled_from([0, 1]), value=st.integers(1, 12), purge=st.booleans(),
       p=st.fixed_dictionaries({"ooo": st.integers(0, 12), "max_future": st.one_of(st.none(), st.integers(0, 40))}),
       stream=tm.streams(), data=st.data())
def test_global_window_partials_match_the_model_between_batches(trigger, value, purge, p, stream, data):
    keys, ts, vals = stream
    eng = _core.GlobalEngine(trigger, value, value, purge, p["ooo"], -1 if p["max_future"] is None else p["max_future"], True,
                             [(0, 1)] + [(tg.CODES[k], d) for k, d in tg.AGGS])
    ref = tg.RefGlobal(trigger, value, purge, p["ooo"], p["max_future"])
    rows = []
    for a, b in batches(len(ts), data.draw(tm.split_points(len(ts)))):
        out = eng.process(keys[a:b], ts[a:b], [None] + [vals[a:b]] * len(tg.AGGS))
        rows += [(int(out["key"][r]), int(out["start"][r]), int(out["end"][r]), int(out["cols"][0][r]),
                  tuple(c[r].item() for c in out["cols"][1:])) for r in range(len(out["start"]))]
        for i in range(a, b):
            ref.event(i, int(keys[i]), int(ts[i]), float(vals[i]))
        check_peeks(eng, ref_global_partials(ref), sorted(set(keys[:b].tolist())))
    out = eng.flush()
    rows += [(int(out["key"][r]), int(out["start"][r]), int(out["end"][r]), int(out["cols"][0][r]),
              tuple(c[r].item() for c in out["cols"][1:])) for r in range(len(out["start"]))]
    want, _ = tg.run_reference(trigger, value, purge, p, keys, ts, vals)
    assert tg.canon_rows(rows) == tg.canon_rows(want)


# -- through the flow: query, top and HTTP ------------------------------------------------------

def tenfold_sum(column):
    """A custom (Python-held) aggregation: 10 x the sum."""
    return ps.agg.custom(column, init=lambda n: np.zeros(n), update=lambda v, starts: np.add.reduceat(v, starts) * 10,
                         merge=lambda a, b: a + b, finalize=lambda a: a)


def gated_flow(window, batches, name="w"):
    # A last batch the tests never let through keeps the input open (no end-of-input flush).
    gate = Gate([*batches, {"meter": np.array([0]), "ts": np.array([10**9]), "kwh": np.array([0.0])}])
    flow = ps.Flow(name)
    src = flow.source(gate, time=ps.EventTime("ts", unit="ms"))
    src.key_by("meter").window(window).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count(),
                                                 ten=tenfold_sum("kwh")).queryable(name)
    return gate, flow


def rows_of(batch, *cols):
    return list(zip(*(batch[c].tolist() for c in cols)))


def test_session_partials_through_query_top_and_http():
    """Meter 1's session [0, 2 min] is open, meter 2 has one open and one fired session."""
    b1 = {"meter": np.array([1, 2, 1, 2]), "ts": np.array([0, 0, 2, 1]) * MIN, "kwh": np.array([1.0, 2.0, 3.0, 4.0])}
    b2 = {"meter": np.array([2, 2]), "ts": np.array([60, 61]) * MIN, "kwh": np.array([5.0, 7.0])}
    gate, flow = gated_flow(ps.windows.Session("10m"), [b1, b2], "sess")
    with flow.serve("127.0.0.1:0") as srv:
        th, out = start(flow)
        gate.step(flow)
        q = flow.query("sess", key=1)
        assert rows_of(q["partial"], "window_start", "window_end", "kwh", "n", "ten") == [(0, 12 * MIN, 4.0, 2, 40.0)]
        assert len(q["last"]) == 0
        gate.step(flow)  # the watermark (61 min - 1 ms) closed both first sessions
        q = flow.query("sess", key=2)
        assert rows_of(q["last"], "window_start", "window_end", "kwh", "n") == [(0, 11 * MIN, 6.0, 2)]
        assert rows_of(q["partial"], "window_start", "window_end", "kwh", "n", "ten") == [(60 * MIN, 71 * MIN, 12.0, 2, 120.0)]
        assert rows_of(flow.query("sess", key=1)["last"], "kwh", "ten") == [(4.0, 40.0)]  # as its partial said
        assert len(flow.query("sess", key=1)["partial"]) == 0
        status, _, body = get(srv.url + "/api/state/sess?key=2")
        doc = json.loads(body)
        assert status == 200 and [(r["kwh"], r["n"]) for r in doc["partial"]] == [(12.0, 2)]
        top = flow.state("sess").top("kwh", k=5)
        assert rows_of(top, "meter", "kwh") == [(2, 12.0)]
        fired = flow.state("sess").top("kwh", k=5, window="fired")
        assert rows_of(fired, "meter", "kwh") == [(2, 6.0), (1, 4.0)]  # each meter's last fired session
        gate.allowed.release()
        th.join(10)
        assert not th.is_alive()
    assert not th.is_alive() and out["result"] == {}  # queryable only, no sink


def test_count_and_global_partials_and_per_key_top():
    # Three meters, uneven counts: meter 0 has 5 readings, 1 has 3, 2 has 1.
    meter = np.array([0, 1, 0, 2, 0, 1, 0, 0, 1])
    b = {"meter": meter, "ts": np.arange(len(meter)) * MIN, "kwh": np.arange(1.0, len(meter) + 1)}
    for window, want in [
        # CountTumbling(2): meter 0's fifth reading, meter 1's third, meter 2's first wait.
        (ps.windows.CountTumbling(2), {0: (8.0, 1), 1: (9.0, 1), 2: (4.0, 1)}),
        # CountSliding(3, 2): the next firing (at a meter's 6th / 4th / 2nd reading) covers its
        # readings 4-6 / 2-4 / 1-2, of which 4-5 / 2-3 / 1 have arrived.
        (ps.windows.CountSliding(3, 2), {0: (7.0 + 8.0, 2), 1: (6.0 + 9.0, 2), 2: (4.0, 1)}),
        # Global(Count(4)), accumulating: meter 0 fired at its 4th reading and has one more since.
        (ps.windows.Global(ps.triggers.Count(4)), {0: (1 + 3 + 5 + 7 + 8.0, 5), 1: (2 + 6 + 9.0, 3), 2: (4.0, 1)}),
        (ps.windows.Global(ps.triggers.Count(4), mode="purging"), {0: (8.0, 1), 1: (2 + 6 + 9.0, 3), 2: (4.0, 1)}),
    ]:
        gate, flow = gated_flow(window, [b])
        th, out = start(flow)
        gate.step(flow)
        for m, (kwh, n) in want.items():
            assert rows_of(flow.query("w", key=m)["partial"], "kwh", "n", "ten") == [(kwh, n, 10 * kwh)], (window, m)
        everything = flow.state("w").partial()
        assert sorted(rows_of(everything, "meter", "kwh", "n")) == sorted((m, *v) for m, v in want.items())
        top = flow.state("w").top("kwh", k=2)
        best = sorted(want.items(), key=lambda kv: -kv[1][0])[:2]
        assert rows_of(top, "meter", "kwh") == [(m, v[0]) for m, v in best], window
        gate.allowed.release()
        th.join(10)
        assert not th.is_alive()
