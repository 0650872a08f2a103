"""Window assignment at the edges: first instant, last instant inside, first instant outside,
negative timestamps and offsets, indivisible slides. Each test draws the windows around the
probe times. Time unit: ns, so "10ns" windows keep the numbers small."""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps


def windows_of(window, ts, lateness="0ns"):
    """(window_start, window_end) of every window holding each event, via a real flow."""
    ts = np.asarray(ts, dtype=np.int64)
    flow = ps.Flow("edges")
    src = flow.source(ps.sources.Arrays({"k": np.arange(len(ts)), "t": ts}),
                      time=ps.EventTime("t", unit="ns", max_out_of_orderness="1000ns"))
    src.key_by("k").window(window, allowed_lateness=lateness).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("out"))
    out = flow.run()["out"]
    return {int(k): sorted(zip(out["window_start"][out["k"] == k].tolist(), out["window_end"][out["k"] == k].tolist()))
            for k in range(len(ts))}


def test_assign_tumbling_first_last_and_first_outside():
    #   [0 ........ 10)[10 ....... 20)
    #    ^0      9^    ^10
    got = windows_of(ps.windows.Tumbling("10ns"), [0, 9, 10])
    assert got == {0: [(0, 10)], 1: [(0, 10)], 2: [(10, 20)]}


def test_assign_tumbling_negative_timestamps():
    #   [-20 ..... -10)[-10 ....... 0)[0 ...
    #      ^-11  ^-10 is the first instant of [-10, 0); -1 its last
    got = windows_of(ps.windows.Tumbling("10ns"), [-11, -10, -1, 0])
    assert got == {0: [(-20, -10)], 1: [(-10, 0)], 2: [(-10, 0)], 3: [(0, 10)]}


def test_assign_tumbling_offset_positive_and_negative():
    #   offset 3: [-7 .. 3)[3 .. 13)[13 .. 23)
    got = windows_of(ps.windows.Tumbling("10ns", offset="3ns"), [2, 3, 12, 13, -7, -8])
    assert got == {0: [(-7, 3)], 1: [(3, 13)], 2: [(3, 13)], 3: [(13, 23)], 4: [(-7, 3)], 5: [(-17, -7)]}
    # offset -3 aligns like offset 7: [-3 .. 7)[7 .. 17)
    got = windows_of(ps.windows.Tumbling("10ns", offset="-3ns"), [-3, 6, 7])
    assert got == {0: [(-3, 7)], 1: [(-3, 7)], 2: [(7, 17)]}


def test_assign_sliding_divisible_includes_windows_starting_before_the_event():
    #   size 10, slide 5:
    #   [-5 ....... 5)
    #        [0 ....... 10)
    #             [5 ....... 15)
    #   t=4 is in [-5,5) and [0,10); t=5 in [0,10) and [5,15)
    got = windows_of(ps.windows.Sliding("10ns", "5ns"), [4, 5, 0, -1])
    assert got == {0: [(-5, 5), (0, 10)], 1: [(0, 10), (5, 15)], 2: [(-5, 5), (0, 10)], 3: [(-10, 0), (-5, 5)]}


def test_assign_sliding_indivisible_edge_negative():
    #   size 10, slide 4 (gcd 2): windows start at ..., -8, -4, 0, 4, 8, ...
    #   t=-1: [-8,2) [-4,6)            t=0: [-8,2) [-4,6) [0,10)
    #   t=1:  [-8,2) [-4,6) [0,10)     t=2: [-4,6) [0,10)
    got = windows_of(ps.windows.Sliding("10ns", "4ns"), [-1, 0, 1, 2])
    assert got == {
        0: [(-8, 2), (-4, 6)],
        1: [(-8, 2), (-4, 6), (0, 10)],
        2: [(-8, 2), (-4, 6), (0, 10)],
        3: [(-4, 6), (0, 10)],
    }


def test_assign_sliding_indivisible_with_offset():
    #   size 7, slide 3, offset 1: starts at ..., -5, -2, 1, 4, 7
    #   t=1: [-5,2) [-2,5) [1,8)   t=2: [-2,5) [1,8)
    got = windows_of(ps.windows.Sliding("7ns", "3ns", offset="1ns"), [1, 2])
    assert got == {0: [(-5, 2), (-2, 5), (1, 8)], 1: [(-2, 5), (1, 8)]}


def test_assign_sliding_slide_equals_size_is_tumbling():
    assert windows_of(ps.windows.Sliding("10ns", "10ns"), [9, 10]) == windows_of(ps.windows.Tumbling("10ns"), [9, 10])


