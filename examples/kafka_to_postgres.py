"""Kafka -> 15-minute usage per meter -> PostgreSQL, exactly once.

    pystream run examples/kafka_to_postgres.py --checkpoints state --guarantee exactly_once

Readings come from a Kafka topic (KAFKA_BOOTSTRAP, or librdkafka's built-in mock cluster
when unset, filled here with simulated readings), go through a keyed 15-minute window and
are upserted into PostgreSQL (PG_DSN, default the local `test` database): each checkpoint
epoch's rows are staged by COPY and moved together with the epoch marker in one
transaction, so a crash and `--resume` never loses or doubles a row.
"""

import json
import os

import pystream as ps
from pystream.datagen import meter_readings

DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
if bootstrap is None:
    from confluent_kafka import Producer

    _cluster = Producer({"test.mock.num.brokers": 1, "log_level": 3})  # lives as long as this process
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in _cluster.list_topics(timeout=10).brokers.values())
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "log_level": 3})
    data = meter_readings(20_000, 200, seed=6)
    for m, t, k in zip(data["meter_id"].tolist(), data["ts"].tolist(), data["kwh"].tolist()):
        producer.produce("readings", key=str(m).encode(), value=json.dumps({"meter_id": m, "ts": t, "kwh": k}).encode())
    producer.flush(30)

flow = ps.Flow("kafka-to-postgres")
readings = flow.source(ps.sources.Kafka("readings", bootstrap, batch_size=5_000, stop_at_end=True),
                       time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
usage = readings.key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="30m").aggregate(
    kwh=ps.agg.sum("kwh"), readings=ps.agg.count())
# Upsert by (meter, window): a late update replaces the on-time row.
usage.sink(ps.sinks.Postgres(DSN, "example_usage_15m", key=("meter_id", "window_start")))
usage.late().sink(ps.sinks.Postgres(DSN, "example_late_readings"))
