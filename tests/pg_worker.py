"""A checkpointed flow writing to PostgreSQL, run in a subprocess by test_connectors_postgres.py
(and killed there with PYSTREAM_CRASH_AT). usage: pg_worker.py DSN TABLE CKPT_DIR [--resume]"""

import sys

import pystream as ps
from pystream.datagen import meter_readings


def build(dsn: str, table: str) -> ps.Flow:
    data = meter_readings(20_000, 200, seed=3, max_delay_ms=20 * 60_000)
    flow = ps.Flow("pg-crash")
    src = flow.source(ps.sources.Arrays(data, batch_size=1000),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="5m"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="10m").aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count())
    # No key: appended, so a duplicate would show. A small buffer spills each epoch's rows to
    # the spool's temp file and stages them in several chunks, so crashes hit that path.
    usage.sink(ps.sinks.Postgres(dsn, table, buffer_rows=300))
    return flow


if __name__ == "__main__":
    dsn, table, ckpt = sys.argv[1:4]
    res = build(dsn, table).run(checkpoints=ckpt, resume="--resume" in sys.argv, guarantee="exactly_once",
                                checkpoint_every=2)
    print(f"done resumed_from={res.resumed_from}")
