"""Per-meter running totals and "no reading for 1 hour" outage alerts, with keyed state and
event-time timers.

Every reading moves its meter's timer to (last reading + 1 h); if the watermark passes that
time before the meter reports again, on_timer raises an alert. Nothing here loops per
reading: each call gets a batch and works on arrays of its distinct meters.

    pystream run examples/outage_alerts.py
"""

import numpy as np

import pystream as ps
from pystream.datagen import meter_readings

HOUR = ps.parse_duration("1h")  # ns, the unit of ctx.ts and of timers

readings = meter_readings(100_000, n_meters=500, seed=5)
# Meters 7 and 8 go dark for three hours in the middle of the data.
ts = readings["ts"]
dark = np.isin(readings["meter_id"], [7, 8]) & (ts > ts.min() + 10 * 3_600_000) & (ts < ts.min() + 13 * 3_600_000)
readings = {k: v[~dark] for k, v in readings.items()}


def track(batch, ctx):
    """Adds each meter's energy to its running total and re-arms its outage timer."""
    ctx.state["total_kwh"] += np.bincount(ctx.row, weights=batch["kwh"], minlength=len(ctx.keys))
    newest = np.full(len(ctx.keys), np.iinfo(np.int64).min)
    np.maximum.at(newest, ctx.row, ctx.ts)
    ctx.state["last_reading"] = np.maximum(ctx.state["last_reading"], newest)
    ctx.set_event_timer(ctx.state["last_reading"] + HOUR)


def outage(timers, ctx):
    """A meter's timer fired: it has been silent for an hour of event time."""
    return {
        "meter_id": timers["meter_id"],
        "silent_since": ctx.state["last_reading"].astype("datetime64[ns]"),
        "alert_at": timers["timer"].astype("datetime64[ns]"),
        "total_kwh": ctx.state["total_kwh"],
    }


flow = ps.Flow("outage-alerts")
stream = flow.source(ps.sources.Arrays(readings, batch_size=5_000),
                     time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
alerts = stream.key_by("meter_id").process(track, state={"total_kwh": 0.0, "last_reading": np.int64(0)},
                                           on_timer=outage, ttl="1d")
alerts.sink(ps.sinks.Collect("alerts"))
