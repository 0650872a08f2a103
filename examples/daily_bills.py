"""Time-of-use bills per meter and local day, for meters in three time zones.

    pystream run examples/daily_bills.py

Each reading is priced by the tariff period of its meter's local time (weekday peak 17-21 h),
then summed per local calendar day: Calendar("day", tz_column="tz") gives every meter its own
midnights, and 23 h / 25 h days across DST are handled by the zone tables, not by hand.
Cumulative register reads are turned into usage too, as a cross-check of the interval data.
"""

import numpy as np

import pystream as ps

# Two simulated days across the European spring-forward night (2025-03-30): 600 meters in
# Berlin, London and New York, with re-sent duplicates and late backlog bursts.
fleet = ps.sources.MeterSimulator(600, start="2025-03-29T00:00", duration="2d", seed=3,
                                  time_zones=("Europe/Berlin", "Europe/London", "America/New_York"))
tariff = ps.meters.TimeOfUse(peak_hours=(17, 21), peak=0.40, shoulder_hours=(7, 17), shoulder=0.25, offpeak=0.15)


def priced(batch):
    """Cost of each reading at its meter's local tariff period (vectorized per batch)."""
    price = tariff.price(batch["ts"] * 1_000_000, batch["tz"])  # ts is int64 ms
    return batch.with_columns(cost=batch["kwh"] * price)


flow = ps.Flow("daily-bills")
readings = flow.source(fleet, time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s", max_future="1d"))
clean = readings.key_by("meter_id").dedupe(horizon="6h")  # a re-sent reading must not be billed twice
bills = clean.map(priced).key_by("meter_id").window(
    ps.windows.Calendar("day", tz_column="tz"), allowed_lateness="3h"
).aggregate(kwh=ps.agg.sum("kwh"), cost=ps.agg.sum("cost"), readings=ps.agg.count())
bills.sink(ps.sinks.Files("out/daily_bills", name="bills"))
bills.late().sink(ps.sinks.Files("out/late", name="late"))

# The registers wrap at 100,000 kWh; resets or replacements would go to the anomalies output.
usage = clean.register_deltas("register", out="kwh", modulus=100_000)
usage.side("anomalies").sink(ps.sinks.Collect("register_anomalies"))
usage.late().sink(ps.sinks.Collect("register_late"))
usage.window(ps.windows.Calendar("day", tz="UTC")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("register_days"))
clean.side("duplicates").sink(ps.sinks.Collect("duplicates"))
clean.invalid().sink(ps.sinks.Collect("invalid"))

if __name__ == "__main__":
    result = flow.run()
    b = ps.sinks.Files.read("out/daily_bills")
    print(f"{len(b):,} bills, {float(np.sum(b['cost'])):,.2f} in total; {len(result['duplicates']):,} duplicates dropped")
