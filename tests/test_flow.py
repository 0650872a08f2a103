"""The public API end to end: the DESIGN.md example, key kinds, time representations,
side outputs, graph operators and operator snapshots, checked against pandas."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pystream as ps
from pystream.datagen import meter_readings
from pystream.operators import WindowAggregateOperator


def pandas_tumbling(df, key, size_ms, ts="ts"):
    g = df.assign(window_start=df[ts] // size_ms * size_ms).groupby([key, "window_start"])
    return g.agg(kwh=("kwh", "sum"), n=("kwh", "size"), peak=("kwh", "max")).reset_index()


def test_design_example_matches_pandas():
    data = meter_readings(50_000, 500, seed=3)
    flow = ps.Flow("meters")
    readings = flow.source(
        ps.sources.Arrays({"meter_id": data["meter_id"], "ts": data["ts"], "kwh": data["kwh"]}, batch_size=4096),
        time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"),
    )
    usage = (
        readings.key_by("meter_id")
        .window(ps.windows.Tumbling("15m"), allowed_lateness="0s")
        .aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh"))
    )
    usage.sink(ps.sinks.Collect("usage"))
    usage.late().sink(ps.sinks.Collect("late"))
    result = flow.run()
    assert len(result["late"]) == 0  # transmission delay <= 60 s = max_out_of_orderness
    got = result["usage"].to_pandas().sort_values(["meter_id", "window_start"]).reset_index(drop=True)
    want = pandas_tumbling(pd.DataFrame(data), "meter_id", 900_000)
    assert got["meter_id"].tolist() == want["meter_id"].tolist()
    assert got["window_start"].tolist() == want["window_start"].tolist()
    assert (got["window_end"] - got["window_start"] == 900_000).all()
    assert got["n"].tolist() == want["n"].tolist()
    np.testing.assert_allclose(got["kwh"], want["kwh"], rtol=1e-12)
    np.testing.assert_array_equal(got["peak"], want["peak"])
    assert not got["update"].any()
    assert result.metrics["window1"]["events_in"] == 50_000


def test_late_readings_are_reported_not_dropped():
    data = meter_readings(20_000, 200, seed=5, max_delay_ms=30 * 60_000)  # up to 30 min delay
    flow = ps.Flow("late")
    src = flow.source(ps.sources.Arrays(data, batch_size=1000), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="1m"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count(), kwh=ps.agg.sum("kwh"))
    usage.sink(ps.sinks.Collect("usage"))
    usage.late().sink(ps.sinks.Collect("late"))
    res = flow.run()
    assert len(res["late"]) > 0
    # Every reading is either in a window or in the late output: nothing is lost silently.
    assert res["usage"]["n"].sum() + len(res["late"]) == 20_000
    np.testing.assert_allclose(res["usage"]["kwh"].sum() + res["late"]["kwh"].sum(), data["kwh"].sum())
    assert res.metrics["window1"]["late"] == len(res["late"])


def test_string_keys_come_back_as_strings():
    names = np.array(["north", "south", "north", "east", "south"])
    flow = ps.Flow("s")
    src = flow.source(ps.sources.Arrays({"site": names, "t": np.array([0, 1, 2, 3, 70]), "v": np.ones(5)}),
                      time=ps.EventTime("t", unit="s"))
    src.key_by("site").window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    assert o["site"].tolist() == ["north", "south", "east", "south"]
    assert o["n"].tolist() == [2, 1, 1, 1]
    assert o["site"].dtype.kind == "U"


def test_composite_keys_restore_each_column():
    flow = ps.Flow("c")
    df = pd.DataFrame({"region": ["a", "a", "b", "a"], "meter": [1, 2, 1, 1], "t": [0, 1, 2, 3], "v": [1.0, 2.0, 3.0, 4.0]})
    src = flow.source(ps.sources.Arrays(df), time=ps.EventTime("t", unit="s"))
    src.key_by("region", "meter").window(ps.windows.Tumbling("1m")).aggregate(v=ps.agg.sum("v")).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"].to_pandas()
    assert o[["region", "meter", "v"]].values.tolist() == [["a", 1, 5.0], ["a", 2, 2.0], ["b", 1, 3.0]]
    assert o["meter"].dtype == np.int64


def test_datetime_in_datetime_out_in_the_same_unit():
    t = np.array(["2025-03-30T00:05", "2025-03-30T00:20"], dtype="datetime64[ms]")
    flow = ps.Flow("d")
    src = flow.source(ps.sources.Arrays({"t": t, "v": np.array([1.0, 2.0])}), time=ps.EventTime("t"))
    src.window(ps.windows.Tumbling("15m")).aggregate(v=ps.agg.sum("v")).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    assert o["window_start"].dtype == np.dtype("datetime64[ms]")
    assert o["window_start"].tolist() == list(np.array(["2025-03-30T00:00", "2025-03-30T00:15"], dtype="datetime64[ms]").tolist())


def test_datetime_seconds_with_subsecond_windows_fall_back_to_ns():
    t = np.array(["2025-01-01T00:00:01", "2025-01-01T00:00:02"], dtype="datetime64[s]")
    flow = ps.Flow("d")
    src = flow.source(ps.sources.Arrays({"t": t}), time=ps.EventTime("t"))
    src.window(ps.windows.Tumbling("500ms")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    assert o["window_start"].dtype == np.dtype("datetime64[ns]")
    assert (o["window_end"] - o["window_start"] == np.timedelta64(500, "ms")).all()


def test_non_keyed_window_is_one_result_per_window():
    data = meter_readings(10_000, 100, seed=1)
    flow = ps.Flow("load")
    src = flow.source(ps.sources.Arrays(data), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    src.window(ps.windows.Tumbling("5m")).aggregate(load=ps.agg.sum("kwh"), n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    want = pd.DataFrame(data).assign(w=lambda d: d.ts // 300_000 * 300_000).groupby("w")["kwh"].agg(["sum", "size"])
    assert o["window_start"].tolist() == want.index.tolist()
    np.testing.assert_allclose(o["load"], want["sum"])
    assert o.columns == ["window_start", "window_end", "load", "n", "update"]


def test_all_aggregations_against_pandas_on_a_sliding_window():
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({"k": rng.integers(0, 5, n), "t": np.sort(rng.integers(0, 100_000, n)), "v": rng.normal(size=n)})
    flow = ps.Flow("all")
    src = flow.source(ps.sources.Arrays(df, batch_size=333), time=ps.EventTime("t", unit="ms"))
    aggs = dict(c=ps.agg.count(), s=ps.agg.sum("v"), lo=ps.agg.min("v"), hi=ps.agg.max("v"), mu=ps.agg.mean("v"),
                f=ps.agg.first("v"), l=ps.agg.last("v"), var=ps.agg.var("v"), sd=ps.agg.std("v", ddof=0))
    src.key_by("k").window(ps.windows.Sliding("10s", "4s")).aggregate(**aggs).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"].to_pandas()
    for _, row in o.sample(40, random_state=1).iterrows():
        sel = df[(df.k == row.k) & (df.t >= row.window_start) & (df.t < row.window_end)]
        assert row.c == len(sel)
        assert row.s == pytest.approx(sel.v.sum())
        assert row.lo == sel.v.min() and row.hi == sel.v.max()
        assert row.mu == pytest.approx(sel.v.mean())
        assert row.f == sel.v.iloc[0] and row.l == sel.v.iloc[-1]  # sorted input: first/last by time
        assert row["var"] == pytest.approx(sel.v.var(ddof=1), nan_ok=True)
        assert row.sd == pytest.approx(sel.v.std(ddof=0))


def test_integer_inputs_keep_their_dtype_for_min_max_first_last():
    flow = ps.Flow("i")
    src = flow.source(ps.sources.Arrays({"t": np.array([1, 2, 3]), "v": np.array([5, -3, 9], dtype=np.int32)}),
                      time=ps.EventTime("t", unit="s"))
    src.window(ps.windows.Tumbling("1m")).aggregate(
        lo=ps.agg.min("v"), hi=ps.agg.max("v"), f=ps.agg.first("v"), s=ps.agg.sum("v")).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    assert [o[c].dtype for c in ("lo", "hi", "f", "s")] == [np.int32, np.int32, np.int32, np.float64]
    assert (o["lo"][0], o["hi"][0], o["f"][0], o["s"][0]) == (-3, 9, 5, 11.0)


def test_map_filter_union_and_several_windows_from_one_stream():
    flow = ps.Flow("g")
    a = flow.source(ps.sources.Arrays({"m": np.array([1, 2]), "t": np.array([0, 10]), "wh": np.array([1000.0, 2000.0])}),
                    time=ps.EventTime("t", unit="s"))
    b = flow.source(ps.sources.Arrays({"m": np.array([1, 3]), "t": np.array([20, 30]), "wh": np.array([500.0, -1.0])}),
                    time=ps.EventTime("t", unit="s"))
    both = a.union(b).filter(lambda x: x["wh"] >= 0).map(lambda x: x.with_columns(kwh=x["wh"] / 1000))
    both.key_by("m").window(ps.windows.Tumbling("1m")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("per_meter"))
    both.window(ps.windows.Tumbling("1m")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("total"))
    res = flow.run()
    assert dict(zip(res["per_meter"]["m"].tolist(), res["per_meter"]["kwh"].tolist())) == {1: 1.5, 2: 2.0}
    assert res["total"]["kwh"].tolist() == [3.5]


def test_empty_outputs_still_have_columns():
    flow = ps.Flow("e")
    src = flow.source(ps.sources.Arrays({"m": np.array([1]), "t": np.array([0])}), time=ps.EventTime("t", unit="s"))
    r = src.key_by("m").window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count())
    r.late().sink(ps.sinks.Collect("late"))
    r.invalid().sink(ps.sinks.Collect("invalid"))
    res = flow.run()
    assert res["late"].columns == ["m", "t"] and len(res["late"]) == 0
    assert res["invalid"].columns == ["m", "t", "reason"]


@pytest.mark.parametrize("cut", [0, 1, 3, 7])
def test_operator_snapshot_pickles_and_restores_string_keys(cut):
    rng = np.random.default_rng(cut)
    n = 400
    keys = rng.choice(np.array(["m-1", "m-2", "m-3", "m-44"], dtype=object), n)
    t = np.sort(rng.integers(0, 60_000, n)) + rng.integers(-3000, 3000, n)
    batches = [ps.Batch({"m": keys[i:i + 50], "t": t[i:i + 50], "v": np.arange(i, min(i + 50, n), dtype=float)})
               for i in range(0, n, 50)]

    def make():
        return WindowAggregateOperator(ps.windows.Sliding("10s", "5s"), {"n": ps.agg.count(), "v": ps.agg.sum("v")},
                                       ps.EventTime("t", unit="ms", max_out_of_orderness="2s"), ("m",), allowed_lateness=1000)

    def drain(op, bs):
        out = []
        for b in bs:
            r, late, _ = op.process(b)
            out += [r] + ([late.select(["m", "t"])] if late is not None else [])
        return out

    straight = make()
    want = drain(straight, batches) + [straight.finish()]
    first = make()
    got = drain(first, batches[:cut])
    state = pickle.loads(pickle.dumps(first.snapshot()))
    second = make()
    second.restore(state)
    got += drain(second, batches[cut:]) + [second.finish()]
    assert [b.to_dict().keys() for b in got] == [b.to_dict().keys() for b in want]
    assert all(x == y for x, y in zip(got, want)) and len(got) == len(want)


def test_restore_refuses_a_different_operator():
    op = WindowAggregateOperator(ps.windows.Tumbling("1m"), {"n": ps.agg.count()}, ps.EventTime("t", unit="s"), ("m",))
    other = WindowAggregateOperator(ps.windows.Tumbling("5m"), {"n": ps.agg.count()}, ps.EventTime("t", unit="s"), ("m",))
    with pytest.raises(ValueError, match="snapshot is from a different window operator"):
        other.restore(op.snapshot())


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=40), data=st.data())
def test_any_int64_keys_are_grouped_exactly(keys, data):
    """Keys anywhere in int64 (negative, huge, beyond the direct-index cache) group exactly."""
    keys = np.array(keys, dtype=np.int64)
    t = np.array(data.draw(st.lists(st.integers(0, 50), min_size=len(keys), max_size=len(keys))), dtype=np.int64)
    flow = ps.Flow("k")
    src = flow.source(ps.sources.Arrays({"k": keys, "t": t}, batch_size=data.draw(st.integers(1, 50))),
                      time=ps.EventTime("t", unit="s", max_out_of_orderness="60s"))
    src.key_by("k").window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    uniq, first = np.unique(keys, return_index=True)
    order = uniq[np.argsort(first)]
    assert o["k"].tolist() == order.tolist()
    assert o["n"].tolist() == [int((keys == k).sum()) for k in order]


def test_batch_conversions_round_trip():
    b = ps.Batch({"a": np.arange(3), "b": np.array([0.5, 1.5, 2.5])})
    assert ps.Batch.from_pandas(b.to_pandas()) == b
    assert ps.Batch.from_arrow(b.to_arrow()) == b
    assert ps.Batch.from_any(b.to_dict()) == b
    assert len(b) == 3 and b.columns == ["a", "b"] and list(b) == ["a", "b"]
    assert ps.Batch.concat([b.slice(0, 1), b.slice(1, 3)]) == b
    assert b.filter(b["a"] > 0)["a"].tolist() == [1, 2]
    with pytest.raises(KeyError, match=r"unknown column 'c'; the batch has \['a', 'b'\]"):
        b["c"]


def test_flat_map_splits_batches():
    flow = ps.Flow("fm")
    src = flow.source(ps.sources.Arrays({"t": np.arange(6), "v": np.arange(6.0)}), time=ps.EventTime("t", unit="s"))

    def by_parity(b):
        return [b.filter(b["v"] % 2 == 0), {"t": b["t"][b["v"] % 2 == 1], "v": b["v"][b["v"] % 2 == 1] * 10}]

    src.flat_map(by_parity).window(ps.windows.Tumbling("1m")).aggregate(v=ps.agg.sum("v")).sink(ps.sinks.Collect("o"))
    assert flow.run()["o"]["v"].tolist() == [0 + 2 + 4 + 10 * (1 + 3 + 5)]


def test_dangling_streams_are_refused():
    flow = ps.Flow("d")
    src = flow.source(ps.sources.Arrays({"t": np.arange(3)}), time=ps.EventTime("t", unit="s"))
    src.window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    src.map(lambda b: b)  # computed, then thrown away
    with pytest.raises(ValueError, match=r"dangling stream: the output of map\(\) \(node 3\) reaches no sink"):
        flow.run()
    empty = ps.Flow("e")
    empty.source(ps.sources.Arrays({"t": np.arange(3)}))
    with pytest.raises(ValueError, match="the flow has no sink"):
        empty.run()


def test_a_call_that_fires_nothing_returns_the_same_schema_as_one_that_fires():
    """Calls that fire nothing share one prebuilt empty result (most calls with small batches):
    its columns and dtypes are those of a result with rows, string keys and int sums included."""
    from pystream.operators import make_window_operator

    op = make_window_operator(ps.windows.Tumbling("15m"), {"kwh": ps.agg.sum("kwh"), "n": ps.agg.count()},
                              ps.EventTime("ts", unit="ms"), ("site",))
    quiet = [op.process(ps.Batch({"site": np.array(["a", "bb"]), "ts": np.array([t, t + 1]),
                                  "kwh": np.array([1, 2])}))[0] for t in (0, 1_000)]
    assert len(quiet[0]) == 0 and quiet[0] is quiet[1]
    fired = op.process(ps.Batch({"site": np.array(["a"]), "ts": np.array([3_600_000]), "kwh": np.array([5])}))[0]
    assert len(fired) == 2 and fired["site"].tolist() == ["a", "bb"] and fired["kwh"].tolist() == [2, 4]
    assert fired.columns == quiet[0].columns
    assert [fired[c].dtype.kind for c in fired.columns] == [quiet[0][c].dtype.kind for c in quiet[0].columns]


def _pass_through(batch, ctx):
    return batch


@pytest.mark.parametrize("step", ["dedupe", "process"])
def test_windows_after_an_operator_fire_as_its_output_comes_not_at_the_end(step):
    """An operator's output is a partition of its own to the windows below it: a window after
    an operator over the second source had waited for that source's own partition, which
    never sends there, so it held every window back to the end of input."""
    n, batch = 2_000, 100

    def build(both: bool):
        read = {"rows": 0}

        def counted(x):
            read["rows"] += len(x)
            return x

        def stamped(x):
            fired.append((read["rows"], len(x)))
            return x

        fired: list = []
        ts = np.arange(n, dtype=np.int64) * 60_000
        cols = {"k": np.arange(n) % 5, "ts": ts, "v": np.ones(n)}
        flow = ps.Flow("after-op")
        t = ps.EventTime("ts", unit="ms")
        if both:  # another source first: its partition comes first
            flow.source(ps.sources.Arrays(dict(cols), batch_size=batch, name="a"), time=t).key_by("k").window(
                ps.windows.Tumbling("1h")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("a"))
        s = flow.source(ps.sources.Arrays(dict(cols), batch_size=batch, name="b"), time=t).map(counted).key_by("k")
        if step == "dedupe":
            mid = s.dedupe("1h")
        else:
            mid = s.process(_pass_through)
        mid.key_by("k").window(ps.windows.Tumbling("1h")).aggregate(n=ps.agg.count(), v=ps.agg.sum("v")).map(
            stamped).sink(ps.sinks.Collect("b"))
        return flow, fired

    flow, fired = build(both=True)
    res = flow.run()
    firing_reads = [r for r, rows in fired if rows]
    assert firing_reads and firing_reads[0] < n / 2, fired  # windows fired while the source was read
    alone, _ = build(both=False)
    expect = alone.run()["b"]
    for c in ("k", "window_start", "n", "v"):
        assert res["b"][c].tolist() == expect[c].tolist()
    assert sum(res["b"]["n"]) == n


class Lagging(ps.sources.Source):
    """Readings in three partitions read a batch of each in turn (as a Kafka topic's), the
    third one's clocks `lag` behind: windows over all three wait for the third."""

    replayable = True
    name = "lagging"

    def __init__(self, data, batch_size, lag_ms=40 * 60_000):
        self.data, self.batch_size, self.lag_ms = data, batch_size, lag_ms

    def partitions(self):
        return [0, 1, 2]

    def read(self, position=None):
        part = self.data["meter_id"] % 3
        rows = [np.flatnonzero(part == p) for p in range(3)]
        reads = [(p, rows[p][i:i + self.batch_size]) for i in range(0, len(part), self.batch_size) for p in range(3)]
        reads = [(p, idx) for p, idx in reads if len(idx)]
        for k in range(0 if position is None else int(position), len(reads)):
            p, idx = reads[k]
            batch = {c: v[idx] for c, v in self.data.items()}
            if p == 2:
                batch["ts"] = batch["ts"] - self.lag_ms
            yield ps.Batch(batch), k + 1, p

    def fingerprint(self):
        return f"lagging:{self.batch_size}"


def _register_readings(n=24_000, meters=60, seed=8):
    """meter_readings with a cumulative register per meter (in event-time order)."""
    data = meter_readings(n, meters, seed=seed, max_delay_ms=5 * 60_000)
    order = np.lexsort((data["ts"], data["meter_id"]))
    reg = np.empty(n)
    ids, kwh = data["meter_id"][order], data["kwh"][order]
    run = np.cumsum(kwh)
    start = np.r_[True, ids[1:] != ids[:-1]]
    reg[order] = run - np.maximum.accumulate(np.where(start, run - kwh, 0.0))
    return {**data, "register": reg}


@pytest.mark.parametrize("batch_size", [300, 1_000])
def test_a_dedupe_keeps_its_input_partitions_so_windows_below_it_judge_rows_as_without_it(batch_size):
    # Three partitions, one 40 minutes behind: the windows' watermark is the lagging one's
    # (rows up to 5 minutes late within each, against 1 minute of disorder). A dedupe passes
    # rows on with their partitions, so a window below it finds late exactly the
    # rows a window straight on the source finds late (merged into one partition, the fast
    # partitions' times would make the lagging one's rows late).
    data = _register_readings()

    def run(dedupe: bool):
        flow = ps.Flow("lagging")
        s = flow.source(Lagging(data, batch_size), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="1m"))
        keyed = s.key_by("meter_id").dedupe("2h").key_by("meter_id") if dedupe else s.key_by("meter_id")
        w = keyed.window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count())
        w.sink(ps.sinks.Collect("out"))
        w.late().sink(ps.sinks.Collect("late"))
        return flow.run()

    plain, deduped = run(False), run(True)
    assert len(plain["late"]) > 0 and len(plain["out"]) > 100
    for name in ("out", "late"):
        cols = sorted(plain[name].columns)
        assert sorted(zip(*(deduped[name][c].tolist() for c in cols))) == \
            sorted(zip(*(plain[name][c].tolist() for c in cols))), name


