"""Watermark floors: a partition's keys split among several engines (the Ray runtime's window
actors), each given per row the largest event time of the partition's rows before it that
went elsewhere (`_core.watermark_floors`), judge every row as one engine that saw the whole
partition does (DESIGN.md: the watermark advances per event, of its partition).

With Hypothesis, for tumbling/sliding, session and global windows, random keys, times,
disorder, lateness, max_future, engine counts and batch cuts, against one engine fed the whole
stream in one batch:
  - the on-time rows (update=False) are the same;
  - every (key, window)'s final value is the same, and the same windows got late updates;
  - the late and the invalid rows are the same rows.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pystream import _core
from pystream.runtimes import _born, _first_watermark

AGGS = [(0, 1), (1, 1), (3, 1)]  # count, sum, max
NONE = _core.NO_WATERMARK


def floors_of(ts, ooo, max_future, unit_ns=1, cuts=()):
    """watermark_floors over the stream cut into batches at `cuts` (carry between them)."""
    out, carry = [], None
    bounds = [0, *cuts, len(ts)]
    for a, b in itertools.pairwise(bounds):
        f, carry, _wm = _core.watermark_floors(ts[a:b], unit_ns, ooo, max_future, carry)
        out.append(f)
    return np.concatenate(out) if out else np.empty(0, np.int64), carry


def reference_floors(ts, ooo, max_future, unit_ns=1):
    """The rule, event by event: the max of the accepted times before; an event more than
    max_future ahead of the watermark before it (max - ooo - 1) is not accepted."""
    hi, out = None, []
    for raw in ts:
        out.append(NONE if hi is None else hi)
        t = int(raw) * unit_ns
        if max_future >= 0 and hi is not None and t > hi - ooo - 1 + max_future:
            continue
        hi = t if hi is None else max(hi, t)
    return out, hi


@settings(max_examples=200, deadline=None)
@given(ts=st.lists(st.integers(-10**6, 10**6), max_size=60), ooo=st.integers(0, 1000),
       max_future=st.sampled_from([-1, 0, 50, 5000]), unit=st.sampled_from([1, 1000]),
       cuts=st.lists(st.integers(0, 60), max_size=4))
def test_floors_follow_the_rule_event_by_event_whatever_the_batches(ts, ooo, max_future, unit, cuts):
    ts = np.array(ts, dtype=np.int64)
    cuts = sorted({c for c in cuts if c <= len(ts)})
    got, carry = floors_of(ts, ooo, max_future, unit, cuts)
    want, hi = reference_floors(ts, ooo, max_future, unit)
    assert got.tolist() == want
    assert carry == hi


def test_floors_refuse_what_no_engine_could_hold():
    ts = np.array([1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="carry .* out of range"):
        _core.watermark_floors(ts, 1, 0, -1, 2**63 - 1)
    with pytest.raises(ValueError, match="unit_ns must be >= 1"):
        _core.watermark_floors(ts, 0, 0, -1)
    eng = _core.WindowEngine(10, 10, 0, 0, 0, -1, True, AGGS)
    keys, vals = np.array([1, 2], np.int64), [None, np.ones(2), np.ones(2)]
    with pytest.raises(ValueError, match="floor and timestamp columns differ in length: 1 != 2"):
        eng.process(keys, ts, vals, floor=np.array([NONE], np.int64))
    with pytest.raises(ValueError, match=r"floor 4611686018427387905 ns at row 1 is out of range"):
        eng.process(keys, ts, vals, floor=np.array([NONE, 2**62 + 1], np.int64))
    assert eng.num_keys == 0 and eng.watermark is None  # refused before anything changed
    with pytest.raises(ValueError, match=r"partition 3 max 4611686018427387905 ns is out of range"):
        eng.raise_partition(3, 2**62 + 1)
    with pytest.raises(ValueError, match="cap .* out of range"):
        _core.watermark_floors(ts, 1, 0, -1, None, 2**62 + 1)
    assert eng.partitions == [] and eng.watermark is None


def engine_of(kind, p):
    mf = p["max_future"]
    if kind == "window":
        return _core.WindowEngine(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"], mf, True, AGGS)
    if kind == "session":
        return _core.SessionEngine(p["size"], p["ooo"], p["lateness"], mf, True, AGGS)
    return _core.GlobalEngine(1, 0, p["size"], False, p["ooo"], mf, True, AGGS)  # event-time trigger


def rows_of(out, rows):
    for r in range(len(out["start"])):
        rows.append((int(out["key"][r]), int(out["start"][r]), int(out["end"][r]),
                     tuple(round(float(c[r]), 9) for c in out["cols"]), bool(out["update"][r])))


def run(kind, p, keys, ts, vals, idx, cuts, floor=None):
    """The rows idx of the stream through one engine, in batches cut at `cuts` (positions in
    idx), with their floors; returns (rows, late and invalid as stream positions)."""
    eng = engine_of(kind, p)
    rows, late, invalid = [], [], []
    bounds = [0, *cuts, len(idx)]
    for a, b in itertools.pairwise(bounds):
        part = idx[a:b]
        out = eng.process(keys[part], ts[part], [None, vals[part], vals[part]],
                          floor=None if floor is None else floor[part])
        rows_of(out, rows)
        late += part[out["late"]].tolist()
        invalid += part[out["invalid"]].tolist()
    rows_of(eng.flush(), rows)
    return rows, late, invalid


def summary(rows):
    """On-time rows (as a multiset), the final value of every (key, window), the windows
    updated. A later row of a key supersedes its rows whose window it covers: a session that
    grew over a session emitted before (late updates of one batch may coalesce, DESIGN.md, so
    one engine may never emit the smaller session another emitted as an update)."""
    final, updated = {}, set()
    for key, start, end, vals, update in rows:
        for k in [k for k in final if k[0] == key and start <= k[1] and k[2] <= end]:
            del final[k]
        final[(key, start, end)] = vals
        if update:
            updated.add((key, start, end))
    return sorted(r for r in rows if not r[4]), final, updated & final.keys()


def case(data, kind):
    """Engine parameters, keys, times and values of a random stream: mostly in order, some
    rows late by up to 600, maybe a poison clock."""
    n = data.draw(st.integers(1, 120))
    keys = np.array(data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), dtype=np.int64)
    base = np.sort(np.array(data.draw(st.lists(st.integers(0, 2_000), min_size=n, max_size=n)), dtype=np.int64))
    delay = np.array(data.draw(st.lists(st.sampled_from([0, 0, 0, 5, 40, 150, 600]), min_size=n, max_size=n)))
    ts = base - delay
    if data.draw(st.booleans()):
        ts[data.draw(st.integers(0, n - 1))] += 50_000  # a poison clock
    size = data.draw(st.sampled_from([50, 100, 300]))
    p = {"size": size, "slide": data.draw(st.sampled_from([size, size // 2])), "offset": data.draw(st.integers(0, 40)),
         "ooo": data.draw(st.sampled_from([0, 20, 100])), "lateness": data.draw(st.sampled_from([0, 60, 250])),
         "max_future": data.draw(st.sampled_from([-1, 300, 5_000]))}
    if kind == "global":
        p["lateness"] = 0
    return p, keys, ts, np.arange(n, dtype=np.float64) + 0.5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["window", "session", "global"]))
def test_engines_sharing_a_partition_by_key_judge_every_row_as_one_engine(data, kind):
    p, keys, ts, vals = case(data, kind)
    n = len(ts)
    whole = run(kind, p, keys, ts, vals, np.arange(n), [])
    floor, _ = floors_of(ts, p["ooo"], p["max_future"], cuts=sorted(set(data.draw(st.lists(st.integers(0, n), max_size=3)))))
    engines = data.draw(st.integers(1, 4))
    rows, late, invalid = [], [], []
    for e in range(engines):
        idx = np.flatnonzero(keys % engines == e)
        cuts = sorted({c for c in data.draw(st.lists(st.integers(0, n), max_size=4)) if c <= len(idx)})
        r, lt, inv = run(kind, p, keys, ts, vals, idx, cuts, floor)
        rows += r
        late += lt
        invalid += inv
    assert summary(rows) == summary(whole[0])
    assert sorted(late) == sorted(whole[1])
    assert sorted(invalid) == sorted(whole[2])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["window", "session", "global"]))
def test_engines_sharing_several_partitions_by_key_judge_every_row_as_one_engine(data, kind):
    # Reads of one partition each (a source's reads on Ray), the partitions lagging each other,
    # the keys split among engines: before each read every engine raises the other partitions
    # to the largest times accepted of them so far (SourceWorker.marks), and the read's floors
    # are judged against the watermark those partitions allow (cap, wm: SourceWorker._floors).
    p, keys, ts, vals = case(data, kind)
    n, parts = len(ts), data.draw(st.integers(2, 3))
    bounds = [0, *sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=8)))), n]
    reads = [(data.draw(st.integers(0, parts - 1)), np.arange(a, b)) for a, b in itertools.pairwise(bounds) if b > a]
    lag = [data.draw(st.sampled_from([0, 0, 70, 400])) for _ in range(parts)]
    for label, idx in reads:
        ts[idx] -= lag[label]
    engines = data.draw(st.integers(1, 4))
    whole = engine_of(kind, p)
    split = [engine_of(kind, p) for _ in range(engines)]
    for eng in [whole, *split]:
        for q in range(parts):
            eng.set_partition_idle(q, False)  # declared: each holds the watermark back until it sends
    want, got = ([], [], []), ([], [], [])
    carry, wm = {}, None

    def into(eng, out, idx, res):
        rows_of(out, res[0])
        res[1].extend(idx[out["late"]].tolist())
        res[2].extend(idx[out["invalid"]].tolist())

    for label, idx in reads:
        into(whole, whole.process(keys[idx], ts[idx], [None, vals[idx], vals[idx]], partition=label), idx, want)
        others = [carry.get(q) for q in range(parts) if q != label]
        cap = NONE if None in others else min(others) - p["ooo"] - 1
        began = wm is None
        floor, top, wm = _core.watermark_floors(ts[idx], 1, p["ooo"], p["max_future"], carry.get(label), cap, wm)
        for e, eng in enumerate(split):
            if began and wm is not None and kind == "global":
                # Where the one engine's watermark began: an engine that held rows while it had
                # none starts its trigger's schedule there (its own may begin past a multiple).
                eng.first_watermark(_first_watermark([floor], p["ooo"], cap, wm))
            for q, t in carry.items():
                if q != label:
                    rows_of(eng.raise_partition(q, t), got[0])
            mine = idx[keys[idx] % engines == e]
            sub = floor[keys[idx] % engines == e]
            into(eng, eng.process(keys[mine], ts[mine], [None, vals[mine], vals[mine]], partition=label, floor=sub),
                 mine, got)
        if top is not None:
            carry[label] = top
    into(whole, whole.flush(), np.arange(0), want)
    for eng in split:
        into(eng, eng.flush(), np.arange(0), got)
    assert summary(got[0]) == summary(want[0])
    assert sorted(got[1]) == sorted(want[1])
    assert sorted(got[2]) == sorted(want[2])


def union_driver(parts_of: list, ooo: int, max_future: int):
    """The Ray driver's pass over a union's aligned reads (Driver._unions: where the watermark
    began, and where max_future may be judged otherwise), on a stand-in for its state: one
    window (id 0) fed by sources 100, 101, ... with parts_of[s] partitions each."""
    from pystream._ray_driver import Driver

    chans: dict = {}  # (source, partition) -> channel
    for s, count in enumerate(parts_of):
        for q in range(count):
            chans[(100 + s, q)] = len(chans)
    ns = SimpleNamespace(got={0: {}}, known={0: list(chans.values())}, first={}, differs={}, chan_ids=chans)
    time_ = SimpleNamespace(max_out_of_orderness=ooo, max_future=None if max_future < 0 else max_future)
    ns.plan = SimpleNamespace(nodes={0: SimpleNamespace(params={"time": time_}),
                                     **{100 + s: SimpleNamespace(params={"source": SimpleNamespace(name=f"s{s}")})
                                        for s in range(len(parts_of))}})
    ns._max_future_differs = functools.partial(Driver._max_future_differs, ns)
    return ns, chans, functools.partial(Driver._unions, ns)


def run_union(kind, p, keys, ts, vals, parts_of, reads, engines):
    """A union through one engine fed every batch in the local runtime's turns (one of each
    source), and through `engines` engines that split the keys, fed as the Ray runtime feeds its
    actors: each source's reader judges floors against its own partitions (cap, wm), every
    engine takes its rows of each batch in that turn and then raises the batch's partition to
    the largest time accepted of it ("ends"), and the driver's pass over the marks
    (Driver._unions) says where the watermark began. reads[s]: source s's batches in order,
    as (partition, stream positions). Returns (one engine's, the split engines': rows, late
    and invalid positions each; the driver's stand-in: its `differs` counts warnings)."""
    ns, chans, unions = union_driver(parts_of, p["ooo"], p["max_future"])
    order = [(s, chans[(100 + s, q)], idx) for k in range(max(len(r) for r in reads))
             for s, per_source in enumerate(reads) if k < len(per_source) for q, idx in [per_source[k]]]
    whole = engine_of(kind, p)
    split = [engine_of(kind, p) for _ in range(engines)]
    for eng in [whole, *split]:
        for c in chans.values():
            eng.set_partition_idle(c, False)  # declared: each holds the watermark back until it sends
    want, got = ([], [], []), ([], [], [])
    carry, wm = {}, {}  # a reader's state: by channel its largest accepted time; by source its watermark

    def into(eng, out, idx, res):
        rows_of(out, res[0])
        res[1].extend(idx[out["late"]].tolist())
        res[2].extend(idx[out["invalid"]].tolist())

    for s, c, idx in order:
        into(whole, whole.process(keys[idx], ts[idx], [None, vals[idx], vals[idx]], partition=c), idx, want)
        others = [carry.get(x) for (sid, _q), x in chans.items() if sid == 100 + s and x != c]
        cap = None if not others else (NONE if None in others else min(others) - p["ooo"] - 1)
        was = carry.get(c)
        floor, top, wm[s] = _core.watermark_floors(ts[idx], 1, p["ooo"], p["max_future"], was, cap, wm.get(s))
        step = [{0: top}] if top is not None else [{}]
        born = [{0: _born(floor, top)}] if was is None and top is not None else [{}]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # counted in ns.differs
            unions([(c,)], [step], [born], [[{0: int(ts[idx].max())}]])
        for e, eng in enumerate(split):
            if kind == "global" and 0 in ns.first:
                eng.first_watermark(ns.first[0])  # sent with every round; counts until the engine's watermark begins
            mine = keys[idx] % engines == e
            into(eng, eng.process(keys[idx[mine]], ts[idx[mine]], [None, vals[idx[mine]], vals[idx[mine]]],
                                  partition=c, floor=floor[mine]), idx[mine], got)
            if top is not None:
                rows_of(eng.raise_partition(c, top), got[0])
        if top is not None:
            carry[c] = top
    into(whole, whole.flush(), np.arange(0), want)
    for eng in split:
        into(eng, eng.flush(), np.arange(0), got)
    return want, got, ns


def same(want, got) -> bool:
    return (summary(got[0]) == summary(want[0]) and sorted(got[1]) == sorted(want[1])
            and sorted(got[2]) == sorted(want[2]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["window", "session", "global"]))
def test_engines_fed_a_union_by_aligned_reads_judge_every_row_as_one_engine_unless_the_driver_warns(data, kind):
    # Sources of one or two partitions each, unioned, each batch lagging by its own amount
    # (sources fall behind and overtake each other), the keys split among engines (run_union):
    # unless the driver warns, every row is judged as by one engine fed the whole union.
    p, keys, ts, vals = case(data, kind)
    n = len(ts)
    parts_of = data.draw(st.lists(st.integers(1, 2), min_size=2, max_size=3))
    cuts = [0, *sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=10)))), n]
    reads = [[] for _ in parts_of]  # per source, its batches in order: (partition, rows)
    for a, b in itertools.pairwise(cuts):
        if b > a:
            s = data.draw(st.integers(0, len(parts_of) - 1))
            reads[s].append((data.draw(st.integers(0, parts_of[s] - 1)), np.arange(a, b)))
            ts[a:b] -= data.draw(st.sampled_from([0, 0, 70, 400]))
    want, got, ns = run_union(kind, p, keys, ts, vals, parts_of, reads, data.draw(st.integers(1, 4)))
    if not ns.differs:  # else the driver warned: a reader may have judged max_future otherwise
        assert summary(got[0]) == summary(want[0])
        assert sorted(got[1]) == sorted(want[1])
        assert sorted(got[2]) == sorted(want[2])


