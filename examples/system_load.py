"""System-wide load: total energy every 5 minutes and over a rolling hour (every 15 minutes).

A window on a stream that was not keyed aggregates every meter together. Sliding windows
share 15-minute slices, so the rolling hour costs about as much as a plain 15-minute sum.

    pystream run examples/system_load.py
"""

import pystream as ps
from pystream.datagen import meter_readings

readings = meter_readings(200_000, n_meters=2_000, seed=4)

flow = ps.Flow("system-load")
stream = flow.source(ps.sources.Arrays(readings, batch_size=20_000),
                     time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
stream.window(ps.windows.Tumbling("5m")).aggregate(kwh=ps.agg.sum("kwh"), meters=ps.agg.count()).sink(
    ps.sinks.Collect("load_5m"))
stream.window(ps.windows.Sliding("1h", "15m")).aggregate(kwh=ps.agg.sum("kwh")).sink(
    ps.sinks.Collect("load_rolling_hour"))
