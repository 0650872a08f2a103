"""Durations and key interning: the small pieces everything else leans on."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pystream import _core, parse_duration
from pystream._duration import format_duration
from pystream._intern import ObjectInterner


@pytest.mark.parametrize("text, ns", [
    ("15m", 900 * 10**9), ("1h", 3600 * 10**9), ("60s", 60 * 10**9), ("500ms", 5 * 10**8), ("1h30m", 5400 * 10**9),
    ("2d", 2 * 86400 * 10**9), ("1w", 7 * 86400 * 10**9), ("250us", 250_000), ("7ns", 7), ("0s", 0), ("10min", 600 * 10**9),
])
def test_parse_duration_strings(text, ns):
    assert parse_duration(text) == ns


def test_parse_duration_other_types_and_negative():
    assert parse_duration(dt.timedelta(minutes=15, microseconds=3)) == 900 * 10**9 + 3000
    assert parse_duration(np.timedelta64(5, "ms")) == 5 * 10**6
    assert parse_duration("-3ns", allow_negative=True) == -3
    with pytest.raises(ValueError, match=r"offset must be >= 0, got '-3ns'"):
        parse_duration("-3ns", "offset")
    with pytest.raises(ValueError, match=r"cannot parse duration '15m abc'"):
        parse_duration("15m abc")


@pytest.mark.parametrize("ns", [1, 999, 1000, 900 * 10**9, 5400 * 10**9, 86400 * 10**9 * 7, -60 * 10**9])
def test_format_duration_round_trips(ns):
    assert parse_duration(format_duration(ns), allow_negative=True) == ns


def test_object_interner_is_incremental_and_validates_before_committing():
    it = ObjectInterner("site")
    assert it.intern(np.array(["b", "a", "b"])).tolist() == [0, 1, 0]
    assert it.intern(np.array(["c", "a"], dtype=object)).tolist() == [2, 1]
    with pytest.raises(ValueError, match="mixes types"):
        it.intern(np.array(["d", 5], dtype=object))
    assert len(it) == 3  # "d" from the rejected batch was not interned
    restored = ObjectInterner.restore(it.snapshot())
    assert restored.intern(np.array(["a", "c", "e"])).tolist() == [1, 2, 3]
    assert restored.lookup(np.array([3, 0])).tolist() == ["e", "b"]


# Keys as they come: dense small ids, one in p of a dense range (a Ray actor's share), ids
# near the direct cache's edges, negatives and 64-bit extremes, which only the hash table holds.
KEYS = st.one_of(st.integers(0, 300), st.integers(0, 40).map(lambda k: 7 * k + 3), st.integers(4090, 4100),
                 st.integers(-5, 5), st.sampled_from([2**63 - 1, -2**63, 2**40, 2**26 - 1, 2**26]))


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(KEYS, max_size=60), max_size=8), split=st.integers(0, 8))
def test_key_index_hands_out_slots_in_first_seen_order_whatever_the_batches(batches, split):
    # The model: a dict from key to the order of its first appearance. Slots never change, a
    # restore (assign) continues the same numbering, and no batch size changes any slot.
    want: dict = {}
    idx, whole = _core.KeyIndex(), _core.KeyIndex()
    for i, batch in enumerate(batches):
        if i == split:  # restore mid-stream from the slot -> key list
            idx2 = _core.KeyIndex()
            idx2.assign(idx.keys())
            idx = idx2
        got = idx.intern(np.array(batch, dtype=np.int64))
        for k in batch:
            want.setdefault(k, len(want))
        assert got.tolist() == [want[k] for k in batch]
    flat = [k for b in batches for k in b]
    assert whole.intern(np.array(flat, dtype=np.int64)).tolist() == [want[k] for k in flat]
    assert idx.keys().tolist() == list(want) and len(idx) == len(want)


@pytest.mark.parametrize("spread", [1, 2, 8, 16])
def test_key_index_caches_a_spread_share_of_a_dense_id_range_directly(spread):
    # One in `spread` of 100k meter ids (as a Ray actor's key groups hold at parallelism
    # `spread`), in batches of 4k rows as an actor's share of a batch: the direct cache
    # covers them all. It stopped at parallelism 4, and the hash table took every lookup.
    ids = np.arange(0, 100_000, spread, dtype=np.int64)
    rng = np.random.default_rng(spread)
    idx = _core.KeyIndex()
    for _ in range(3):
        for batch in np.array_split(rng.permutation(ids), max(1, len(ids) // 4_096)):
            assert idx.intern(batch).tolist() == idx.intern(batch).tolist()
    assert idx.direct_size >= 100_000 - spread
    assert len(idx) == len(ids)


def test_key_index_keeps_sparse_ids_out_of_the_direct_cache():
    # Memory stays proportional to the keys: 1,000 ids one in 1,000 apart (spread far beyond 16
    # per key) go to the hash table alone, ids past 2^26 never reach the cache, and neither does
    # one key repeated over a batch's rows.
    idx = _core.KeyIndex()
    sparse = np.arange(0, 1_000_000, 1_000, dtype=np.int64)
    assert idx.intern(sparse).tolist() == list(range(1_000))
    assert idx.direct_size == 0
    dense = _core.KeyIndex()
    dense.intern(np.arange(50_000, dtype=np.int64))
    assert dense.direct_size >= 50_000  # the dense case takes it
    big = _core.KeyIndex()
    big.intern(np.arange(2**26, 2**26 + 10_000, dtype=np.int64))
    assert big.direct_size == 0
    one = _core.KeyIndex()  # a batch's rows are not keys: one id of 10^6, 65,536 times
    one.intern(np.full(65_536, 1_000_000, dtype=np.int64))
    assert one.direct_size == 0 and len(one) == 1
    assert one.intern(np.array([1_000_000, 7], dtype=np.int64)).tolist() == [0, 1]


def test_tuple_interner_round_trip():
    t = _core.TupleInterner(2)
    ids = t.intern([np.array([1, 2, 1, 1]), np.array([7, 7, 7, 8])])
    assert ids.tolist() == [0, 1, 0, 2]
    assert t.column(np.array([2, 0]), 1).tolist() == [8, 7]
    u = _core.TupleInterner(2)
    u.assign(t.rows())
    assert u.intern([np.array([1, 5]), np.array([8, 5])]).tolist() == [2, 3]
    with pytest.raises(IndexError, match="unknown composite key id 9"):
        t.column(np.array([9]), 0)


def test_engine_reports_state_size():
    e = _core.WindowEngine(10, 10, 0, 0, 0, -1, True, [(0, 1), (1, 1), (3, 1)])
    e.process(np.arange(1000), np.zeros(1000, dtype=np.int64), [None, np.ones(1000), np.ones(1000)])
    assert e.row_bytes == 32  # count 8 + compensated sum 16 + max 8 bytes per key per slice
    assert e.num_keys == 1000
    assert e.state_bytes >= 1000 * 32


@pytest.mark.parametrize("aggs, raw", [
    ([(0, 1)], 8),                          # count
    ([(0, 1), (1, 1)], 24),                 # + compensated sum
    ([(0, 1), (2, 1), (3, 1)], 24),         # count, min, max
    ([(0, 1), (1, 1), (3, 1)], 32),         # count, sum, max
    ([(0, 1), (4, 1), (7, 1)], 64),         # count, mean 24, var (n, mean, m2 + compensations)
    ([(0, 1), (1, 1), (4, 1), (7, 1), (2, 1)], 96),
])
def test_state_rows_never_straddle_a_cache_line(aggs, raw):
    """Rows are padded to 8/16/32/64 bytes or whole 64-byte lines, so the count pass's prefetch
    of a row brings every aggregation's state (a 24-byte row split its sum for 1/3 of keys)."""
    e = _core.WindowEngine(10, 10, 0, 0, 0, -1, True, aggs)
    rb = e.row_bytes
    assert rb >= raw
    assert (rb <= 64 and 64 % rb == 0) or rb % 64 == 0
    assert rb < 2 * raw  # padding never doubles a row

