"""Exactly-once output with embedded defaults: checkpoints in a directory, Parquet part files
committed per checkpoint epoch. Kill it at any point and run it again with --resume: the
committed output is the same as a run that never stopped.

    pystream run examples/exactly_once_parquet.py --checkpoints state --guarantee exactly_once
    pystream run examples/exactly_once_parquet.py --checkpoints state --guarantee exactly_once --resume
"""

import pystream as ps
from pystream.datagen import meter_readings

readings = meter_readings(300_000, n_meters=3_000, seed=3)

flow = ps.Flow("exactly-once")
stream = flow.source(ps.sources.Arrays(readings, batch_size=10_000),
                     time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
hourly = stream.key_by("meter_id").window(ps.windows.Tumbling("1h")).aggregate(kwh=ps.agg.sum("kwh"))
hourly.sink(ps.sinks.Files("out/hourly", format="parquet", name="hourly"))  # needs pystream[parquet]