def flow_with_events(ts, window=None, ooo="0ns", lateness="0ns", max_future=None, keys=None):
    ts = np.asarray(ts, dtype=np.int64)
    keys = np.zeros(len(ts), dtype=np.int64) if keys is None else np.asarray(keys)
    flow = ps.Flow("lateness")
    src = flow.source(ps.sources.Arrays({"k": keys, "t": ts, "v": np.arange(len(ts), dtype=float)}, batch_size=1),
                      time=ps.EventTime("t", unit="ns", max_out_of_orderness=ooo, max_future=max_future))
    res = src.key_by("k").window(window or ps.windows.Tumbling("10ns"), allowed_lateness=lateness).aggregate(
        n=ps.agg.count(), v=ps.agg.sum("v"))
    res.sink(ps.sinks.Collect("out"))
    res.late().sink(ps.sinks.Collect("late"))
    res.invalid().sink(ps.sinks.Collect("invalid"))
    return flow.run()


def rows(batch):
    return list(zip(batch["window_start"].tolist(), batch["n"].tolist(), batch["update"].tolist()))


def test_fires_when_watermark_reaches_end_minus_one():
    #   ooo=0: W = max_ts - 1. Window [0,10) fires when W >= 9, i.e. after an event at 10.
    #   The event at 9 arriving after 10 is late (9 <= W = 9) with no allowed lateness.
    out = flow_with_events([5, 10, 9])
    assert rows(out["out"]) == [(0, 1, False), (10, 1, False)]
    assert out["late"]["t"].tolist() == [9]


def test_event_behind_the_watermark_is_on_time_while_its_window_is_open():
    #   ooo=0: after 12, W = 11 and [0,10) has fired. 10 <= W, but its window [10,20) is still
    #   open (19 > W), so it is an ordinary on-time event: lateness is per window, not per W.
    out = flow_with_events([5, 12, 10])
    assert rows(out["out"]) == [(0, 1, False), (10, 2, False)]
    assert len(out["late"]) == 0


def test_allowed_lateness_updates_then_drops():
    #   Window [0,10): fires at W >= 9; accepts late events while W < 9 + 5 = 14; purged at W >= 14.
    #   events: 5, 10 (W=9: fire n=1), 3 (late, updates: n=2, update=True),
    #           14 (W=13), 4 (still within lateness: n=3), 15 (W=14: purge), 2 (too late -> late output)
    out = flow_with_events([5, 10, 3, 14, 4, 15, 2], lateness="5ns")
    got = rows(out["out"])
    assert got[:3] == [(0, 1, False), (0, 2, True), (0, 3, True)]
    assert out["late"]["t"].tolist() == [2]
    assert (10, 3, False) in got  # [10,20) holds 10, 14, 15


def test_max_future_guard_keeps_the_watermark():
    #   A clock in the future (t=10_000, max_future=100) goes to `invalid` and does not move W,
    #   so the following on-time event at 7 is not late.
    out = flow_with_events([5, 10_000, 7, 12], max_future="100ns")
    assert out["invalid"]["t"].tolist() == [10_000]
    assert out["invalid"]["reason"].tolist() == ["timestamp more than max_future ahead of the watermark"]
    assert len(out["late"]) == 0
    assert rows(out["out"]) == [(0, 2, False), (10, 1, False)]


def test_first_event_is_never_judged_by_max_future():
    out = flow_with_events([10_000, 5], max_future="100ns")
    assert len(out["invalid"]) == 0
    assert out["late"]["t"].tolist() == [5]  # W = 9_999 after the first event


def test_sliding_event_late_for_some_windows_only():
    #   size 10 slide 5: t=7 is in [0,10) and [5,15). After 14 (W=13), [0,10) has fired and,
    #   with no lateness, is closed; [5,15) is still open, so 7 counts there only.
    out = flow_with_events([1, 14, 7], window=ps.windows.Sliding("10ns", "5ns"))
    got = {(s, n) for s, n, _ in rows(out["out"])}
    assert (0, 1) in got and (5, 2) in got
    assert len(out["late"]) == 0


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_output_order_is_window_end_then_first_appearance(batch_size):
    ts = np.array([1, 2, 3, 11, 12, 13, 25], dtype=np.int64)
    keys = np.array([7, 3, 7, 3, 9, 7, 3])
    flow = ps.Flow("order")
    src = flow.source(ps.sources.Arrays({"k": keys, "t": ts}, batch_size=batch_size), time=ps.EventTime("t", unit="ns"))
    src.key_by("k").window(ps.windows.Tumbling("10ns")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    assert list(zip(o["window_start"].tolist(), o["k"].tolist())) == [(0, 7), (0, 3), (10, 7), (10, 3), (10, 9), (20, 3)]