_key_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=9)


@settings(max_examples=150, deadline=None)
@given(keys=st.lists(_key_text, min_size=1, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=5),
       forms=st.lists(st.sampled_from(["U", "U16", "O"]), min_size=6, max_size=6), pickle_at=st.integers(0, 6))
def test_string_interning_is_the_same_through_the_fixed_width_path(keys, cuts, forms, pickle_at):
    """'U' arrays take a raw-bytes path (no Python str per known key), object arrays the dict path:
    ids are first-seen order whatever the mix of batch dtypes and widths, across a pickle, and
    lookup gives the strings back as objects or as a 'U' array."""
    import pickle

    bounds = sorted({0, len(keys), *[min(c, len(keys)) for c in cuts]})
    it, want = ObjectInterner("m"), {}
    for b, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        if b == pickle_at:
            it = pickle.loads(pickle.dumps(it))
        part = keys[lo:hi]
        arr = np.array(part, dtype=object if forms[b] == "O" else None)
        if forms[b] == "U16":
            arr = arr.astype(f"U{max(16, arr.dtype.itemsize // 4)}")
        got = it.intern(arr)
        for k in part:
            want.setdefault(k, len(want))
        assert got.tolist() == [want[k] for k in part]
    ids = np.array([want[k] for k in keys])
    assert it.lookup(ids).tolist() == keys
    assert it.lookup(ids, "U").tolist() == keys and it.lookup(ids, "U").dtype.kind == "U"


