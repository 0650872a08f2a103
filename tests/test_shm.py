"""Shared-memory segments that carry a read's parts between Ray actors on one machine
(pystream/_shm.py): what a receiver views equals what the reader wrote, for every fixed-width
dtype; a segment is written again only once released; what cannot go there says so."""

from __future__ import annotations

import mmap
import os
import resource

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pystream import _shm
from pystream.batch import Batch

_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)  # Linux

pytestmark = pytest.mark.skipif(not _shm.available(), reason="no /dev/shm")

DTYPES = ["int64", "float64", "int32", "uint16", "bool", "datetime64[ms]", "U5", "S3", "float32"]


@pytest.fixture
def prefix(request):
    name = f"pystream-test-{os.getpid()}-{request.node.name[:40]}-"
    yield name
    _shm.remove_all(name)


def leftovers(prefix):
    return [n for n in os.listdir(_shm.DIRECTORY) if n.startswith(prefix)]


def column(dtype, n, rng):
    if dtype.startswith("U"):
        return np.array([f"m{v}" for v in rng.integers(0, 999, n)], dtype=dtype)
    if dtype.startswith("S"):
        return np.array([b"k%d" % v for v in rng.integers(0, 9, n)], dtype=dtype)
    if dtype.startswith("datetime64"):
        return rng.integers(0, 10**12, n).astype(dtype)
    return rng.integers(0, 100, n).astype(dtype)


def parts_of(sizes, dtypes, with_ts, rng):
    """Per actor, steps of (window id, rows, key groups), as SourceWorker.next makes them."""
    parts = []
    for steps in sizes:
        part = []
        for msgs in steps:
            step = []
            for wid, n in enumerate(msgs):
                rows = Batch({f"c{i}": column(d, n, rng) for i, d in enumerate(dtypes)},
                             ts=rng.integers(0, 10**12, n) if with_ts else None)
                step.append((wid, rows, rng.integers(0, 128, n).astype(np.uint16)))
            part.append(step)
        parts.append(part)
    return parts


def same(got, want):
    assert len(got) == len(want)
    for gs, ws in zip(got, want):
        assert len(gs) == len(ws)
        for (gw, grows, gg), (ww, wrows, wg) in zip(gs, ws):
            assert gw == ww and grows.columns == wrows.columns
            for c in wrows.columns:
                assert grows[c].dtype == wrows[c].dtype and np.array_equal(grows[c], wrows[c])
            assert (grows.ts is None) == (wrows.ts is None)
            if wrows.ts is not None:
                assert np.array_equal(grows.ts, wrows.ts)
            assert gg.dtype == np.uint16 and np.array_equal(gg, wg)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=2), max_size=3),
                      min_size=2, max_size=4),
       dtypes=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=4), with_ts=st.booleans(),
       skip=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_each_actor_views_exactly_its_part(sizes, dtypes, with_ts, skip, seed):
    skip %= len(sizes)
    parts = parts_of(sizes, dtypes, with_ts, np.random.default_rng(seed))
    prefix = f"pystream-test-{os.getpid()}-hyp-"
    pool, views = _shm.SegmentPool(prefix), _shm.SegmentViews()
    try:
        shared = pool.write(parts, skip)
        assert shared.parts[skip] is None
        # the others' layouts pickled here, once: the driver hands on bytes, not tuples to visit
        assert all(isinstance(p, bytes) for j, p in enumerate(shared.parts) if j != skip)
        shared.parts[skip] = 7  # as the reading actor marks its own slot
        import pickle

        shared = pickle.loads(pickle.dumps(shared))  # as Ray hands it to the driver
        for j, part in enumerate(parts):
            mine = pickle.loads(pickle.dumps(shared.only(j)))  # as the driver hands it to actor j
            assert list(mine.parts) == [j] and len(pickle.dumps(mine)) <= len(pickle.dumps(shared))
            if j == skip:
                assert mine.part(j, views) == 7
                continue
            got = mine.part(j, views)
            same(got, part)
            for step in got:
                for _wid, rows, groups in step:
                    assert not groups.flags.writeable and all(not rows[c].flags.writeable for c in rows.columns)
    finally:
        views.close()
        pool.close()
    assert not leftovers(prefix)


