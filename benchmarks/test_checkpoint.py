"""Checkpoint cost: snapshot + durable write, and read + restore, of 1M keys of window state
(15-minute tumbling sum/count/max, two open windows per key). Target: < 1 s each."""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps
from pystream.checkpoint import CheckpointStore
from pystream.operators import WindowAggregateOperator

from conftest import RESULTS

KEYS = 1_000_000


def make_op():
    return WindowAggregateOperator(ps.windows.Tumbling("15m"),
                                   {"kwh": ps.agg.sum("kwh"), "n": ps.agg.count(), "peak": ps.agg.max("kwh")},
                                   ps.EventTime("ts", unit="ms", max_out_of_orderness="20m"), ("meter_id",))


@pytest.fixture(scope="module")
def loaded_op():
    op = make_op()
    rng = np.random.default_rng(0)
    for start in (0, 900_000):  # one reading per key in each of two open windows
        ids = rng.permutation(KEYS).astype(np.int64)
        op.process(ps.Batch({"meter_id": ids, "ts": np.full(KEYS, start + 60_000, dtype=np.int64),
                             "kwh": rng.random(KEYS)}))
    assert op.engine.num_keys == KEYS and op.engine.live_slices == 2
    return op


def test_checkpoint_snapshot_1m_keys(benchmark, loaded_op, tmp_path):
    store = CheckpointStore(str(tmp_path))
    epoch = iter(range(10**6))
    size = benchmark.pedantic(lambda: store.write(next(epoch), {"op": loaded_op.snapshot()}, "f"), rounds=3, iterations=1)
    benchmark.extra_info["bytes"] = size
    RESULTS[f"checkpoint write 1M keys ({size / 1e6:.0f} MB), s"] = benchmark.stats.stats.min
    assert size > KEYS * 2 * 32  # two slices of 32-byte state rows per key, at least


def test_checkpoint_restore_1m_keys(benchmark, loaded_op, tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.write(0, {"op": loaded_op.snapshot()}, "f")
    want = loaded_op.snapshot()

    def restore():
        op = make_op()
        op.restore(store.read(0, "f")["op"])
        return op

    op = benchmark.pedantic(restore, rounds=3, iterations=1)
    assert op.snapshot()["engine"]["rows"] == want["engine"]["rows"]
    RESULTS["checkpoint read+restore 1M keys, s"] = benchmark.stats.stats.min


def test_checkpoint_cost_per_epoch(benchmark, tmp_path):
    """The 15-minute meter query (2M readings, 100k meters) with exactly-once-style epochs every
    8 batches of 65,536 (~31 checkpoints, each of ~100k keys' open windows) against the same
    flow without checkpoints, in the same run: the cost per epoch and the throughput lost."""
    import time

    from test_throughput import StreamingSink

    from pystream.datagen import meter_readings

    d = meter_readings(2_000_000, 100_000, seed=42)

    def run(ckpt):
        flow = ps.Flow("ckpt-cost")
        src = flow.source(ps.sources.Arrays(d, batch_size=65_536),
                          time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
        src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(
            kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh")).sink(StreamingSink())
        t = time.perf_counter()
        r = flow.run(checkpoints=ckpt, checkpoint_every=8) if ckpt else flow.run()
        return time.perf_counter() - t, r

    plain = min(run(None)[0] for _ in range(2))
    dirs = iter(range(100))
    timed = benchmark.pedantic(lambda: run(str(tmp_path / f"c{next(dirs)}")), rounds=2, iterations=1)
    epochs = len(timed[1].checkpoints)
    assert epochs >= 3
    best = benchmark.stats.stats.min
    RESULTS["flow.run 15m with a checkpoint every 8 batches, msgs"] = len(d["ts"]) / best
    RESULTS["flow.run 15m without checkpoints, msgs"] = len(d["ts"]) / plain
    RESULTS["checkpoint cost per epoch (100k keys), s"] = max(best - plain, 0.0) / max(epochs, 1)