@settings(max_examples=150, deadline=None)
@given(keys=st.lists(st.binary(max_size=20), min_size=1, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=5),
       wide=st.lists(st.booleans(), min_size=6, max_size=6))
def test_bytes_interning_hashes_and_compares_every_tail_length(keys, cuts, wide):
    # 'S' keys of 0-20 bytes: whole words and tails of 1-7 bytes, read with fixed-size loads;
    # a key is its bytes without trailing NULs (NumPy's equality), whatever the array's width.
    bounds = sorted({0, len(keys), *[min(c, len(keys)) for c in cuts]})
    it, want = ObjectInterner("b"), {}
    for b, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        part = keys[lo:hi]
        arr = np.array(part, dtype="S24" if wide[b] else None)
        got = it.intern(arr)
        for k in part:
            want.setdefault(k.rstrip(b"\x00"), len(want))
        assert got.tolist() == [want[k.rstrip(b"\x00")] for k in part]


def test_fixed_width_interning_of_many_keys_keeps_first_seen_ids_as_its_table_grows():
    # 30,000 distinct keys (the cache's table grows from 1,024 slots), of lengths 2-29
    # characters, each seen again in later batches in another order and width.
    rng = np.random.default_rng(3)
    keys = np.array([f"k{i}" + "x" * (i % 23) for i in range(30_000)])
    it = ObjectInterner("m")
    assert it.intern(keys).tolist() == list(range(30_000))
    order = rng.permutation(30_000)
    for part in np.array_split(order, 7):
        assert it.intern(keys[part].astype("U40")).tolist() == part.tolist()
    assert len(it) == 30_000


def test_bytes_keys_and_trailing_nuls_follow_numpy():
    it = ObjectInterner("b")
    assert it.intern(np.array([b"x", b"yy"])).tolist() == [0, 1]
    assert it.intern(np.array([b"yy", b"x"], dtype="S8")).tolist() == [1, 0]  # width differs, same keys
    assert it.lookup(np.array([1, 0]), "S").tolist() == [b"yy", b"x"]
    with pytest.raises(ValueError, match="mixes types: row 0 holds str 'x', earlier keys are bytes"):
        it.intern(np.array(["x"]))
    u = ObjectInterner("u")
    assert u.intern(np.array(["a", "b"], dtype="U3")).tolist() == [0, 1]
    assert u.intern(np.array(["a\x00", "ab"], dtype="U2")).tolist() == [0, 2]  # NumPy drops trailing NULs
    assert u.intern(np.array([], dtype="U4")).tolist() == [] and len(u) == 3