def test_a_segment_is_written_again_only_after_its_release(prefix, monkeypatch):
    rng = np.random.default_rng(1)
    pool, views = _shm.SegmentPool(prefix), _shm.SegmentViews()
    first, second = (parts_of([[[500]], [[500]]], ["int64", "float64"], True, rng) for _ in range(2))
    a = pool.write(first, 0)
    b = pool.write(second, 0)  # read 0 not released: a segment of its own
    assert a.names != b.names and pool.made == 2
    same(a.part(1, views), first[1])  # read 0 is still what it was
    monkeypatch.setattr(_shm, "POISON", True)
    pool.release(1)  # read 0 done with: its rows are gone (filled with 0xFF bytes)
    assert (a.part(1, views)[0][0][2] == 0xFFFF).all()
    c = pool.write(parts_of([[[400]], [[400]]], ["int64", "float64"], True, rng), 0)
    assert c.names == a.names and pool.made == 2  # written into read 0's segment
    same(b.part(1, views), second[1])  # read 1, never released, untouched
    bigger = pool.write(parts_of([[[1]], [[100_000]]], ["int64"], True, rng), 0)
    assert bigger.names[0] not in a.names + b.names and pool.made == 3  # no free segment big enough
    assert len(leftovers(prefix)) == 3
    views.close()
    pool.close()
    assert not leftovers(prefix)


def test_reads_are_numbered_even_where_they_cannot_go_into_a_segment(prefix):
    # Object columns have no fixed width: the read goes through the object store, but it is
    # numbered all the same, so the driver's count of reads done with stays in step.
    rng = np.random.default_rng(2)
    pool = _shm.SegmentPool(prefix)
    objects = [[[(0, Batch({"k": np.array(["a", "b"], dtype=object)}), np.zeros(2, np.uint16))]], [[]]]
    assert pool.write(objects, 1) is None and pool.count == 1 and pool.made == 0
    empty = pool.write([[], [[]]], 0)  # nothing for anyone: no segment either
    assert empty.names == [] and pool.count == 2 and empty.part(1, _shm.SegmentViews()) == [[]]
    fixed = pool.write(parts_of([[[5]], [[5]]], ["int64"], False, rng), 0)
    assert fixed is not None and pool.used.keys() == {2}
    pool.release(2)
    assert pool.used.keys() == {2}  # reads below 2 only
    pool.release(3)
    assert not pool.used and len(pool.free) == 1
    pool.close()


def test_a_full_file_system_sends_the_read_through_the_object_store(prefix, monkeypatch):
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    pool = _shm.SegmentPool(prefix)
    rows = parts_of([[[50]], [[50]]], ["int64"], True, np.random.default_rng(3))
    assert pool.write(rows, 0) is None and pool.count == 1
    assert not leftovers(prefix)  # the file it could not fill is gone
    pool.close()


def test_remove_all_takes_what_a_dead_actor_left_and_maps_stay_valid(prefix):
    pool, views = _shm.SegmentPool(prefix), _shm.SegmentViews()
    rows = parts_of([[[64]], [[64]]], ["float64"], False, np.random.default_rng(4))
    shared = pool.write(rows, 0)
    got = shared.part(1, views)  # mapped before the files go
    _shm.remove_all(prefix)
    assert not leftovers(prefix)
    same(got, rows[1])
    views.close()
    pool.close()  # its files are gone already: nothing to fail on


