"""Kafka source and exactly-once sink against librdkafka's mock cluster (the real protocol over
loopback sockets): per-partition reading and replay, per-partition watermarks, JSON decoding,
and SIGKILL at every phase of the transaction protocol with resume, which must leave exactly
the committed rows of a fault-free run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

pytest.importorskip("confluent_kafka", reason="pip install 'pystream[kafka]'")

import pystream as ps  # noqa: E402
from kafka_mock import MockCluster  # noqa: E402
from pystream.datagen import meter_readings  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "kafka_worker.py")


@pytest.fixture(scope="module")
def cluster():
    return MockCluster()


def topic():
    return f"t{uuid.uuid4().hex[:8]}"


def test_source_reads_every_partition_and_replays_from_a_position(cluster):
    data = meter_readings(4_000, 40, seed=2)
    t = topic()
    cluster.produce_json(t, data, key="meter_id")
    src = ps.sources.Kafka(t, cluster.bootstrap, batch_size=700, stop_at_end=True)
    assert src.partitions() == [0, 1, 2, 3]
    items = [x for x in src.read() if x[0] is not None]
    got = ps.Batch.concat([b for b, _, _ in items])
    assert len(got) == 4_000 and sorted(got["ts"].tolist()) == sorted(data["ts"].tolist())
    assert {p for _, _, p in items} == {0, 1, 2, 3}
    assert all((b["kafka_partition"] == p).all() for b, _, p in items)  # one partition per batch
    # Each meter's readings stay in order within its partition.
    for m in range(40):
        mine = got["ts"][got["meter_id"] == m]
        assert (mine == np.sort(data["ts"][data["meter_id"] == m])).all() or len(set(got["kafka_partition"][got["meter_id"] == m])) == 1
    cut = len(items) // 2
    rest = ps.Batch.concat([b for b, _, _ in src.read(items[cut - 1][1]) if b is not None])
    assert len(rest) == 4_000 - sum(len(b) for b, _, _ in items[:cut])


def test_kafka_to_windows_with_per_partition_watermarks(cluster):
    data = meter_readings(20_000, 100, seed=3)
    t = topic()
    cluster.produce_json(t, data, key="meter_id")
    flow = ps.Flow("kafka-read")
    src = flow.source(ps.sources.Kafka(t, cluster.bootstrap, batch_size=2_000, stop_at_end=True),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("o"))
    r = flow.run()
    assert abs(float(r["o"]["kwh"].sum()) - float(data["kwh"].sum())) < 1e-6


def run_worker(cluster, tin, tout, ckpt, resume=False, crash=None):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    env.pop("PYSTREAM_CRASH_AT", None)
    if crash:
        env["PYSTREAM_CRASH_AT"] = crash
    return subprocess.run([sys.executable, WORKER, cluster.bootstrap, tin, tout, ckpt] + (["--resume"] if resume else []),
                          env=env, capture_output=True, text=True, timeout=300, cwd=os.path.dirname(ckpt))


def committed(cluster, t):
    b = ps.sinks.Kafka.read(t, cluster.bootstrap)
    return sorted(zip(*(b[c].tolist() for c in ("meter_id", "window_start", "kwh", "n"))))


@pytest.mark.parametrize("crash", ["precommit:2", "commit:2", "commit:4", "batch:5"])
def test_exactly_once_sink_survives_crashes(cluster, tmp_path, crash):
    data = meter_readings(6_000, 60, seed=4, max_delay_ms=10 * 60_000)
    tin, ref_out, out = topic(), topic(), topic()
    # One input partition: its order is fixed, so the fault-free run is the reference (with
    # several, late-data decisions depend on how partitions interleave, run to run).
    cluster.produce_json(tin, data, partition=0)
    assert run_worker(cluster, tin, ref_out, str(tmp_path / "ref")).returncode == 0
    want = committed(cluster, ref_out)
    first = run_worker(cluster, tin, out, str(tmp_path / "ckpt"), crash=crash)
    assert first.returncode == -9, first.stderr[-2000:]
    again = run_worker(cluster, tin, out, str(tmp_path / "ckpt"), resume=True)
    assert again.returncode == 0, again.stderr[-2000:]
    got = committed(cluster, out)
    assert len(got) == len(want) > 50 and got == want


def test_a_poison_message_names_its_partition_and_offsets(cluster):
    """Values of all partitions decode in one call; a failing call is retried per partition so
    the error names the partition holding the bad value (and the batch's offsets there)."""
    from confluent_kafka import Producer

    t = topic()
    p = Producer({"bootstrap.servers": cluster.bootstrap, "log_level": 3})
    for i in range(40):
        p.produce(t, value=f'{{"meter_id": {i}, "ts": {i * 1000}, "kwh": 0.5}}'.encode(), partition=i % 4)
    p.produce(t, value=b"not json at all", partition=2)  # offset 10 of partition 2
    p.flush(10)
    src = ps.sources.Kafka(t, cluster.bootstrap, batch_size=1_000, stop_at_end=True)
    with pytest.raises(ValueError, match=r"partition 2 offsets \d+\.\.10: cannot decode the values: value \d+ of the "
                                         r"batch is not a JSON object: b'not json at all'"):
        for _ in src.read():
            pass


def read_all(src):
    items = [b for b, _, _ in src.read() if b is not None]
    got = ps.Batch.concat(items)
    order = np.lexsort((got["kafka_offset"], got["kafka_partition"]))
    return {c: got[c][order] for c in got.columns}


def test_native_and_confluent_consumers_give_the_same_batches(cluster):
    """pystream's own consumer (values in one buffer, no Python object per message) against
    confluent-kafka's consume(): the same rows, offsets and Kafka timestamps."""
    data = meter_readings(6_000, 60, seed=4)
    t = topic()
    cluster.produce_json(t, data, key="meter_id")
    native = read_all(ps.sources.Kafka(t, cluster.bootstrap, batch_size=900, stop_at_end=True, native=True))
    plain = read_all(ps.sources.Kafka(t, cluster.bootstrap, batch_size=900, stop_at_end=True, native=False))
    assert len(native["ts"]) == 6_000 and sorted(native) == sorted(plain)
    for c in native:
        assert native[c].tolist() == plain[c].tolist(), c
    assert (native["kafka_ts"] > 1_600_000_000_000).all()  # broker/producer time, ms


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("value,why", [(b'{"meter_id": 9,\n "ts": 9, "kwh": 1}', "spans several lines"),
                                       (b'{"meter_id": 9, "ts": 9, "kwh": 1}\r', "spans several lines"),
                                       (b"", "is not a JSON object"), (b"[1, 2]", "is not a JSON object"),
                                       (b'\t {"meter_id": 9, "ts": 9, "kwh": 1} ', None)])
def test_both_consumers_check_values_alike(cluster, native, value, why):
    from confluent_kafka import Producer

    t = topic()
    p = Producer({"bootstrap.servers": cluster.bootstrap, "log_level": 3})
    for i in range(3):
        p.produce(t, value=f'{{"meter_id": {i}, "ts": {i}, "kwh": 0.5}}'.encode(), partition=0)
    p.produce(t, value=value, partition=0)
    p.flush(10)
    src = ps.sources.Kafka(t, cluster.bootstrap, stop_at_end=True, native=native)
    if why is None:
        assert read_all(src)["meter_id"].tolist() == [0, 1, 2, 9]
    else:
        with pytest.raises(ValueError, match=rf"partition 0 offsets \d+\.\.3: cannot decode the values: value \d+ of "
                                             rf"the batch {why}"):
            read_all(src)


def test_native_true_refuses_what_only_confluent_kafka_reads(cluster):
    with pytest.raises(ValueError, match="native must be None"):
        ps.sources.Kafka("t", cluster.bootstrap, native="yes")
    src = ps.sources.Kafka(topic(), cluster.bootstrap, decoder=lambda values: {"n": [len(v) for v in values]},
                           native=True)
    with pytest.raises(ValueError, match="native=True, but the native consumer cannot run: it decodes JSON values only"):
        src._native_consumer()
    src = ps.sources.Kafka(topic(), cluster.bootstrap, config={"error_cb": print}, native=True)
    with pytest.raises(ValueError, match="config holds confluent-kafka callbacks"):
        src._native_consumer()
    assert ps.sources.Kafka(topic(), cluster.bootstrap, config={"error_cb": print})._native_consumer() is None


class FakeMessage:
    def __init__(self, partition, offset, value, error=None):
        self._p, self._o, self._v, self._e = partition, offset, value, error

    def error(self):
        return self._e

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def timestamp(self):
        return (1, 1_000 + self._o)

    def value(self):
        return self._v


def test_message_columns_and_batches_of_split_by_partition():
    from pystream._messages import message_columns

    msgs = [FakeMessage(i % 3, 100 + i, f'{{"v": {i}}}'.encode()) for i in range(9)] + [FakeMessage(1, 200, None)]
    part, off, ts, values = message_columns(msgs)
    assert part.tolist() == [0, 1, 2] * 3 + [1] and off.tolist() == list(range(100, 109)) + [200]
    assert ts.tolist() == [1_000 + o for o in off.tolist()] and values[-1] == b"" and values[4] == b'{"v": 4}'
    with pytest.raises(RuntimeError, match="Kafka message 1 of the batch: broker down"):
        message_columns([msgs[0], FakeMessage(0, 1, b"{}", error="broker down")])
    src = ps.sources.Kafka.__new__(ps.sources.Kafka)
    src.topic, src.decoder = "t", lambda vals: {"raw": np.array([v.decode() for v in vals], dtype=object)}
    got = {p: b for p, b in src.batches_of(msgs)}
    assert sorted(got) == [0, 1, 2]
    assert got[1]["kafka_offset"].tolist() == [101, 104, 107, 200] and got[1]["raw"].tolist()[-1] == ""
    assert got[2]["raw"].tolist() == ['{"v": 2}', '{"v": 5}', '{"v": 8}'] and (got[2]["kafka_partition"] == 2).all()
    assert got[0]["kafka_ts"].tolist() == [1_100, 1_103, 1_106]

    def picky(vals):  # decodes one partition's values, refuses a mix of partitions
        if len({v[:3] for v in vals}) > 1:
            raise TypeError("mixed types")
        return {"raw": np.array(vals, dtype=object)}

    src.decoder = picky
    mixed = [FakeMessage(0, 1, b"int"), FakeMessage(1, 1, b"str")]
    with pytest.raises(ValueError, match=r"partitions \[0, 1\]: cannot decode their values together: mixed types"):
        list(src.batches_of(mixed))