@pytest.mark.parametrize("where", ["before-every-source-sent", "as-the-union-began"])
def test_the_driver_warns_where_a_reader_judged_max_future_otherwise(where):
    # Tumbling 50, no disorder or lateness, max_future 300; sources a and b of one partition
    # each, keys 0 (engine 0) and 1 (engine 1). "before-every-source-sent": a's first batch
    # holds 100 then a clock at 100,000, which one engine accepts (b has not sent: no
    # watermark) and a's reader refuses (its own watermark is 99); b then sends 5,000, and
    # a's row at 120 is late for one engine (watermark 4,999), not for engine 1 (99), which
    # knows a only from its reader.
    # "as-the-union-began": a sends 100, b 1,000 then 1,250, which b's reader accepts (its own
    # watermark 999) and one engine refuses (the union's is 99); once a has got to 1,200 (in
    # steps within max_future), a row at 1,010 is late for the split engines (watermark
    # 1,199) and not for one (999). Either way the results differ, and the driver says so.
    p = {"size": 50, "slide": 50, "offset": 0, "ooo": 0, "lateness": 0, "max_future": 300}
    if where == "before-every-source-sent":
        ts = [100, 100_000, 5_000, 120]
        reads = [[(0, [0, 1]), (0, [3])], [(0, [2])]]
        keys = [0, 0, 0, 1]  # the row at 120 on engine 1, which did not see the clock
    else:
        ts = [100, 1_000, 1_250, 350, 640, 930, 1_200, 1_010]
        reads = [[(0, [0]), *((0, [i]) for i in range(3, 8))], [(0, [1, 2])]]
        keys = [0, 1, 1, 0, 0, 0, 0, 1]
    reads = [[(q, np.array(idx)) for q, idx in r] for r in reads]
    want, got, ns = run_union("window", p, np.array(keys, np.int64), np.array(ts, np.int64), np.ones(len(ts)),
                              [1, 1], reads, 2)
    assert not same(want, got)
    assert ns.differs == {0: 1}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_process_turns_is_process_then_raise_piece_by_piece(data):
    # WindowEngine.process_turns (a window actor's share of an aligned round in one call):
    # pieces of several batches in any interleaving that keeps each batch's order, with floors
    # or not, each maybe followed by a raise of some partition: the same rows fired, in the
    # same order, and the same late and invalid rows as process and raise_partition per piece.
    p, keys, ts, vals = case(data, "window")
    n = len(ts)
    edges = [0, *sorted(set(data.draw(st.lists(st.integers(0, n), max_size=2)))), n]
    spans = list(itertools.pairwise(edges))
    floors = [floors_of(ts[a:b], p["ooo"], p["max_future"])[0] if data.draw(st.booleans()) else None for a, b in spans]
    pieces = []  # per batch, its pieces (lo, hi) in order
    for a, b in spans:
        cuts = [0, *sorted(set(data.draw(st.lists(st.integers(0, b - a), max_size=3)))), b - a]
        pieces.append(list(itertools.pairwise(cuts)))
    turns, left = [], [list(ps_) for ps_ in pieces]
    while any(left):
        b = data.draw(st.sampled_from([i for i, q in enumerate(left) if q] + [-1]))  # -1: a raise alone
        lo, hi = left[b].pop(0) if b >= 0 else (0, 0)
        end = data.draw(st.sampled_from([NONE, int(ts.min()) if n else 0, int(ts.max()) if n else 0, 700]))
        if b >= 0 or end != NONE:
            turns.append((b, lo, hi, data.draw(st.integers(0, 2)), end))
    one, two = engine_of("window", p), engine_of("window", p)
    want = ([], [], [])
    for b, lo, hi, part, end in turns:
        if b >= 0:
            a = spans[b][0]
            idx = np.arange(a + lo, a + hi)
            f = None if floors[b] is None else floors[b][lo:hi]
            out = one.process(keys[idx], ts[idx], [None, vals[idx], vals[idx]], partition=part, floor=f)
            rows_of(out, want[0])
            want[1].extend(idx[out["late"]].tolist())
            want[2].extend(idx[out["invalid"]].tolist())
        if end != NONE:
            rows_of(one.raise_partition(part, end), want[0])
    out = two.process_turns([keys[a:b] for a, b in spans], [ts[a:b] for a, b in spans],
                            [[None, vals[a:b], vals[a:b]] for a, b in spans], 1, floors,
                            np.array(turns, dtype=np.int64).reshape(-1, 5))
    got = ([], out["late"].tolist(), out["invalid"].tolist())
    rows_of(out, got[0])
    assert got[0] == want[0]
    assert sorted(got[1]) == sorted(want[1]) and sorted(got[2]) == sorted(want[2])
    rows_of(one.flush(), want[0])
    rows_of(two.flush(), got[0])
    assert got[0] == want[0]


