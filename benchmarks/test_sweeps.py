"""Sweeps of the tumbling meter query (issue 11): batch size, disorder, allowed lateness, number
of keys, and state memory per key. Each case runs flow.run() with a streaming sink and, in the
same run, the NumPy baseline of the same work (bincount / maximum.at over window ids computed
from the timestamps), so its ratio holds on a noisy machine.

Run: pytest benchmarks/test_sweeps.py --benchmark-only   (PYSTREAM_BENCH_ROWS sets the size)
"""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps
from pystream.datagen import meter_readings
from pystream.operators import make_window_operator

from conftest import ROWS, RESULTS, record
from test_throughput import StreamingSink, numpy_tumbling

_data: dict = {}


def data(meters: int, delay_ms: int) -> dict:
    key = (meters, delay_ms)
    if key not in _data:
        _data.clear()
        _data[key] = meter_readings(ROWS, meters, seed=11, max_delay_ms=delay_ms)
    return _data[key]


def run(d, batch_size: int, ooo: str, lateness: str):
    flow = ps.Flow("sweep")
    src = flow.source(ps.sources.Arrays(d, batch_size=batch_size),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness=ooo))
    src.key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness=lateness).aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh")).sink(StreamingSink())
    return flow.run()["streaming"]


def numpy_run(d, meters):
    w = d["ts"] // 900_000
    return numpy_tumbling((w - w.min()) * meters + d["meter_id"], d["kwh"])


CASES = (
    [("batch", b, 100_000, 60_000, "0s") for b in (1_024, 16_384, 262_144)]
    + [("disorder", 65_536, 100_000, delay, "0s") for delay in (0, 60_000, 300_000)]
    + [("lateness", 65_536, 100_000, 300_000, "5m")]
    + [("keys", 65_536, k, 60_000, "0s") for k in (10, 1_000, 100_000, 1_000_000)]
)


@pytest.mark.parametrize("what,batch,meters,delay,lateness", CASES)
def test_sweep(benchmark, what, batch, meters, delay, lateness):
    d = data(meters, delay)
    ooo = f"{max(delay, 1) // 1000 + 1}s"
    rows, kwh = run(d, batch, ooo, lateness)
    assert rows == len(np.unique((d["ts"] // 900_000) * meters + d["meter_id"]))
    assert kwh == pytest.approx(float(d["kwh"].sum()), rel=1e-9)  # out-of-orderness covers the delays: none late
    name = f"sweep {what}: batch={batch} keys={meters} delay={delay // 1000}s lateness={lateness}"
    benchmark.pedantic(run, args=(d, batch, ooo, lateness), rounds=2, iterations=1)
    record(benchmark, name, len(d["ts"]))
    # The NumPy baseline of the same windows, timed in the same run.
    import time

    t = time.perf_counter()
    numpy_run(d, meters)
    base = len(d["ts"]) / (time.perf_counter() - t)
    RESULTS[f"{name} vs numpy+ids, x"] = RESULTS[name] / base


@pytest.mark.parametrize("meters", [100_000, 1_000_000])
def test_state_bytes_per_key(meters):
    """Native state per key after the run's peak (all keys live with ~2 open slices)."""
    d = data(meters, 60_000)
    aggs = {"kwh": ps.agg.sum("kwh"), "n": ps.agg.count(), "peak": ps.agg.max("kwh")}
    op = make_window_operator(ps.windows.Tumbling("15m"), aggs,
                               ps.EventTime("ts", unit="ms", max_out_of_orderness="61s"), ("meter_id",))
    half = len(d["ts"]) // 2
    op.process(ps.Batch({k: v[:half] for k, v in d.items()}))
    st = op.stats()
    per_key = st["state_bytes"] / st["num_keys"]
    assert st["num_keys"] == meters
    RESULTS[f"state bytes per key (sum+count+max, ring incl.) keys={meters}, B"] = per_key
    assert per_key < 1024


def test_sweep_string_keys(benchmark):
    """Meter ids as strings ("m000123", a NumPy unicode column interned by the Cython interner)
    against int64 ids, 15-minute tumbling per meter; NumPy baseline: np.unique's inverse (the
    interning) + the same bincounts, in the same run."""
    import time

    d = data(100_000, 60_000)
    ds = {**d, "meter_id": np.char.add("m", np.char.zfill(d["meter_id"].astype(str), 6))}
    rows, kwh = run(ds, 65_536, "61s", "0s")
    assert rows == len(np.unique((d["ts"] // 900_000) * 100_000 + d["meter_id"]))
    benchmark.pedantic(run, args=(ds, 65_536, "61s", "0s"), rounds=2, iterations=1)
    name = "sweep string keys: batch=65536 keys=100000 delay=60s"
    record(benchmark, name, len(d["ts"]))
    t = time.perf_counter()
    _, inv = np.unique(ds["meter_id"], return_inverse=True)
    w = d["ts"] // 900_000
    numpy_tumbling((w - w.min()) * 100_000 + inv, d["kwh"])
    RESULTS[f"{name} vs numpy+unique, x"] = RESULTS[name] / (len(d["ts"]) / (time.perf_counter() - t))
    t = time.perf_counter()
    run(d, 65_536, "61s", "0s")
    RESULTS[f"{name} vs the same flow on int64 ids, x"] = RESULTS[name] / (len(d["ts"]) / (time.perf_counter() - t))