def test_windows_below_an_operator_that_makes_rows_follow_its_watermark():
    # register_deltas releases its rows in time order as its watermark (the lagging partition's)
    # passes them, and passes that watermark on: the window below fires as it goes, finds none
    # of them late, and counts every delta once.
    data = _register_readings()
    fired = []
    read = {"rows": 0}

    def counted(b):
        read["rows"] += len(b)
        return b

    def stamped(b):
        fired.append(read["rows"])
        return b

    flow = ps.Flow("lagging-registers")
    s = flow.source(Lagging(data, 500), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="5m")).map(counted)
    deltas = s.key_by("meter_id").register_deltas("register", out="used")
    w = deltas.window(ps.windows.Tumbling("1h")).aggregate(used=ps.agg.sum("used"), n=ps.agg.count())
    w.map(stamped).sink(ps.sinks.Collect("out"))
    w.late().sink(ps.sinks.Collect("late"))
    deltas.late().sink(ps.sinks.Collect("unordered"))
    res = flow.run()
    assert len(res["late"]) == 0
    assert min(fired) < len(data["ts"]) / 2  # fired while the source was read
    # A delta per reading after a meter's first, but for the readings too late to put in order.
    in_order = len(data["ts"]) - len(res["unordered"]) - len(np.unique(data["meter_id"]))
    assert int(res["out"]["n"].sum()) == in_order
