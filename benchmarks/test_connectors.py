"""Connector throughput (issue 7), each with a windowed query: Parquet -> 15-minute window ->
Parquet, Kafka (librdkafka mock cluster) -> window, window -> PostgreSQL sink."""

from __future__ import annotations

import os
import sys
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pystream as ps

from conftest import RESULTS, readings, record

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def query(src, sink):
    flow = ps.Flow("bench-connectors")
    s = flow.source(src, time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    s.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count()).sink(sink)
    return flow


def test_parquet_to_window_to_parquet(benchmark, tmp_path):
    d = readings(100_000)
    pq.write_table(pa.table(d), tmp_path / "readings.parquet", row_group_size=1 << 20)

    def run():
        out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        query(ps.sources.Files(str(tmp_path / "readings.parquet"), batch_size=1 << 20),
              ps.sinks.Files(str(out), format="parquet", name="out")).run()
        return ps.sinks.Files.read(str(out))

    out = run()
    assert int(out["n"].sum()) == len(d["ts"])
    benchmark.pedantic(run, rounds=3, iterations=1)
    record(benchmark, "parquet -> window 15m -> parquet keys=100000", len(d["ts"]))
    size = os.path.getsize(tmp_path / "readings.parquet")
    RESULTS["parquet -> window 15m -> parquet: file bytes read, B/s"] = size / benchmark.stats.stats.min
    RESULTS["parquet -> window 15m -> parquet: in-memory column bytes, B/s"] = (
        sum(v.nbytes for v in d.values()) / benchmark.stats.stats.min)


def test_kafka_mock_to_window(benchmark):
    """JSON readings from 4 partitions of the mock cluster through a 15-minute window (pystream's
    own consumer; once through confluent-kafka's consume() for comparison). The mock
    keeps ~5 MB per partition (older message sets are dropped), so the topic is lz4-compressed
    (as production topics are) to hold ~0.9M readings; the run is timed from flow.run() to the
    end and also without the consumer's start (group join, metadata, first fetch: ~0.7 s)."""
    pytest.importorskip("confluent_kafka")
    import time

    from confluent_kafka import Consumer, Producer, TopicPartition
    from kafka_mock import MockCluster

    d = {k: v[:1_000_000] for k, v in readings(100_000).items()}
    cluster = MockCluster()
    topic = f"bench{uuid.uuid4().hex[:6]}"
    p = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 50, "batch.num.messages": 100_000,
                  "batch.size": 8_000_000, "compression.type": "lz4", "queue.buffering.max.messages": 2_000_000,
                  "log_level": 3})
    from pystream.connectors_kafka import encode_json

    values = encode_json(ps.Batch(d))
    for i, v in enumerate(values):
        p.produce(topic, value=v.encode(), partition=i % 4)
        if i % 100_000 == 0:
            p.poll(0)
    p.flush(60)
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "bench", "log_level": 0})
    n = sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(topic, q), timeout=10) for q in range(4)))
    c.close()

    def source(native=None):
        return ps.sources.Kafka(topic, cluster.bootstrap, batch_size=50_000, stop_at_end=True, native=native)

    def run(native=None):
        return query(source(native), ps.sinks.Collect("o")).run()["o"]

    def startup():
        t = time.perf_counter()
        for b, _, _ in source().read():
            if b is not None:
                return time.perf_counter() - t

    assert int(run()["n"].sum()) > 0.99 * n  # (readings of one partition far ahead of another can be late)
    benchmark.pedantic(run, rounds=2, iterations=1)
    rate = record(benchmark, "kafka (mock, 4 partitions, lz4) -> window 15m, msgs", n)
    RESULTS["kafka -> window 15m: JSON value bytes, B/s"] = rate * sum(len(v) for v in values) / len(values)
    t = time.perf_counter()
    run(native=False)  # confluent-kafka's consume(): a Python Message object per record
    RESULTS["kafka -> window 15m via confluent-kafka consume(), msgs"] = n / (time.perf_counter() - t)
    start = min(startup() for _ in range(2))
    RESULTS["kafka -> window 15m without the consumer's start, msgs"] = n / (n / rate - start)
    RESULTS["kafka consumer start (join, metadata, first fetch), s"] = start


def test_window_to_postgres(benchmark):
    from conftest_services import pg_reachable

    if not pg_reachable():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg

    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    d = {k: v[:2_000_000] for k, v in readings(100_000).items()}
    rows = {"n": 0}

    def run():
        table = f"bench_{uuid.uuid4().hex[:8]}"
        try:
            r = query(ps.sources.Arrays(d, batch_size=65_536), ps.sinks.Postgres(dsn, table, key=("meter_id", "window_start")))
            r.run()
            with psycopg.connect(dsn) as conn:
                rows["n"] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute(f"DROP TABLE IF EXISTS {table}__pystream_stage")
    run()
    assert rows["n"] > 0
    benchmark.pedantic(run, rounds=2, iterations=1)
    RESULTS["postgres sink (upsert) rows/s, window 15m over 2M readings"] = rows["n"] / benchmark.stats.stats.min
    record(benchmark, "window 15m -> postgres (2M readings)", len(d["ts"]))