def test_rows_routed_into_a_taken_segment_are_not_copied(prefix):
    # The reading actor routes a read straight into room taken from the pool: its layout
    # refers to the rows where they lie (no second segment); rows from elsewhere are copied.
    from pystream import _core
    n = 1_000
    keys, kwh = np.arange(n, dtype=np.uint64), np.random.default_rng(5).random(n)
    pool, views = _shm.SegmentPool(prefix), _shm.SegmentViews()
    room = pool.take(_core.routed_bytes(n, [8]))
    _o, groups, bounds, (moved,) = _core.route_rows([keys], 16, 2, [kwh], with_order=False, out=room)
    lo, mid, hi = (int(b) for b in bounds)
    parts = [[[(0, Batch({"kwh": moved[lo:mid]}), groups[lo:mid])]], [[(0, Batch({"kwh": moved[mid:hi]}), groups[mid:hi])]]]
    shared = pool.write(parts, 0)
    assert pool.made == 1 and len(shared.names) == 1
    same(shared.part(1, views), parts[1])
    elsewhere = [[], [[(0, Batch({"kwh": kwh}), groups)]]]  # not in a taken segment: copied
    copied = pool.write(elsewhere, 0)
    assert pool.made == 2 and len(copied.names) == 1 and copied.names != shared.names
    same(copied.part(1, views), elsewhere[1])
    assert pool.used.keys() == {0, 1}
    views.close()
    pool.close()
    assert not leftovers(prefix)


def test_the_driver_hands_each_actor_its_own_parts_in_one_argument(prefix):
    from pystream._ray_driver import packed_messages

    pool = _shm.SegmentPool(prefix)
    reads = [pool.write(parts_of([[[10]], [[10]], [[10]]], ["int64"], True, np.random.default_rng(k)), k)
             for k in range(3)]
    for k, r in enumerate(reads):
        r.parts[k] = k  # each read's own slot holds its reader's source id
    mine = packed_messages(reads, 3)[1]
    assert [list(m.parts) for m in mine] == [[1], [1], [1]] and mine[1].parts[1] == 1
    assert [m.names for m in mine] == [r.names for r in reads]
    ref = object()  # an object-store ref: every read goes as an argument of its own
    assert packed_messages([reads[0], ref], 3) is None
    pool.close()


@pytest.mark.skipif(_RUSAGE_THREAD is None, reason="needs per-thread page-fault counts (Linux)")
def test_provisioned_segments_are_written_without_page_faults(prefix):
    # provision() makes the segments a source's reads will hold at once, sized by the largest
    # read so far, and writes every page of them up front: routing into one then costs no page
    # fault, where a segment made as a read asks for it faults once per page.
    from pystream import _core
    n = 1 << 17  # 3.1 MB routed: 768 pages
    keys, kwh = np.arange(n, dtype=np.uint64), np.random.default_rng(6).random(n)
    need = _core.routed_bytes(n, [8, 8])
    pages = need // mmap.PAGESIZE

    def faults_routing_into(room):
        before = resource.getrusage(_RUSAGE_THREAD).ru_minflt
        _core.route_rows([keys], 16, 2, [keys, kwh], with_order=False, out=room)
        return resource.getrusage(_RUSAGE_THREAD).ru_minflt - before

    pool = _shm.SegmentPool(prefix)
    assert pool.provision(3) == 0 and pool.made == 0  # nothing asked for yet: no size to make
    _core.route_rows([keys], 16, 2, [keys, kwh], with_order=False)  # the kernel's own scratch, once
    on_demand = faults_routing_into(pool.take(need))
    assert on_demand > pages // 2  # made as the read asks: each page faults
    pool.write([[], []], 0)
    assert pool.provision(3) == 2 and pool.made == 3 and len(pool.free) == 2  # 3 in all: 1 in use, 2 new
    assert pool.provision(3) == 0 and pool.made == 3  # holds 3 already
    for _ in range(2):  # against the same routing into a new segment: all the segment's faults gone
        assert faults_routing_into(pool.take(need)) < on_demand - pages // 2
        pool.write([[], []], 0)
    assert pool.made == 3 and not pool.free
    pool.close()
    assert not leftovers(prefix)
