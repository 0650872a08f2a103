"""Routing a source's reads to the Ray runtime's window actors (issue 12): key groups, a stable
counting sort by owning actor, and the columns scattered into that order, laid out in one
buffer as they are in a shared-memory segment (`_core.route_rows(..., out=)`).

10M readings (PYSTREAM_BENCH_ROWS), 100k meters, in reads of 524,288 rows (the scaling
benchmark's round), to 2, 8 and 16 actors over 128 key groups. The NumPy baseline does the same
work in the same run: the same groups (`runtimes.key_groups`, NumPy's own mix), a stable
argsort by owner and a take of every column into the same buffer. Each checks its answer
against the other before its timing counts. Also each row's watermark floor (the largest
earlier time of its partition, which the window actors judge it by), read by read, against
NumPy's running max.

Run: pytest benchmarks/test_routing.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps
from pystream import _core

from conftest import ROWS, record, readings

READ = 524_288
GROUPS = 128


def reads(d) -> list:
    keys = d["meter_id"]
    cols = [d["meter_id"], d["kwh"], d["ts"]]
    return [([keys[i:i + READ].view(np.uint64)], [c[i:i + READ] for c in cols]) for i in range(0, len(keys), READ)]


def views(out: np.ndarray, n: int, cols: list) -> tuple:
    """The routed groups and columns of n rows as views of `out` (route_rows' layout)."""
    at = [0]
    align = _core.ROUTE_ALIGN
    at.append(-(-2 * n // align) * align)
    for c in cols:
        at.append(at[-1] + -(-n * c.itemsize // align) * align)
    groups = out[:2 * n].view(np.uint16)
    return groups, [out[a:a + n * c.itemsize].view(c.dtype) for a, c in zip(at[1:], cols)]


def numpy_route(words, cols, parallelism, out):
    groups = ps.runtimes.key_groups(ps.Batch({"k": words[0].view(np.int64)}), ("k",), GROUPS)
    owners = groups * parallelism // GROUPS
    order = np.argsort(owners, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=parallelism))])
    g, routed = views(out, len(order), cols)
    np.take(groups.astype(np.uint16), order, out=g)
    for c, r in zip(cols, routed):
        np.take(c, order, out=r)
    return g, bounds, routed


def native_route(words, cols, parallelism, out):
    _order, g, bounds, routed = _core.route_rows(words, GROUPS, parallelism, cols, with_order=False, out=out)
    return g, bounds, routed


@pytest.mark.parametrize("parallelism", [2, 8, 16])
@pytest.mark.parametrize("impl", ["numpy", "pystream"])
def test_route_reads(benchmark, impl, parallelism):
    all_reads = reads(readings(100_000))
    words, cols = all_reads[0]
    out = np.zeros(_core.routed_bytes(READ, [c.dtype.itemsize for c in cols]), dtype=np.uint8)
    other = np.zeros_like(out)
    run, check = (numpy_route, native_route) if impl == "numpy" else (native_route, numpy_route)
    g, bounds, routed = run(words, cols, parallelism, out)
    g2, bounds2, routed2 = check(words, cols, parallelism, other)
    assert np.array_equal(g, g2) and np.array_equal(bounds, bounds2)
    assert all(np.array_equal(a, b) for a, b in zip(routed, routed2))

    def route_all():
        for w, c in all_reads:
            run(w, c, parallelism, out)

    benchmark.pedantic(route_all, rounds=3, iterations=1)
    record(benchmark, f"{impl} route to {parallelism} actors, {READ:,}-row reads", ROWS)


def numpy_floors(ts, unit_ns, carry):
    """Watermark floors without a max_future guard in NumPy: the max of the earlier times (a
    shifted running max), from `carry`."""
    t = ts * unit_ns
    acc = np.maximum.accumulate(t)
    floor = np.empty_like(t)
    floor[0] = _core.NO_WATERMARK if carry is None else carry
    np.maximum(acc[:-1], floor[0], out=floor[1:])
    return floor, int(max(acc[-1], floor[0]))


@pytest.mark.parametrize("impl", ["numpy", "pystream"])
def test_watermark_floors(benchmark, impl):
    # Each row's watermark floor on its way to the window actors (SourceWorker._floors), read
    # by read with the carry between, as the reading actor does; 1 minute of disorder, no
    # max_future guard (NumPy has no sequential guard to race against).
    ts = readings(100_000)["ts"]
    chunks = [ts[i:i + READ] for i in range(0, len(ts), READ)]

    def native(c, carry):
        return _core.watermark_floors(c, 1_000_000, 60_000_000_000, -1, carry)[:2]

    def numpy(c, carry):
        return numpy_floors(c, 1_000_000, carry)

    run, check = (numpy, native) if impl == "numpy" else (native, numpy)
    a, b = run(chunks[0], None), check(chunks[0], None)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]

    def all_reads():
        carry = None
        for c in chunks:
            _floor, carry = run(c, carry)

    benchmark.pedantic(all_reads, rounds=3, iterations=1)
    record(benchmark, f"{impl} watermark floors, {READ:,}-row reads", ROWS)
