"""Per-partition watermarks and idleness in the engine, against the reference model.

Batches come from random partitions, and partitions are marked idle or active at random
between batches. The operator's watermark is the minimum over active partitions of each
partition's max event time - ooo - 1, it never goes back, an idle partition stops holding
it back, and a partition that sends again rejoins without pulling it back.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pystream import _core
from reference import RefWindows
from test_engine_model import AGGS, CODES, assert_matches_model, collect, params

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def partitioned_script(draw):
    """A list of steps: ("batch", partition, keys, ts, vals) or ("idle", partition, flag)."""
    n_parts = draw(st.integers(1, 3))
    bases = [draw(st.integers(-100, 100)) for _ in range(n_parts)]
    clocks = list(bases)
    steps = []
    for _ in range(draw(st.integers(1, 14))):
        if draw(st.integers(0, 4)) == 0:
            steps.append(("idle", draw(st.integers(0, n_parts - 1)), draw(st.booleans())))
            continue
        p = draw(st.integers(0, n_parts - 1))
        n = draw(st.integers(0, 6))
        ts = []
        for _ in range(n):
            clocks[p] += draw(st.integers(0, 4))
            ts.append(clocks[p] + draw(st.integers(-6, 3)))
        keys = [draw(st.integers(0, 3)) for _ in range(n)]
        vals = [draw(st.integers(-50, 50)) / 4 for _ in range(n)]
        steps.append(("batch", p, np.array(keys, dtype=np.int64), np.array(ts, dtype=np.int64),
                      np.array(vals, dtype=np.float64)))
    return steps


def run_engine(p, steps, engine=None):
    eng = engine or _core.WindowEngine(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"],
                                       -1 if p["max_future"] is None else p["max_future"], p["keyed"],
                                       [(CODES[k], d) for k, d in AGGS])
    rows, late, invalid, wms = [], [], [], []
    offset = 0
    for step in steps:
        if step[0] == "idle":
            collect(eng.set_partition_idle(step[1], step[2]), rows, p["keyed"])
        else:
            _, part, keys, ts, vals = step
            out = eng.process(keys if p["keyed"] else None, ts, [None if k == "count" else vals for k, _ in AGGS],
                              1, part)
            collect(out, rows, p["keyed"])
            late += [int(i) + offset for i in out["late"]]
            invalid += [int(i) + offset for i in out["invalid"]]
            offset += len(ts)
        wms.append(eng.watermark)
    collect(eng.flush(), rows, p["keyed"])
    return (rows, late, invalid), wms


def run_reference(p, steps):
    ref = RefWindows(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"], p["max_future"], list(AGGS), p["keyed"])
    index, wms = 0, []
    for step in steps:
        if step[0] == "idle":
            ref.set_idle(step[1], step[2])
        else:
            _, part, keys, ts, vals = step
            ref.batch_from(part)
            for i in range(len(ts)):
                ref.event(index, int(keys[i]), int(ts[i]), [float(vals[i])] * len(AGGS))
                index += 1
        wms.append(ref.wm)
    ref.flush()
    return ([(r.key, r.start, r.end, r.values, r.update) for r in ref.rows], ref.late, ref.invalid), wms


@SETTINGS
@given(p=params(), steps=partitioned_script())
def test_partitioned_engine_matches_reference(p, steps):
    got, wms = run_engine(p, steps)
    want, ref_wms = run_reference(p, steps)
    assert wms == ref_wms
    assert_matches_model(got, want)


@SETTINGS
@given(p=params(), steps=partitioned_script())
def test_watermark_never_regresses(p, steps):
    _, wms = run_engine(p, steps)
    seen = [w for w in wms if w is not None]
    assert seen == sorted(seen)
    if seen:  # once there is a watermark it stays
        assert all(w is not None for w in wms[wms.index(seen[0]):])


@SETTINGS
@given(p=params(), steps=partitioned_script(), data=st.data())
def test_partition_state_survives_snapshot(p, steps, data):
    cut = data.draw(st.integers(0, len(steps)))
    want, _ = run_engine(p, steps)
    make = lambda: _core.WindowEngine(p["size"], p["slide"], p["offset"], p["ooo"], p["lateness"],  # noqa: E731
                                      -1 if p["max_future"] is None else p["max_future"], p["keyed"],
                                      [(CODES[k], d) for k, d in AGGS])
    first = make()
    rows = []
    late, invalid, offset = [], [], 0
    for step in steps[:cut]:
        if step[0] == "idle":
            collect(first.set_partition_idle(step[1], step[2]), rows, p["keyed"])
        else:
            out = first.process(step[2] if p["keyed"] else None, step[3],
                                [None if k == "count" else step[4] for k, _ in AGGS], 1, step[1])
            collect(out, rows, p["keyed"])
            late += [int(i) + offset for i in out["late"]]
            invalid += [int(i) + offset for i in out["invalid"]]
            offset += len(step[3])
    second = make()
    second.restore(first.snapshot())
    (rest_rows, rest_late, rest_invalid), _ = run_engine(p, steps[cut:], engine=second)
    from test_engine_model import canon
    assert canon(rows + rest_rows) == canon(want[0])
    assert late + [i + offset for i in rest_late] == want[1]
    assert invalid + [i + offset for i in rest_invalid] == want[2]


def test_idle_partition_releases_the_watermark():
    #   partition 0 reaches t=100, partition 1 is stuck at t=5: the watermark is held at 4.
    #   Marking 1 idle lets it jump to 99 and fires [0,10) .. [90,100).
    e = _core.WindowEngine(10, 10, 0, 0, 0, -1, False, [(0, 1)])
    e.process(None, np.array([5]), [None], 1, 1)
    out = e.process(None, np.array([1, 50, 100]), [None], 1, 0)
    assert e.watermark == 4 and len(out["start"]) == 0
    out = e.set_partition_idle(1, True)
    assert e.watermark == 99 and out["start"].tolist() == [0, 50]
    # Partition 1 sends again: it rejoins, and the watermark does not go back.
    e.process(None, np.array([7]), [None], 1, 1)
    assert e.watermark == 99


def test_declared_partitions_survive_a_snapshot_taken_before_any_data():
    """A checkpoint before the first event must still remember the declared partitions, or a
    restored operator would let the first partition alone drive the watermark."""
    import pickle

    import pystream as ps
    from pystream.operators import make_window_operator

    def op():
        return make_window_operator(ps.windows.Tumbling("10s"), {"n": ps.agg.count()}, ps.EventTime("t", unit="s"), ("k",))

    batch = ps.Batch({"k": np.array([1, 1]), "t": np.array([0, 100])})
    a = op()
    a.declare_partitions([0, 1])
    a.process(batch, 0)
    b = op()
    b.declare_partitions([0, 1])
    c = op()
    c.restore(pickle.loads(pickle.dumps(b.snapshot())))
    c.process(batch, 0)
    assert a.watermark is None and c.watermark is None  # partition 1 holds it back in both


def test_a_batch_that_releases_held_windows_has_its_output_sized_before_it_fires():
    """Partition 0 runs 40 windows ahead while partition 1 holds the watermark back; the batch of
    1 that catches up fires all 40 (one by one, as its events move the watermark). Its output
    is sized for them up front, from the rows a fired window has had lately, so its columns
    never outgrow their buffers (they grew by doubling before: 24-37 bytes copied per event
    with 2 to 8 partitions)."""
    keys = np.arange(1_000)
    e = _core.WindowEngine(10, 10, 0, 0, 0, -1, True, [(0, 1), (1, 1)])  # count, sum

    def batch(start, windows, part):
        ts = np.repeat(np.arange(start, start + 10 * windows, 10), len(keys))
        return e.process(np.tile(keys, windows), ts, [None, np.ones(len(ts))], 1, part)

    for start in range(0, 50, 10):  # in step: the engine learns how many rows a window fires
        batch(start, 1, 0)
        batch(start, 1, 1)
    before = _core.regrowth_bytes()
    assert len(batch(50, 40, 0)["start"]) == 0  # held back by partition 1
    out = batch(50, 40, 1)
    assert out["start"].tolist() == np.repeat(np.arange(40, 440, 10), len(keys)).tolist()
    assert out["cols"][0].tolist() == [2] * 40_000  # counts: one event of each partition per key and window
    assert _core.regrowth_bytes() == before
