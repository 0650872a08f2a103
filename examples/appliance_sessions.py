"""Sessions of appliance use from a meter's power readings: a session is a run of readings
above a threshold with no gap longer than 10 minutes between them.

    pystream run examples/appliance_sessions.py

Readings at or below the threshold are filtered out first; Session("10m") then groups each
meter's remaining readings into sessions (an out-of-order reading can bridge two sessions,
which then merge). Output: one row per session with its start, end, energy and peak power.
"""

import numpy as np

import pystream as ps

rng = np.random.default_rng(5)
minutes = np.arange(0, 24 * 60)  # one reading per minute for a day, 50 meters
meter = np.repeat(np.arange(50), len(minutes))
t = np.tile(minutes, 50) * 60_000
# Base load 0.1-0.3 kW; appliances (1.5-3 kW) switch on for 20-90 minutes a few times a day.
power = rng.uniform(0.1, 0.3, len(t))
for m in range(50):
    for start in rng.integers(0, len(minutes) - 90, 4):
        on = (meter == m) & (t >= start * 60_000) & (t < (start + rng.integers(20, 90)) * 60_000)
        power[on] += rng.uniform(1.5, 3.0)
order = np.argsort(t + rng.integers(0, 30_000, len(t)), kind="stable")  # up to 30 s of disorder

flow = ps.Flow("appliance-sessions")
readings = flow.source(ps.sources.Arrays({"meter": meter[order], "t": t[order], "kw": power[order]}, batch_size=8_192),
                       time=ps.EventTime("t", unit="ms", max_out_of_orderness="30s"))
busy = readings.filter(lambda b: b["kw"] > 1.0)
sessions = busy.key_by("meter").window(ps.windows.Session("10m")).aggregate(
    kwh=ps.agg.sum("kw"), peak_kw=ps.agg.max("kw"), minutes=ps.agg.count())
sessions.sink(ps.sinks.Collect("sessions"))

if __name__ == "__main__":
    s = flow.run()["sessions"]
    print(f"{len(s):,} appliance sessions, median {int(np.median(s['minutes']))} min")