def test_process_turns_refuses_turns_that_name_no_rows():
    eng = engine_of("window", {"size": 10, "slide": 10, "offset": 0, "ooo": 0, "lateness": 0, "max_future": -1})
    ts = [np.arange(4, dtype=np.int64)]
    args = ([np.zeros(4, np.int64)], ts, [[None, np.ones(4), np.ones(4)]], 1, [None])
    for turn, what in [((1, 0, 1, 0, NONE), r"turn 0 = \(1, 0, 1\) is not rows of one of the 1 batches"),
                       ((-1, 0, 1, 0, 5), r"turn 0 = \(-1, 0, 1\)"), ((-2, 0, 0, 0, 5), r"turn 0 = \(-2, 0, 0\)"),
                       ((0, 2, 1, 0, NONE), r"turn 0 = \(0, 2, 1\)"), ((0, 0, 5, 0, NONE), r"turn 0 = \(0, 0, 5\)"),
                       ((0, 0, 1, 0, 2**62 + 1), r"turn 0 raises to 4611686018427387905 ns, out of range")]:
        with pytest.raises(ValueError, match=what):
            eng.process_turns(*args, np.array([turn], dtype=np.int64))
    with pytest.raises(ValueError, match=r"turns must be an \(n, 5\) int64 array"):
        eng.process_turns(*args, np.zeros((1, 4), dtype=np.int64))
    bad = [np.arange(4, dtype=np.int64), np.array([0, 2**62 + 1], dtype=np.int64)]  # the second batch's row 1
    with pytest.raises(ValueError, match=r"timestamp 4611686018427387905 at row 1 is outside the supported range"):
        eng.process_turns([np.zeros(4, np.int64), np.zeros(2, np.int64)], bad,
                          [[None, np.ones(4), np.ones(4)], [None, np.ones(2), np.ones(2)]], 1, [None, None],
                          np.array([(0, 0, 4, 0, NONE), (1, 0, 2, 0, NONE)], dtype=np.int64))
    with pytest.raises(ValueError, match="one entry per batch"):
        eng.process_turns([], ts, [[None, np.ones(4), np.ones(4)]], 1, [None], np.zeros((0, 5), dtype=np.int64))
    floors = [None, np.array([NONE, 2**62 + 1], dtype=np.int64)]  # the second batch's floor of row 1
    with pytest.raises(ValueError, match=r"floor 4611686018427387905 ns at row 1 is out of range"):
        eng.process_turns([np.zeros(4, np.int64), np.zeros(2, np.int64)], [ts[0], np.arange(2, dtype=np.int64)],
                          [[None, np.ones(4), np.ones(4)], [None, np.ones(2), np.ones(2)]], 1, floors,
                          np.array([(0, 0, 4, 0, NONE), (1, 0, 2, 0, NONE)], dtype=np.int64))
    assert eng.partitions == []  # nothing ran
    eng.flush()  # at end of input: the engine takes no more rows, in turns neither
    with pytest.raises(ValueError, match="has been flushed at end of input"):
        eng.process_turns(*args, np.array([(0, 0, 4, 0, NONE)], dtype=np.int64))


def test_without_floors_an_engine_that_holds_some_keys_judges_from_its_own_rows():
    # The case the floors exist for: engine 1 sees only key 1's rows, so its watermark trails
    # the partition's; the late row of key 1 is late only against the whole partition's.
    p = {"size": 10, "slide": 10, "offset": 0, "ooo": 0, "lateness": 0, "max_future": -1}
    keys = np.array([1, 0, 1], np.int64)
    ts = np.array([1, 30, 2], np.int64)  # by t=2, the partition's watermark is 29: window [0, 10) closed
    vals = np.ones(3)
    whole = run("window", p, keys, ts, vals, np.arange(3), [])
    assert whole[1] == [2]
    idx = np.array([0, 2])
    floor, _ = floors_of(ts, 0, -1)
    assert floor.tolist() == [NONE, 1, 30]
    assert run("window", p, keys, ts, vals, idx, [], floor)[1] == [2]
    assert run("window", p, keys, ts, vals, idx, [])[1] == []  # from its own rows: on time
