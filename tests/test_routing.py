"""Routing rows to Ray window actors by key group (pystream._core.route_rows, issue 12): the
native hash and counting sort against the NumPy reference, every column moved with its rows,
bad arguments refused. No Ray needed, so CI also runs this under ASan + UBSan."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pystream as ps
from pystream.datagen import meter_readings

DATA = meter_readings(2_000, 50, seed=3)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), n_groups=st.integers(1, 300), parallelism=st.integers(1, 20),
       kinds=st.lists(st.sampled_from(["int", "float", "str"]), min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_native_routing_matches_the_reference_key_groups(n, n_groups, parallelism, kinds, seed):
    from pystream import _core
    from pystream.runtimes import _key_words

    parallelism = min(parallelism, n_groups)
    rng = np.random.default_rng(seed)
    cols = {"int": lambda: rng.integers(-5, 5, n) * 10**int(rng.integers(0, 17)),
            "float": lambda: rng.choice([0.0, -0.0, 1.5, np.inf, -2.25], n),
            "str": lambda: np.array([f"m{x}" for x in rng.integers(0, 50, n)], dtype=object)}
    batch = ps.Batch({f"k{i}": cols[k]() for i, k in enumerate(kinds)})
    keys = tuple(batch.columns)
    want = ps.runtimes.key_groups(batch, keys, n_groups)  # the plain-NumPy reference
    extra = {"f4": rng.random(n).astype(np.float32), "u1": rng.integers(0, 255, n).astype(np.uint8),
             "i8": rng.integers(-9, 9, n), "s": rng.choice(np.array(["a", "bcd", "efghij"]), n),
             "t": rng.integers(0, 10**9, n).astype("datetime64[ms]"), "pair": rng.random(n).astype(np.complex128),
             "strided": rng.random(2 * n)[::2],
             "unaligned": np.frombuffer(rng.random(n + 1).tobytes(), dtype=np.float64, count=n, offset=1)}
    order, groups, bounds, routed = _core.route_rows(_key_words(batch, keys), n_groups, parallelism,
                                                     list(extra.values()))
    owners = want * parallelism // n_groups
    assert order.tolist() == np.argsort(owners, kind="stable").tolist()  # by owner, arrival order within
    assert groups.tolist() == want[order].tolist()
    assert bounds.tolist() == [0] + np.cumsum(np.bincount(owners, minlength=parallelism)).tolist()
    for (name, col), got in zip(extra.items(), routed):  # the columns scattered into that order
        assert got.dtype == col.dtype and got.tolist() == col[order].tolist(), name
    none, groups2, bounds2, routed2 = _core.route_rows(_key_words(batch, keys), n_groups, parallelism,
                                                       list(extra.values()), with_order=False)
    assert none is None and groups2.tolist() == groups.tolist() and bounds2.tolist() == bounds.tolist()
    assert all(a.tolist() == b.tolist() for a, b in zip(routed, routed2))


def test_routing_moves_every_column_and_the_batch_times_with_their_rows():
    f = ps.Flow("route")
    f.source(ps.sources.Arrays(DATA, batch_size=2_000, name="all"), time=ps.EventTime("ts", unit="ms")) \
        .key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("n"))
    worker = ps.runtimes.SourceWorker(f, f._nodes[0].id, 3, 16)
    n = 500
    batch = ps.Batch({"meter_id": DATA["meter_id"][:n], "row": np.arange(n),
                      "name": np.array([f"r{i}" for i in range(n)], dtype=object)}, ts=np.arange(n) * 7)
    parts = [rows for msgs in worker.route(batch) for _wid, rows, _groups in msgs]
    assert sorted(r for p in parts for r in p["row"].tolist()) == list(range(n))
    for p in parts:
        assert p.ts.tolist() == (p["row"] * 7).tolist()
        assert p["name"].tolist() == [f"r{i}" for i in p["row"]]
        assert p["meter_id"].tolist() == DATA["meter_id"][p["row"]].tolist()


def test_routing_refuses_bad_arguments():
    from pystream import _core

    with pytest.raises(ValueError, match="n_groups must be in 1..65536, got 0"):
        _core.route_rows([np.zeros(3, dtype=np.uint64)], 0, 1)
    with pytest.raises(ValueError, match="parallelism must be in 1..n_groups"):
        _core.route_rows([np.zeros(3, dtype=np.uint64)], 4, 5)
    with pytest.raises(ValueError, match="of one length"):
        _core.route_rows([np.zeros(3, dtype=np.uint64), np.zeros(2, dtype=np.uint64)], 4, 2)
    with pytest.raises(ValueError, match="as long as the keys"):
        _core.route_rows([np.zeros(3, dtype=np.uint64)], 4, 2, [np.zeros(2)])
    with pytest.raises(ValueError, match="object columns cannot be scattered"):
        _core.route_rows([np.zeros(3, dtype=np.uint64)], 4, 2, [np.array(["a", "b", "c"], dtype=object)])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 400), cuts=st.lists(st.integers(0, 400), max_size=5), parallelism=st.integers(1, 9),
       seed=st.integers(0, 2**32 - 1))
def test_routing_chunks_equals_routing_the_joined_batch(n, cuts, parallelism, seed):
    # A source's batches routed as chunks (no joined copy) give what routing them joined gives.
    from pystream import _core

    rng = np.random.default_rng(seed)
    keys = [rng.integers(0, 50, n).astype(np.uint64), rng.integers(-3, 3, n).astype(np.uint64)]
    cols = [rng.random(n), rng.integers(0, 255, n).astype(np.uint8), rng.integers(0, 10**9, n).astype("datetime64[ms]"),
            np.frombuffer(rng.random(n + 1).tobytes(), dtype=np.float64, count=n, offset=1)]
    edges = [0] + sorted(min(c, n) for c in cuts) + [n]
    chunks = list(zip(edges[:-1], edges[1:]))
    want = _core.route_rows(keys, 16, parallelism, cols)
    got = _core.route_chunks([[k[a:b] for k in keys] for a, b in chunks], 16, parallelism,
                             [[c[a:b] for c in cols] for a, b in chunks])
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    assert got[2].tolist() == want[2].tolist()
    for g, w in zip(got[3], want[3]):
        assert g.dtype == w.dtype and g.tolist() == w.tolist()
    none, *rest = _core.route_chunks([[k[a:b] for k in keys] for a, b in chunks], 16, parallelism,
                                     [[c[a:b] for c in cols] for a, b in chunks], with_order=False)
    assert none is None and rest[0].tolist() == want[1].tolist()
    # Laid out in `out` (a shared-memory segment): the same values, as views of it, each array
    # on a multiple of ROUTE_ALIGN, in the bytes routed_bytes counts.
    need = _core.routed_bytes(n, [c.dtype.itemsize for c in cols])
    room = np.full(need + 8, 0xAB, dtype=np.uint8)
    _o, groups, bounds, routed = _core.route_chunks([[k[a:b] for k in keys] for a, b in chunks], 16, parallelism,
                                                    [[c[a:b] for c in cols] for a, b in chunks], with_order=False,
                                                    out=room[:need])
    assert groups.tolist() == want[1].tolist() and bounds.tolist() == want[2].tolist()
    at = room.ctypes.data
    for arr, w in zip([groups, *routed], [want[1], *want[3]]):
        assert arr.dtype == w.dtype and arr.tolist() == w.tolist() and (n == 0 or np.shares_memory(arr, room))
        assert (arr.ctypes.data - at) % _core.ROUTE_ALIGN == 0 and arr.ctypes.data + arr.nbytes <= at + need
    assert (room[need:] == 0xAB).all()  # nothing written past the room given
    # chunk_bounds: where each chunk's rows of each actor begin in the routed order; the
    # routed rows of actor j from chunk c are exactly that chunk's rows it owns, in order.
    *same, starts = _core.route_chunks([[k[a:b] for k in keys] for a, b in chunks], 16, parallelism,
                                       [[c[a:b] for c in cols] for a, b in chunks], chunk_bounds=True)
    assert len(same) == 4 and same[0].tolist() == want[0].tolist() and same[2].tolist() == want[2].tolist()
    assert starts.shape == (len(chunks) + 1, parallelism) and starts.dtype == np.int64
    chunk_of = np.repeat(np.arange(len(chunks)), [b - a for a, b in chunks])
    for j in range(parallelism):
        assert starts[0, j] == want[2][j] and starts[-1, j] == want[2][j + 1]
        for c, (a, b) in enumerate(chunks):
            mine = want[0][starts[c, j]:starts[c + 1, j]]
            assert (chunk_of[mine] == c).all() and mine.tolist() == sorted(mine.tolist())
            assert len(mine) == int(np.count_nonzero((chunk_of == c)[want[0][want[2][j]:want[2][j + 1]]]))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2_000, 12_000), cuts=st.lists(st.integers(0, 12_000), max_size=4), parallelism=st.integers(2, 9),
       seed=st.integers(0, 2**32 - 1))
def test_routing_places_rows_block_by_block_as_the_reference_orders_them(n, cuts, parallelism, seed):
    # Rows are placed a block at a time (csrc/route.h: kPlaceBlock, 2,048): reads of several
    # blocks, in chunks whose edges fall inside blocks, come out in the reference's order.
    from pystream import _core
    from pystream.runtimes import _key_words

    rng = np.random.default_rng(seed)
    batch = ps.Batch({"meter_id": rng.integers(0, 5_000, n), "kwh": rng.random(n),
                      "flag": rng.integers(0, 2, n).astype(np.uint8)})
    want = ps.runtimes.key_groups(batch, ("meter_id",), 128)
    order = np.argsort(want * parallelism // 128, kind="stable")
    edges = [0] + sorted(min(c, n) for c in cuts) + [n]
    chunks = [(a, b) for a, b in zip(edges[:-1], edges[1:])]
    got_order, groups, _bounds, routed = _core.route_chunks(
        [_key_words(batch.slice(a, b), ("meter_id",)) for a, b in chunks], 128, parallelism,
        [[batch[c][a:b] for c in ("kwh", "flag")] for a, b in chunks])
    assert got_order.tolist() == order.tolist() and groups.tolist() == want[order].tolist()
    assert routed[0].tolist() == batch["kwh"][order].tolist() and routed[1].tolist() == batch["flag"][order].tolist()


def test_routing_moves_no_reference_count_without_the_gil():
    # The kernel runs without the GIL beside other threads' Python (a Ray window actor's
    # reading thread routes while its window thread runs): it must not touch a Python object
    # there. Asking the columns for their item size in the GIL-free loop (a dtype object made
    # and dropped each time) lost updates to the dtypes' reference counts: hundreds per 300
    # reads here, and NumPy saw a dtype freed; Ray actors died of it. The sanitizer build also
    # aborts on any such change (PYSTREAM_CHECK_GIL).
    import sys
    import threading

    from pystream import _core

    n = 262_144
    words = [np.arange(n, dtype=np.uint64)]
    cols = [np.random.default_rng(1).random(n), np.arange(n, dtype=np.int64), np.ones(n, dtype=np.float32)]
    dtypes = [np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.float32)]
    before = [sys.getrefcount(d) for d in dtypes]
    failed = []

    def route():
        try:
            for _ in range(150):
                _core.route_chunks([words], 128, 8, [cols], with_order=False)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread below
            failed.append(e)

    t = threading.Thread(target=route)
    t.start()
    while t.is_alive():  # Python that moves the same dtypes' counts meanwhile
        for _ in range(500):
            a, b, c = np.empty(1, np.float64), np.empty(1, np.int64), np.empty(1, np.float32)
            del a, b, c
    t.join()
    assert not failed, failed
    assert [sys.getrefcount(d) for d in dtypes] == before


def test_routing_chunks_refuses_chunks_that_do_not_match():
    from pystream import _core

    k = np.arange(4, dtype=np.uint64)
    with pytest.raises(ValueError, match="column 0 must have one dtype in every chunk, got float64 and int64"):
        _core.route_chunks([[k], [k]], 8, 2, [[np.zeros(4)], [np.zeros(4, dtype=np.int64)]])
    with pytest.raises(ValueError, match="every chunk needs the same columns, got 1 and 0"):
        _core.route_chunks([[k], [k]], 8, 2, [[np.zeros(4)], []])
    with pytest.raises(ValueError, match="every chunk needs the same key columns, got 1 and 2"):
        _core.route_chunks([[k], [k, k]], 8, 2, [[], []])
    with pytest.raises(ValueError, match="every chunk needs its columns, got 2 chunks of keys and 1 of columns"):
        _core.route_chunks([[k], [k]], 8, 2, [[]])
    with pytest.raises(ValueError, match="route_chunks: columns must be 1-d and as long as the keys"):
        _core.route_chunks([[k], [k]], 8, 2, [[np.zeros(4)], [np.zeros(3)]])


def _flow(*steps):
    f = ps.Flow("chunks")
    s = f.source(ps.sources.Arrays(DATA, batch_size=300, name="all"), time=ps.EventTime("ts", unit="ms"))
    for step in steps:
        s = step(s)
    s.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("n"))
    return f


def _reads(worker) -> list:
    out = []
    while True:
        parts, (_label, _position, done, _marks) = worker.next()
        if done:
            return out
        out.append([[(wid, {c: b[c].tolist() for c in b.columns}, None if b.ts is None else b.ts.tolist(), g.tolist())
                     for step in part for wid, b, g in step] for part in parts])


def test_a_sources_batches_reach_the_windows_routed_as_chunks_as_joined():
    # Through unions only, a round's batches are routed as chunks; the actors get what routing
    # the joined batches gave (each actor one message per read); a map on the way joins them.
    from pystream.runtimes import SourceWorker

    f = _flow(lambda s: s.union())
    worker = SourceWorker(f, f._nodes[0].id, 3, 16, round_rows=1_000)
    assert [w.kind for w in worker.direct] == ["window"]
    chunked = _reads(worker)
    joined = SourceWorker(f, f._nodes[0].id, 3, 16, round_rows=1_000)
    joined.direct = None  # the joining path
    assert chunked == _reads(joined) and len(chunked) == 2
    assert all(len(part) == 1 for read in chunked for part in read)  # one message per actor per read
    mapped = _flow(lambda s: s.map(lambda b: b))
    assert SourceWorker(mapped, mapped._nodes[0].id, 3, 16).direct is None

    # Two windows, one behind a union made first: messages in the order the joining path
    # reaches them (depth first), so sinks fed by both see the same order.
    f = ps.Flow("two")
    src = f.source(ps.sources.Arrays(DATA, batch_size=300, name="all"), time=ps.EventTime("ts", unit="ms"))
    behind = src.union()
    src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("a"))
    behind.key_by("meter_id").window(ps.windows.Tumbling("1h")).aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("b"))
    worker = SourceWorker(f, f._nodes[0].id, 3, 16, round_rows=1_000)
    assert [w.params["window"].size for w in worker.direct] == [3_600 * 10**9, 900 * 10**9]
    joined = SourceWorker(f, f._nodes[0].id, 3, 16, round_rows=1_000)
    joined.direct = None
    assert _reads(worker) == _reads(joined)


def test_routing_into_room_too_small_or_not_bytes_says_so():
    from pystream import _core

    k, col = np.arange(10, dtype=np.uint64), np.zeros(10)
    assert _core.routed_bytes(10, [8]) == 64 + 128  # 20 bytes of groups, 80 of the column, each to 64
    with pytest.raises(ValueError, match="routed_bytes: rows must be >= 0, got -1"):
        _core.routed_bytes(-1, [8])
    with pytest.raises(ValueError, match="route_rows: out holds 191 bytes, the routed groups and columns of 10 rows "
                                         "need 192"):
        _core.route_rows([k], 8, 2, [col], out=np.zeros(191, dtype=np.uint8))
    read_only = np.zeros(256, dtype=np.uint8)
    read_only.flags.writeable = False
    for bad in (read_only, np.zeros(32, dtype=np.int64), np.zeros((16, 16), dtype=np.uint8)):
        with pytest.raises(ValueError, match="out must be a writable, contiguous 1-d uint8 array"):
            _core.route_rows([k], 8, 2, [col], out=bad)
    _o, groups, _b, (moved,) = _core.route_rows([k], 8, 2, [col], out=np.zeros(192, dtype=np.uint8))
    assert len(groups) == len(moved) == 10


def test_routing_moves_a_zero_width_column():
    # NumPy allows items of 0 bytes ('V0'): the scatter must not divide by the item size.
    from pystream import _core

    n = 5
    _order, _groups, bounds, (col,) = _core.route_rows([np.arange(n, dtype=np.uint64)], 8, 2,
                                                        [np.empty(n, dtype="V0")])
    assert col.dtype == np.dtype("V0") and len(col) == n and bounds[-1] == n
