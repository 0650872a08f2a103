"""Late readings: updates within the allowed lateness, a side output after it.

Meters that were offline send their backlog late. Windows accept late readings for 30
minutes after they close and fire again with update=True; readings later than that go to
the late stream instead of being dropped.

    pystream run examples/late_data.py
"""

import pystream as ps
from pystream.datagen import meter_readings

# Transmission delays of up to 45 minutes, against 1 minute of expected disorder.
readings = meter_readings(100_000, n_meters=1_000, seed=2, max_delay_ms=45 * 60_000)

flow = ps.Flow("late-data")
stream = flow.source(ps.sources.Arrays(readings, batch_size=10_000),
                     time=ps.EventTime("ts", unit="ms", max_out_of_orderness="1m"))
usage = stream.key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="30m").aggregate(
    kwh=ps.agg.sum("kwh"), readings=ps.agg.count())
usage.sink(ps.sinks.Collect("usage"))  # rows with update=True replace earlier rows of their window
usage.late().sink(ps.sinks.Collect("late"))  # the original readings, for re-processing or audit
