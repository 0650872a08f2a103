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
