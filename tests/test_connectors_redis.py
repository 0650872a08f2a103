"""Redis Streams source and Redis hash/sorted-set sink against the live server on loopback."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import pystream as ps
from conftest import require_service
from pystream.datagen import meter_readings

pytest.importorskip("redis", reason="pip install 'pystream[redis]'")
URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def r():
    require_service("127.0.0.1", 6379, "Redis")
    import redis

    client = redis.Redis.from_url(URL)
    prefix = f"pst{uuid.uuid4().hex[:8]}"
    yield client, prefix
    for k in client.scan_iter(f"{prefix}*"):
        client.delete(k)
    for k in client.scan_iter(f"pystream:epoch:{prefix}*"):
        client.delete(k)


def add_readings(client, stream, data):
    pipe = client.pipeline(transaction=False)
    for m, t, k in zip(data["meter_id"].tolist(), data["ts"].tolist(), data["kwh"].tolist()):
        pipe.xadd(stream, {"meter_id": m, "ts": t, "kwh": k})
    pipe.execute()


def test_stream_source_reads_in_batches_and_replays_from_an_id(r):
    client, prefix = r
    data = meter_readings(5_000, 50, seed=1)
    add_readings(client, f"{prefix}:readings", data)
    src = ps.sources.RedisStream(f"{prefix}:readings", URL, batch_size=700, stop_at_end=True)
    items = list(src.read())
    got = ps.Batch.concat([b for b, _, _ in items])
    assert got["meter_id"].dtype == np.int64 and got["kwh"].dtype == np.float64
    assert got["ts"].tolist() == data["ts"].tolist() and np.allclose(got["kwh"], data["kwh"])
    assert (got["redis_ts"] > 0).all() and len(items) == -(-5_000 // 700)
    rest = ps.Batch.concat([b for b, _, _ in src.read(items[2][1])])
    assert rest["ts"].tolist() == data["ts"][3 * 700:].tolist()


def test_stream_to_window_to_hashes_and_sorted_sets_exactly_once(r, tmp_path):
    client, prefix = r
    data = meter_readings(20_000, 100, seed=2)
    add_readings(client, f"{prefix}:readings", data)
    flow = ps.Flow("redis")
    src = flow.source(ps.sources.RedisStream(f"{prefix}:readings", URL, batch_size=2_000, stop_at_end=True),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("1h")).aggregate(kwh=ps.agg.sum("kwh"))
    usage.sink(ps.sinks.Redis(URL, key=f"{prefix}:usage:{{meter_id}}", field="{window_start}", value="kwh",
                              zset=f"{prefix}:top:{{window_start}}", name=f"{prefix}-sink"))
    usage.sink(ps.sinks.Files(str(tmp_path / "files"), name="files"))
    flow.run(checkpoints=str(tmp_path / "ck"), guarantee="exactly_once", checkpoint_every=2)
    want = ps.sinks.Files.read(str(tmp_path / "files"))
    for m, w, k in zip(want["meter_id"].tolist(), want["window_start"].tolist(), want["kwh"].tolist()):
        assert float(client.hget(f"{prefix}:usage:{m}", str(w))) == pytest.approx(k)
    first = int(want["window_start"].min())
    top = client.zrevrange(f"{prefix}:top:{first}", 0, 2, withscores=True)
    rows = want.filter(want["window_start"] == first)
    best = np.argsort(-rows["kwh"], kind="stable")[:3]
    assert [int(m) for m, _ in top] == rows["meter_id"][best].tolist()


def test_the_epoch_fence_skips_replayed_and_older_epochs(r):
    client, prefix = r
    sink = ps.sinks.Redis(URL, key=f"{prefix}:h", field="{w}", value="v", name=f"{prefix}-fence")
    sink.open()
    sink.recover(None, -1)
    for epoch, value in [(3, 1.0), (3, 2.0), (2, 5.0), (4, 7.0)]:
        sink.write(ps.Batch({"w": np.array([10]), "v": np.array([value])}))
        sink.commit(sink.pre_commit(epoch))
        if epoch == 3:
            assert float(client.hget(f"{prefix}:h", "10")) == 1.0  # epoch 3 applied once
    assert float(client.hget(f"{prefix}:h", "10")) == 7.0
    assert int(client.get(f"pystream:epoch:{prefix}-fence")) == 4
