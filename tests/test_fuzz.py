"""Fuzzing the engines with extreme values: every input either works or raises a clear
ValueError; nothing crashes, hangs or corrupts state (CI runs this under ASan + UBSan)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pystream import _core

I64 = st.integers(-2**63, 2**63 - 1)
EXTREME_T = st.one_of(I64, st.integers(-2**62 - 5, -2**62 + 5), st.integers(2**62 - 5, 2**62 + 5),
                      st.integers(-1000, 1000))
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(np.nan), st.just(np.inf), st.just(-np.inf),
                   st.floats(-1e308, 1e308))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN = ("outside the supported range", "slices per window", "open slices", "must be", "slide must be")


def known_error(e: Exception) -> bool:
    return isinstance(e, ValueError) and any(k in str(e) for k in KNOWN)


@SETTINGS
@given(size=st.integers(-5, 2**61), slide=st.integers(-5, 2**61), offset=I64, ooo=st.integers(-5, 2**61),
       lateness=st.integers(-5, 2**61), max_future=st.integers(-5, 2**61))
def test_any_window_parameters_construct_or_raise_clearly(size, slide, offset, ooo, lateness, max_future):
    try:
        _core.WindowEngine(size, slide, offset, ooo, lateness, max_future, True, [(0, 1), (1, 1)])
    except ValueError as e:
        assert known_error(e), e


@SETTINGS
@given(ts=st.lists(EXTREME_T, max_size=30), keys=st.lists(I64, min_size=30, max_size=30),
       vals=st.lists(VALUES, min_size=30, max_size=30), size=st.sampled_from([1, 7, 10**9, 2**40]),
       ooo=st.sampled_from([0, 5, 2**50]), lateness=st.sampled_from([0, 3, 2**50]),
       max_future=st.sampled_from([-1, 0, 2**59]))
def test_extreme_events_never_crash(ts, keys, vals, size, ooo, lateness, max_future):
    try:
        e = _core.WindowEngine(size, size, 0, ooo, lateness, max_future, True,
                               [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1)])
    except ValueError as err:
        assert known_error(err), err
        return
    n = len(ts)
    t = np.array(ts, dtype=np.int64)
    v = np.array(vals[:n], dtype=np.float64)
    before = e.snapshot()
    try:
        out = e.process(np.array(keys[:n], dtype=np.int64), t, [None] + [v] * 8)
    except ValueError as err:
        assert known_error(err), err
        after = e.snapshot()
        # A rejected batch changes no state (timestamps are validated before keys are interned).
        assert after["keys"].tolist() == before["keys"].tolist()
        assert after["rows"] == before["rows"] and after["wm"] == before["wm"]
        return
    total = len(out["late"]) + len(out["invalid"])
    assert total <= n
    flushed = e.flush()
    # Each (key, window)'s last row is its final value; together they count every accepted event
    # once (tumbling). A late event can reach a window only through an update row.
    final = {}
    for o in (out, flushed):
        for k, s, c in zip(o["key"].tolist(), o["start"].tolist(), o["cols"][0].tolist()):
            final[(k, s)] = c
    assert sum(final.values()) == n - total


@SETTINGS
@given(batches=st.lists(st.lists(st.integers(-2**40, 2**40), max_size=20), max_size=6),
       jump=st.sampled_from([0, 2**40, -2**40]))
def test_watermark_jumps_and_empty_batches(batches, jump):
    e = _core.WindowEngine(1000, 250, -77, 10, 500, -1, False, [(0, 1), (1, 1)])
    seen = 0
    for b in batches + [[]]:
        t = np.array(b, dtype=np.int64) + jump
        out = e.process(None, t, [None, np.ones(len(t))])
        seen += len(out["late"]) + len(out["invalid"])
        jump = -jump
    e.flush()
    assert e.watermark is not None or seen == 0


@pytest.mark.parametrize("size, slide, match", [
    (2**60, 1, "slices per window"),
    (10**9, 10**9 - 1, "slices per window"),
])
def test_pathological_sliding_geometry_is_refused(size, slide, match):
    with pytest.raises(ValueError, match=match):
        _core.WindowEngine(size, slide, 0, 0, 0, -1, True, [(0, 1)])


def test_lateness_beyond_the_ring_limit_is_refused():
    with pytest.raises(ValueError, match="open slices are supported"):
        _core.WindowEngine(10, 1, 0, 0, 2**30, -1, True, [(0, 1)])


@SETTINGS
@given(ts=st.lists(EXTREME_T, max_size=20), gap=st.sampled_from([1, 10**9, 2**59]), n=st.integers(1, 5))
def test_sessions_and_count_windows_never_crash(ts, gap, n):
    t = np.array(ts, dtype=np.int64)
    keys = np.arange(len(t)) % 3
    s = _core.SessionEngine(gap, 5, 5, -1, True, [(0, 1), (1, 1)])
    try:
        s.process(keys, t, [None, np.ones(len(t))])
        s.flush()
    except ValueError as err:
        assert known_error(err), err
    c = _core.CountWindowEngine(n, 1, True, [(0, 1), (7, 1)])
    out = c.process(keys, t, [None, np.ones(len(t))])
    assert int(out["cols"][0].sum()) == sum(min(k, n) for k in [int((keys[:i + 1] == keys[i]).sum()) for i in range(len(t))])


def test_a_fine_grained_but_legitimate_sliding_window_works():
    # Rolling 24 h updated every second: 86,400 slices per window.
    e = _core.WindowEngine(86_400 * 10**9, 10**9, 0, 0, 0, -1, False, [(0, 1)])
    out = e.process(None, np.array([0, 10**9 * 3600]), [None])
    assert len(out["start"]) == 3600  # the windows containing only the first event fired


@SETTINGS
@given(ts=st.lists(EXTREME_T, max_size=20), zones=st.lists(st.integers(-2, 3), min_size=20, max_size=20),
       ooo=st.sampled_from([0, 5, 2**50]), lateness=st.sampled_from([0, 3, 2**50]), max_future=st.sampled_from([-1, 0, 2**59]))
def test_calendar_engine_extreme_events_never_crash(ts, zones, ooo, lateness, max_future):
    from pystream import _calendar

    e = _core.CalendarEngine(ooo, lateness, max_future, True, [(0, 1), (1, 1), (5, 1)])
    e.add_zone(_calendar.bounds("Europe/Berlin", "day"))
    e.add_zone(_calendar.bounds("Pacific/Apia", "week"))
    t = np.array(ts, dtype=np.int64)
    z = np.array(zones[:len(t)], dtype=np.int32)
    keys = np.arange(len(t), dtype=np.int64) % 4
    before = e.snapshot()
    try:
        out = e.process(keys, t, [None, np.ones(len(t)), np.ones(len(t))], z)
    except ValueError as err:
        assert any(k in str(err) for k in ("outside the supported range", "outside the calendar table", "not registered",
                                           "open calendar windows")), err
        after = e.snapshot()
        assert after["keys"].tolist() == before["keys"].tolist() and after["rows"] == before["rows"]
        return
    flushed = e.flush()
    final = {}
    for o in (out, flushed):
        for k, s, c in zip(o["key"].tolist(), o["start"].tolist(), o["cols"][0].tolist()):
            final[(k, s)] = c
    assert sum(final.values()) == len(t) - len(out["late"]) - len(out["invalid"])


def test_calendar_bounds_and_snapshots_are_validated():
    e = _core.CalendarEngine(0, 0, -1, True, [(0, 1)])
    with pytest.raises(ValueError, match="increase by more than"):
        e.add_zone(np.array([0, 10, 20], dtype=np.int64))
    with pytest.raises(ValueError, match="no time zone"):
        e.process(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), [None])
    from pystream import _calendar

    e.add_zone(_calendar.bounds("UTC", "day"))
    e.process(np.arange(3, dtype=np.int64), np.arange(3, dtype=np.int64), [None])
    state = e.snapshot()
    for field, bad in [("rows", b"xx"), ("ring_cap", 3), ("zones", 2), ("zone_of_slot", np.array([0, 0], dtype=np.int32)),
                       ("base", np.zeros(3, dtype=np.int64))]:
        fresh = _core.CalendarEngine(0, 0, -1, True, [(0, 1)])
        fresh.add_zone(_calendar.bounds("UTC", "day"))
        with pytest.raises(ValueError, match="snapshot"):
            fresh.restore({**state, field: bad})



def _engines():
    from pystream import _calendar

    specs = [(0, 1), (1, 1)]  # count, sum: value columns [None, values]
    cal = _core.CalendarEngine(0, 0, -1, True, specs)
    cal.add_zone(_calendar.bounds("UTC", "day"))
    return {"window": _core.WindowEngine(10, 10, 0, 0, 0, -1, True, specs),
            "count": _core.CountWindowEngine(3, 1, True, specs),
            "global": _core.GlobalEngine(0, 3, 0, True, 0, -1, True, specs),
            "calendar": cal,
            "session": _core.SessionEngine(10, 0, 0, -1, True, specs, 1)}


@pytest.mark.parametrize("kind", ["window", "count", "global", "calendar", "session"])
@pytest.mark.parametrize("damage", ["duplicate key", "short rows"])
def test_a_refused_snapshot_leaves_a_live_engine_as_it_was(kind, damage):
    e = _engines()[kind]
    n = 6
    keys, ts = np.arange(n, dtype=np.int64) % 3, np.arange(n, dtype=np.int64)
    values = [None, np.ones(n)]
    e.process(keys, ts, values)
    state = e.snapshot()
    bad = dict(state)
    if damage == "duplicate key":
        k = np.asarray(state["keys"]).copy()
        k[1] = k[0]
        bad["keys"] = k
    else:
        bad["rows"] = state["rows"][:-1]
    with pytest.raises(ValueError, match="snapshot"):
        e.restore(bad)
    after = e.snapshot()
    assert after["keys"].tolist() == state["keys"].tolist() and after["rows"] == state["rows"]
    e.process(keys, ts + n, values)  # and it goes on


def test_session_snapshots_naming_a_key_slot_out_of_range_are_refused_and_change_nothing():
    e = _core.SessionEngine(10, 0, 0, -1, True, [(0, 1)], 1)
    e.process(np.arange(3, dtype=np.int64), np.arange(3, dtype=np.int64), [None])
    state = e.snapshot()
    for bad in ([0, 1, 3], [0, -1, 2]):
        with pytest.raises(ValueError, match="session key slot out of range"):
            e.restore({**state, "slot": np.array(bad, dtype=np.int32)})
        after = e.snapshot()
        assert after["keys"].tolist() == state["keys"].tolist() and after["rows"] == state["rows"]
        assert after["slot"].tolist() == state["slot"].tolist()

@SETTINGS
@given(ts=st.lists(EXTREME_T, max_size=20), trigger=st.sampled_from([0, 1, 2]), value=st.sampled_from([1, 3, 2**59]),
       max_future=st.sampled_from([-1, 0, 2**59]))
def test_global_engine_extreme_events_never_crash(ts, trigger, value, max_future):
    t = np.array(ts, dtype=np.int64)
    keys = np.arange(len(t), dtype=np.int64) % 3
    e = _core.GlobalEngine(trigger, value, value, True, 5, max_future, True, [(0, 1), (1, 1), (7, 1)])
    try:
        out = e.process(keys, t, [None, np.ones(len(t)), np.ones(len(t))])
    except ValueError as err:
        assert known_error(err), err
        return
    e.fire()
    e.advance_watermark(2**62)
    e.flush()
    assert len(out["invalid"]) <= len(t)
