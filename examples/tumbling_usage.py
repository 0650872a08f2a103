"""Per-meter energy use per 15 minutes, written as CSV part files.

    pystream run examples/tumbling_usage.py
"""

import pystream as ps
from pystream.datagen import meter_readings

# 200k readings from 2,000 meters: meter_id, ts (int64 ms since the epoch), kwh.
readings = meter_readings(200_000, n_meters=2_000, seed=1)

flow = ps.Flow("tumbling-usage")
stream = flow.source(
    ps.sources.Arrays(readings, batch_size=20_000),
    # Readings arrive up to a minute late: hold windows open that long before firing.
    time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"),
)
usage = stream.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(
    kwh=ps.agg.sum("kwh"),  # energy in the quarter hour
    readings=ps.agg.count(),  # 1 for residential meters, 3 for commercial ones
    peak=ps.agg.max("kwh"),
)
usage.sink(ps.sinks.Files("out/usage_15m", name="usage"))
