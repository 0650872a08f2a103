"""MeterSimulator: deterministic, replayable, complete, with the trouble real fleets have."""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps
from pystream.testing import ManualClock


def test_simulator_is_deterministic_complete_and_realistic():
    sim = ps.sources.MeterSimulator(2_000, duration="12h", seed=4, offline_share=0.01, duplicate_share=0.01,
                                    future_share=0.001)
    batches = list(sim.batches())
    again = list(ps.sources.MeterSimulator(2_000, duration="12h", seed=4, offline_share=0.01, duplicate_share=0.01,
                                           future_share=0.001).batches())
    assert all(a == b for a, b in zip(batches, again)) and len(batches) == len(again) == 48
    data = ps.Batch.concat(batches)
    # Every reading of every slot arrives once, plus the re-sent duplicates.
    per_15min = 400 * 3 + 1600
    dup = data.to_pandas().duplicated(["meter_id", "ts", "kwh"]).sum()
    assert len(data) - dup == per_15min * 48
    assert 0.005 < dup / len(data) < 0.02
    lag = data["sent_ts"] - data["ts"]
    assert (lag[data["ts"] < data["sent_ts"] + 86_400_000] >= 0).all()  # sent after it was measured
    assert ((lag > 60_000) & (lag <= 3 * 3_600_000)).sum() > 0.005 * len(data)  # offline backlog
    assert lag[data["ts"] < data["sent_ts"] + 86_400_000].max() <= 3 * 3_600_000
    assert (data["ts"] > data["sent_ts"] + 50 * 365 * 86_400_000).sum() > 0  # clocks decades ahead
    assert set(np.unique(data["tz"])) == {"Europe/Berlin", "Europe/London", "America/New_York"}
    for b in batches:  # arrival order within each batch
        assert (np.diff(b["sent_ts"]) >= 0).all()


def test_replay_from_a_position_continues_exactly():
    sim = ps.sources.MeterSimulator(500, duration="3h", seed=9)
    items = list(sim.read())
    pos = items[5][1]
    resumed = list(sim.read(pos))
    assert len(resumed) == len(items) - 6
    assert all(a[0] == b[0] and a[1] == b[1] for a, b in zip(items[6:], resumed))


def test_paced_simulation_follows_the_clock():
    clock = ManualClock("2030-01-01T00:00")
    sim = ps.sources.MeterSimulator(100, duration="1h", pace=60.0, seed=1)  # 15 min of event time per 15 s
    from pystream import clock as pclock

    previous = pclock.use(clock)
    try:
        it = sim.read()
        assert next(it)[0] is None  # nothing is due at the start
        clock.advance("15s")
        batch, pos, _ = next(it)
        assert batch is not None and pos == 1
        assert next(it)[0] is None
    finally:
        pclock.use(previous)


def test_simulator_in_a_flow_accounts_for_every_reading():
    sim = ps.sources.MeterSimulator(1_000, duration="6h", seed=2)
    flow = ps.Flow("sim")
    src = flow.source(sim, time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s", max_future="1d"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="3h").aggregate(n=ps.agg.count())
    usage.sink(ps.sinks.Collect("usage"))
    usage.late().sink(ps.sinks.Collect("late"))
    usage.invalid().sink(ps.sinks.Collect("invalid"))
    res = flow.run()
    final = res["usage"].to_pandas().drop_duplicates(["meter_id", "window_start"], keep="last")
    total = len(ps.Batch.concat(list(sim.batches())))
    assert final.n.sum() + len(res["late"]) + len(res["invalid"]) == total
    assert len(res["invalid"]) > 0 or sim.future_share * total < 1


@pytest.mark.parametrize("kw, match", [({"meters": 0}, "meters must be a positive int"),
                                       ({"offline_share": 2.0}, "offline_share must be between 0 and 1"),
                                       ({"block": "7m"}, "block must be a positive multiple of 5 minutes"),
                                       ({"pace": 0}, "pace must be > 0")])
def test_simulator_validates_its_options(kw, match):
    args = {"meters": 10, **kw}
    with pytest.raises(ValueError, match=match):
        ps.sources.MeterSimulator(**args)


def test_offline_meters_go_silent_for_their_hour():
    sim = ps.sources.MeterSimulator(300, duration="6h", seed=5, offline_share=0.05)
    d = ps.Batch.concat(list(sim.batches())).to_pandas()
    d = d[(d.ts < d.sent_ts + 86_400_000) & ~d.duplicated(["meter_id", "ts", "kwh"])]  # no poison, no re-sends
    held = d[d.sent_ts - d.ts > 60_000]
    assert len(held) > 0
    hours = ((held.ts - sim.start_ms) // 3_600_000).astype(int)
    # A held reading's whole meter-hour is held, and it is sent after the hour ends.
    for (meter, h), _ in held.groupby([held.meter_id, hours]):
        in_hour = d[(d.meter_id == meter) & ((d.ts - sim.start_ms) // 3_600_000 == h)]
        assert (in_hour.sent_ts >= sim.start_ms + (h + 1) * 3_600_000).all()
