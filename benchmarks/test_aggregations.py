"""Sketches, user-defined and time-weighted aggregations (issue 5) on the meter readings:
15-minute tumbling windows through flow.run(), each beside the native sum over the same keys
in the same run (the baseline of the ratios in the closing note and README).

Per meter (100k keys): custom sum, energy, time-weighted mean — what runs per meter.
Per feeder (100 keys, meter_id % 100): distinct meters reporting, p95 of readings, top-3
readings — sketches summarise many events of few keys (a dense HyperLogLog or DDSketch per
meter per 15 minutes would spend its kilobytes on a handful of readings).

Run: pytest benchmarks/test_aggregations.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps

from conftest import readings, record
from test_throughput import BATCH

METERS = 100_000
FEEDERS = 100


class CountingSink(ps.sinks.Sink):
    def __init__(self):
        self.name = "rows"

    def open(self):
        self.rows = 0

    def write(self, batch):
        self.rows += len(batch)

    def close(self):
        return self.rows


def _custom_sum():
    return ps.agg.custom("kwh", init=np.zeros, update=np.add.reduceat, merge=np.add, finalize=lambda a: a)


AGGS = {
    "meter_id": {
        "sum": lambda: ps.agg.sum("kwh"),
        "custom sum": _custom_sum,
        "energy": lambda: ps.agg.energy("kwh", per="15m"),
        "time_weighted_mean": lambda: ps.agg.time_weighted_mean("kwh"),
    },
    "feeder": {
        "sum": lambda: ps.agg.sum("kwh"),
        "count_distinct(meter_id)": lambda: ps.agg.count_distinct("meter_id"),
        "quantile p95": lambda: ps.agg.quantile("kwh", 0.95),
        "top_k(3)": lambda: ps.agg.top_k("kwh", k=3),
    },
}
CASES = [(key, agg) for key, aggs in AGGS.items() for agg in aggs]


def data():
    d = readings(METERS)
    if "feeder" not in d:
        d["feeder"] = d["meter_id"] % FEEDERS
    return d


def run(d, key, agg):
    flow = ps.Flow("bench-aggs")
    src = flow.source(ps.sources.Arrays(d, batch_size=BATCH), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    src.key_by(key).window(ps.windows.Tumbling("15m")).aggregate(x=AGGS[key][agg]()).sink(CountingSink())
    return flow.run()["rows"]


@pytest.mark.parametrize("key,agg", CASES)
def test_aggregation_throughput(benchmark, key, agg):
    d = data()
    rows = run(d, key, agg)
    assert rows == len(np.unique((d["ts"] // 900_000) * METERS + d[key]))  # a row per (key, window) with data
    benchmark.pedantic(run, args=(d, key, agg), rounds=2, iterations=1)
    keys = METERS if key == "meter_id" else FEEDERS
    record(benchmark, f"flow tumbling 15m {agg} keys={keys}", len(d["ts"]))
