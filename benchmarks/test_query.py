"""Cost of live queries on ingestion (issue 8): the 15-minute usage flow over 10M readings and
100k meters, alone and with a client thread issuing queries against its queryable state (9 in
10 per-meter: partial windows + last 10 results; 1 in 10 top-10 over all meters). Queries take
the flow's lock, so ingestion pauses while one runs. The whole run takes well under a second,
so 100 queries/s would be a handful of queries: the client runs at 1,000/s and the cost at
100/s is a tenth of the measured one (it is linear in the rate: each query holds the lock
once). Query latencies are measured on their own at the end state."""

from __future__ import annotations

import threading
import time

import numpy as np

import pystream as ps

from conftest import RESULTS, readings, record
from test_throughput import BATCH, StreamingSink


def usage_flow(d):
    flow = ps.Flow("bench-query")
    src = flow.source(ps.sources.Arrays(d, batch_size=BATCH), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh"))
    usage.queryable("usage")
    usage.sink(StreamingSink())
    return flow


def run_with_queries(d, rate):
    flow = usage_flow(d)
    done, answered = threading.Event(), [0]
    meters = np.random.default_rng(0).integers(0, 100_000, 10_000)

    def client():
        while not flow.live.states and not done.is_set():
            time.sleep(0.001)
        st, i, t_next = flow.live.states.get("usage"), 0, time.perf_counter()
        while not done.is_set() and st is not None:
            try:
                if i % 10 == 9:
                    st.top("kwh", 10)
                else:
                    flow.query("usage", key=int(meters[i % len(meters)]), last=10)
                answered[0] += 1
            except LookupError:
                pass  # a meter not seen yet
            i += 1
            t_next += 1.0 / rate
            time.sleep(max(0.0, t_next - time.perf_counter()))

    th = threading.Thread(target=client, daemon=True) if rate else None
    if th:
        th.start()
    t0 = time.perf_counter()
    flow.run()
    elapsed = time.perf_counter() - t0
    done.set()
    if th:
        th.join()
    return elapsed, answered[0]


def test_flow_without_queries(benchmark):
    d = readings(100_000)
    benchmark.pedantic(run_with_queries, args=(d, 0), rounds=3, iterations=1)
    record(benchmark, "flow.run tumbling 15m, no queries keys=100000", len(d["ts"]))


def test_flow_with_1000_queries_per_second(benchmark):
    d = readings(100_000)
    elapsed, answered = run_with_queries(d, 1000)
    assert answered >= 0.3 * 1000 * elapsed  # the client kept its pace (queries were not starved)
    benchmark.pedantic(run_with_queries, args=(d, 1000), rounds=3, iterations=1)
    rate = record(benchmark, "flow.run tumbling 15m, 1000 queries/s keys=100000", len(d["ts"]))
    base = RESULTS.get("flow.run tumbling 15m, no queries keys=100000")
    if base:
        cost = max(0.0, 1 - rate / base)
        benchmark.extra_info["cost_at_1000_per_s"] = cost
        RESULTS["query cost at 100 queries/s (1000/s cost / 10), %"] = 100 * cost / 10


def test_query_latency(benchmark):
    """Per-meter query and top-10 over 100k meters, against the finished flow's state."""
    d = readings(100_000)
    flow = usage_flow(d)
    flow.run()
    # After the run every window fired: the history holds the last results of every meter.
    meters = np.random.default_rng(1).integers(0, 100_000, 200)
    t0 = time.perf_counter()
    for m in meters:
        flow.query("usage", key=int(m), last=10)
    per_key = (time.perf_counter() - t0) / len(meters)
    st = flow.state("usage")
    t0 = time.perf_counter()
    for _ in range(20):
        st.top("kwh", 10, window="fired")
    top = (time.perf_counter() - t0) / 20
    benchmark.pedantic(lambda: flow.query("usage", key=7, last=10), rounds=50, iterations=1)
    RESULTS["query latency per meter (partial + last 10), s"] = per_key
    RESULTS["query latency top-10 over 100k meters, s"] = top
