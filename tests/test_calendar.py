"""Calendar windows (local days, weeks, months in IANA zones) against the reference model, plus
pinned DST days: 2024 and 2025 spring-forward and fall-back in Europe/Berlin and
America/New_York, the Southern hemisphere (Australia/Sydney), 30-minute offsets
(Australia/Adelaide, Asia/Kolkata, Lord Howe's 30-minute DST), a midnight that does not exist
(America/Sao_Paulo 2018) and a day that does not exist (Pacific/Apia 2011-12-30)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pystream as ps
from pystream import _calendar, _core
from opcheck import assert_resume_equals_whole
from reference import RefCalendar
from test_engine_model import assert_matches_model, collect

H = 3_600 * 1_000_000_000
AGGS = [("count", 1), ("sum", 1), ("max", 1), ("first", 1)]
CODES = {"count": 0, "sum": 1, "max": 3, "first": 5}
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Adelaide", "Asia/Kolkata",
         "America/Sao_Paulo", "Australia/Lord_Howe", "Pacific/Apia"]
# Instants near transitions (UTC), so random streams cross 23 h / 25 h days and odd offsets.
ANCHORS = ["2024-03-30T20:00", "2024-10-26T20:00", "2025-03-08T20:00", "2025-11-01T20:00", "2024-04-06T10:00",
           "2024-10-05T10:00", "2018-11-03T20:00", "2011-12-28T20:00", "2024-02-28T12:00", "2024-12-31T12:00"]


def ns(s):
    return int(np.datetime64(s, "ns").astype(np.int64))


def make_engine(p, zones):
    eng = _core.CalendarEngine(p["ooo"], p["lateness"], -1 if p["max_future"] is None else p["max_future"], True,
                               [(CODES[k], d) for k, d in AGGS])
    for z in zones:
        eng.add_zone(_calendar.bounds(z, p["unit"], p["week_start"]))
    return eng


def run_engine(p, zones, keys, ts, vals, zone_ids, splits, snapshot_at=None):
    eng = make_engine(p, zones)
    rows, late, invalid, reasons = [], [], [], []
    bounds = [0, *splits, len(ts)]
    for a, b in zip(bounds, bounds[1:]):
        if snapshot_at is not None and a == snapshot_at:
            state = eng.snapshot()
            eng = make_engine(p, zones)
            eng.restore(state)
        out = eng.process(keys[a:b], ts[a:b], [None if k == "count" else vals[a:b] for k, _ in AGGS], zone_ids[a:b])
        collect(out, rows, True)
        late.extend(int(i) + a for i in out["late"])
        invalid.extend(int(i) + a for i in out["invalid"])
        if out["invalid_reason"] is not None:
            reasons.extend(int(r) for r in out["invalid_reason"])
    collect(eng.flush(), rows, True)
    return (rows, late, invalid), reasons


def run_reference(p, zones, keys, ts, vals, zone_ids):
    ref = RefCalendar(0, 0, 0, p["ooo"], p["lateness"], p["max_future"], list(AGGS), True, unit=p["unit"],
                      week_start=p["week_start"])
    for i in range(len(ts)):
        ref.calendar_event(i, int(keys[i]), int(ts[i]), [float(vals[i])] * len(AGGS), zones[zone_ids[i]])
    ref.flush()
    rows = [(r.key, r.start, r.end, r.values, r.update) for r in ref.rows]
    return (rows, ref.late, ref.invalid), ref.invalid_zone


@st.composite
def cases(draw, max_events=50):
    unit = draw(st.sampled_from(["day", "day", "week", "month"]))
    span = {"day": 24, "week": 24 * 7, "month": 24 * 31}[unit] * H
    p = {
        "unit": unit,
        "week_start": draw(st.sampled_from([0, 0, 6])),
        "ooo": draw(st.sampled_from([0, 1, 5 * H, 30 * H])),
        "lateness": draw(st.sampled_from([0, 0, 2 * H, span])),
        "max_future": draw(st.one_of(st.none(), st.just(3 * span))),
    }
    zones = draw(st.lists(st.sampled_from(ZONES), min_size=1, max_size=3, unique=True))
    n = draw(st.integers(0, max_events))
    base = ns(draw(st.sampled_from(ANCHORS)))
    step = draw(st.sampled_from([H // 4, H, 5 * H])) * (7 if unit != "day" else 1)
    jitter = draw(st.sampled_from([0, H, 12 * H]))
    ts = [base + i * step + draw(st.integers(-jitter, jitter)) for i in range(n)]
    if n and draw(st.booleans()):
        ts[draw(st.integers(0, n - 1))] += draw(st.sampled_from([-3 * span, 4 * span]))
    keys = [draw(st.integers(0, 5)) for _ in range(n)]
    key_zone = {k: draw(st.integers(0, len(zones) - 1)) for k in range(6)}
    zone_ids = [key_zone[k] for k in keys]
    if n and len(zones) > 1 and draw(st.booleans()):
        i = draw(st.integers(0, n - 1))
        zone_ids[i] = (zone_ids[i] + 1) % len(zones)  # a row whose zone differs from its key's
        ts[i] += draw(st.sampled_from([0, 6 * H, span]))  # invalid, but its time moves the watermark
    vals = [float(draw(st.integers(-100, 100))) / 4 for _ in range(n)]
    splits = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4)))) if n > 1 else []
    return (p, zones, np.array(keys, dtype=np.int64), np.array(ts, dtype=np.int64), np.array(vals),
            np.array(zone_ids, dtype=np.int32), splits)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_calendar_engine_matches_reference_for_any_batching(case):
    p, zones, keys, ts, vals, zone_ids, splits = case
    want, want_zone = run_reference(p, zones, keys, ts, vals, zone_ids)
    for cut in (splits, list(range(1, len(ts))), []):
        got, reasons = run_engine(p, zones, keys, ts, vals, zone_ids, cut)
        assert_matches_model(got, want)
        assert [i for i, r in zip(got[2], reasons) if r == 1] == want_zone


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_calendar_snapshot_restore_continue_equals_uninterrupted(case):
    p, zones, keys, ts, vals, zone_ids, splits = case
    if not splits:
        return
    whole, _ = run_engine(p, zones, keys, ts, vals, zone_ids, splits)
    resumed, _ = run_engine(p, zones, keys, ts, vals, zone_ids, splits, snapshot_at=splits[len(splits) // 2])
    assert resumed == whole


# -- pinned days -------------------------------------------------------------------------------

DAYS = [
    # zone, local date, window start (UTC), end (UTC), hours
    ("Europe/Berlin", "2024-03-31", "2024-03-30T23:00", "2024-03-31T22:00", 23),
    ("Europe/Berlin", "2024-10-27", "2024-10-26T22:00", "2024-10-27T23:00", 25),
    ("Europe/Berlin", "2025-03-30", "2025-03-29T23:00", "2025-03-30T22:00", 23),
    ("Europe/Berlin", "2025-10-26", "2025-10-25T22:00", "2025-10-26T23:00", 25),
    ("America/New_York", "2024-03-10", "2024-03-10T05:00", "2024-03-11T04:00", 23),
    ("America/New_York", "2024-11-03", "2024-11-03T04:00", "2024-11-04T05:00", 25),
    ("America/New_York", "2025-03-09", "2025-03-09T05:00", "2025-03-10T04:00", 23),
    ("America/New_York", "2025-11-02", "2025-11-02T04:00", "2025-11-03T05:00", 25),
    ("Australia/Sydney", "2024-04-07", "2024-04-06T13:00", "2024-04-07T14:00", 25),
    ("Australia/Sydney", "2024-10-06", "2024-10-05T14:00", "2024-10-06T13:00", 23),
    ("Australia/Sydney", "2025-04-06", "2025-04-05T13:00", "2025-04-06T14:00", 25),
    ("Australia/Sydney", "2025-10-05", "2025-10-04T14:00", "2025-10-05T13:00", 23),
    ("Australia/Adelaide", "2024-04-07", "2024-04-06T13:30", "2024-04-07T14:30", 25),
    ("Australia/Adelaide", "2024-10-06", "2024-10-05T14:30", "2024-10-06T13:30", 23),
    ("Asia/Kolkata", "2024-03-31", "2024-03-30T18:30", "2024-03-31T18:30", 24),
    ("Australia/Lord_Howe", "2024-04-07", "2024-04-06T13:00", "2024-04-07T13:30", 24.5),
    ("Australia/Lord_Howe", "2024-10-06", "2024-10-05T13:30", "2024-10-06T13:00", 23.5),
    # Midnight does not exist: the day starts when the clock jumps 00:00 -> 01:00 (-03 -> -02).
    ("America/Sao_Paulo", "2018-11-04", "2018-11-04T03:00", "2018-11-05T02:00", 23),
    # Apia skipped 2011-12-30: the 29th runs up to the start of the 31st.
    ("Pacific/Apia", "2011-12-29", "2011-12-29T10:00", "2011-12-30T10:00", 24),
    ("Pacific/Apia", "2011-12-31", "2011-12-30T10:00", "2011-12-31T10:00", 24),
]


@pytest.mark.parametrize("zone,day,start,end,hours", DAYS, ids=[f"{d[0]}-{d[1]}" for d in DAYS])
def test_local_day_bounds_and_quarter_hour_counts(zone, day, start, end, hours):
    """Quarter-hour readings through the day: the local day's window has the real bounds and
    holds hours * 4 readings (92 on a 23 h day, 100 on a 25 h day)."""
    lo, hi = np.datetime64(start, "ns"), np.datetime64(end, "ns")
    t = np.arange(lo - np.timedelta64(2, "h"), hi + np.timedelta64(2, "h"), np.timedelta64(15, "m"))
    flow = ps.Flow("cal")
    src = flow.source(ps.sources.Arrays({"m": np.zeros(len(t), dtype=np.int64), "t": t, "kwh": np.ones(len(t))},
                                        batch_size=7), time=ps.EventTime("t"))
    src.key_by("m").window(ps.windows.Calendar("day", tz=zone)).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    row = np.flatnonzero(o["window_start"] == lo)
    assert len(row) == 1, (o["window_start"], lo)
    assert o["window_end"][row[0]] == hi
    assert o["n"][row[0]] == hours * 4
    # Every reading is in exactly one day.
    assert int(o["n"].sum()) == len(t)
    assert (o["window_start"][1:] == o["window_end"][:-1]).all()
    assert dt.datetime.fromtimestamp(int(lo.astype(np.int64)) // 10**9, _calendar.zone(zone)).date().isoformat() == day


def test_weeks_and_months_have_their_real_lengths():
    b = _calendar.bounds("Europe/Berlin", "month")
    feb = int(np.searchsorted(b, ns("2024-01-31T23:00")))
    assert b[feb] == ns("2024-01-31T23:00") and b[feb + 1] == ns("2024-02-29T23:00")  # leap February
    assert b[feb + 2] - b[feb + 1] == (31 * 24 - 1) * H  # March 2024 loses the spring-forward hour
    assert b[feb + 9] - b[feb + 8] == (31 * 24 + 1) * H  # October gains it
    weeks = _calendar.bounds("America/New_York", "week")
    w = int(np.searchsorted(weeks, ns("2024-03-04T05:00")))  # Monday 2024-03-04 00:00 EST
    assert weeks[w] == ns("2024-03-04T05:00") and weeks[w + 1] - weeks[w] == (7 * 24 - 1) * H
    sundays = _calendar.bounds("America/New_York", "week", 6)
    assert ns("2024-03-10T05:00") in set(sundays.tolist())  # Sunday 2024-03-10 00:00 EST
    years = _calendar.bounds("Asia/Kolkata", "year")
    assert ns("2023-12-31T18:30") in set(years.tolist())


def test_zone_per_key_from_a_column_in_one_operator():
    """Three meters in three zones: each gets its own local days; a row whose zone differs
    from its meter's first row goes to the invalid output with the reason."""
    t = np.arange(np.datetime64("2024-03-09T00:00", "ns"), np.datetime64("2024-04-02T00:00", "ns"), np.timedelta64(1, "h"))
    n = len(t)
    meters = np.tile(np.array(["berlin", "ny", "delhi"], dtype=object), n)
    tz = np.tile(np.array(["Europe/Berlin", "America/New_York", "Asia/Kolkata"], dtype=object), n)
    tt = np.repeat(t, 3)
    tz[4] = "Europe/Berlin"  # meter "ny" once claims another zone
    flow = ps.Flow("zones")
    src = flow.source(ps.sources.Arrays({"meter": meters, "tz": tz, "t": tt, "kwh": np.ones(3 * n)}, batch_size=50),
                      time=ps.EventTime("t"))
    w = src.key_by("meter").window(ps.windows.Calendar("day", tz_column="tz"))
    w.aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    w.aggregate(n=ps.agg.count()).invalid().sink(ps.sinks.Collect("bad"))
    r = flow.run()
    o, bad = r["o"], r["bad"]
    assert list(bad["meter"]) == ["ny"] and "zone" in bad["reason"][0]
    for meter, zone in [("berlin", "Europe/Berlin"), ("ny", "America/New_York"), ("delhi", "Asia/Kolkata")]:
        sel = o["meter"] == meter
        starts = o["window_start"][sel].astype(np.int64)
        assert set(starts.tolist()) <= set(_calendar.bounds(zone, "day").tolist())
        lengths = dict(zip(starts.tolist(), ((o["window_end"][sel] - o["window_start"][sel]) // np.timedelta64(1, "h")).tolist()))
        if meter == "ny":
            assert lengths[ns("2024-03-10T05:00")] == 23
        if meter == "berlin":
            assert lengths[ns("2024-03-30T23:00")] == 23
        if meter == "delhi":
            assert set(lengths.values()) == {24}
    assert int(o["n"].sum()) == 3 * n - 1


def test_calendar_errors_name_the_rule_and_the_value():
    with pytest.raises(ValueError, match="calendar unit must be one of"):
        ps.windows.Calendar("fortnight", tz="UTC")
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        ps.windows.Calendar("day", tz="Mars/Olympus")
    with pytest.raises(ValueError, match="either tz= .* or tz_column="):
        ps.windows.Calendar("day", tz="UTC", tz_column="tz")
    with pytest.raises(ValueError, match="week_start"):
        ps.windows.Calendar("week", tz="UTC", week_start="someday")
    flow = ps.Flow("e")
    src = flow.source(ps.sources.Arrays({"m": np.arange(3), "t": np.array([-2_300_000_000, 0, 1], dtype=np.int64),
                                         "tz": np.array(["UTC", "Nowhere/City", "UTC"], dtype=object)}),
                      time=ps.EventTime("t", unit="s"))
    with pytest.raises(ValueError, match="key the stream first"):
        src.window(ps.windows.Calendar("day", tz_column="tz")).aggregate(n=ps.agg.count())
    src.key_by("m").window(ps.windows.Calendar("day", tz="UTC")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    with pytest.raises(ValueError, match="outside the calendar table"):
        flow.run()  # 1897 is before the tables' 1900 start
    flow2 = ps.Flow("e2")
    src2 = flow2.source(ps.sources.Arrays({"m": np.arange(3), "t": np.arange(3), "tz": np.array(["UTC", "Nowhere/City", "UTC"],
                                                                                           dtype=object)}),
                        time=ps.EventTime("t", unit="s"))
    src2.key_by("m").window(ps.windows.Calendar("day", tz_column="tz")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    with pytest.raises(ValueError, match="row 1: unknown time zone 'Nowhere/City'"):
        flow2.run()


def test_early_firings_of_a_local_day():
    """A day's running total every 6 hours (final=False) before its final row."""
    t = np.arange(np.datetime64("2024-03-30T23:00", "ns"), np.datetime64("2024-04-01T00:00", "ns"), np.timedelta64(1, "h"))
    flow = ps.Flow("early-cal")
    src = flow.source(ps.sources.Arrays({"m": np.zeros(len(t), dtype=np.int64), "t": t, "kwh": np.ones(len(t))}),
                      time=ps.EventTime("t"))
    (src.key_by("m").window(ps.windows.Calendar("day", tz="Europe/Berlin"), early_every="6h")
     .aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("o")))
    o = flow.run()["o"]
    day = o["window_start"] == np.datetime64("2024-03-30T23:00", "ns")
    partial = o["kwh"][day & ~o["final"]].tolist()
    assert partial == sorted(partial) and len(partial) >= 3 and partial[-1] < 23
    assert o["kwh"][day & o["final"]].tolist() == [23.0]


def test_operator_snapshot_with_zones_from_a_column_restores_exactly():
    """Zones registered from the tz column (and their ids) survive a pickled snapshot."""
    from pystream.operators import make_window_operator

    rng = np.random.default_rng(3)
    n = 4_000
    meters = rng.integers(0, 40, n)
    zones = np.array(ZONES[:5], dtype=object)[meters % 5]
    t = (ns("2024-03-28T00:00") + np.sort(rng.integers(0, 10 * 24 * H, n)) + rng.integers(-H, H, n)) // 10**6
    batch = ps.Batch({"meter": meters.astype(str).astype(object), "tz": zones, "t": t, "kwh": rng.random(n)})

    def op():
        return make_window_operator(ps.windows.Calendar("day", tz_column="tz"), {"kwh": ps.agg.sum("kwh"), "n": ps.agg.count()},
                                    ps.EventTime("t", unit="ms", max_out_of_orderness="2h"), ("meter",), 3 * H)

    assert_resume_equals_whole(op, batch, 500, 2_000, min_rows=100)

