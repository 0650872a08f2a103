"""Bad input gets a clear error that names the rule and the values; nothing accepted is lost."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

import pystream as ps
from pystream.operators import WindowAggregateOperator


def run_flow(data, time=None, keys=("m",), window=None, aggs=None):
    flow = ps.Flow("bad")
    src = flow.source(ps.sources.Arrays(data), time=time or ps.EventTime("t", unit="ms"))
    s = src.key_by(*keys) if keys else src
    s.window(window or ps.windows.Tumbling("15m")).aggregate(**(aggs or {"n": ps.agg.count()})).sink(ps.sinks.Collect("o"))
    return flow.run()


GOOD = {"m": np.array([1, 2]), "t": np.array([0, 1000]), "v": np.array([1.0, 2.0])}


@pytest.mark.parametrize("args, exc, match", [
    (("0s",), ValueError, r"window size must be > 0, got '0s'"),
    (("-5m",), ValueError, r"window size must be >= 0, got '-5m'"),
    (("15 minutes",), ValueError, r"cannot parse duration '15 minutes'"),
    ((15,), TypeError, r"got the bare number 15; give a unit, e.g. '15ms'"),
    ((1.5,), TypeError, r"expected a duration string like '15m' or a datetime.timedelta, got float"),
    (("100000000d",), ValueError, r"must be at most 2\^60 ns"),
])
def test_invalid_tumbling_parameters(args, exc, match):
    with pytest.raises(exc, match=match):
        ps.windows.Tumbling(*args)


@pytest.mark.parametrize("size, slide, match", [
    ("15m", "0s", r"slide must be > 0 and <= size, got slide=0s size=15m"),
    ("15m", "20m", r"slide must be > 0 and <= size, got slide=20m size=15m; a slide larger than the size would leave gaps"),
])
def test_invalid_sliding_parameters(size, slide, match):
    with pytest.raises(ValueError, match=match):
        ps.windows.Sliding(size, slide)


def test_windows_are_immutable_and_accept_timedelta():
    w = ps.windows.Tumbling(dt.timedelta(minutes=15))
    assert w == ps.windows.Tumbling("15m") and hash(w) == hash(ps.windows.Tumbling("900s"))
    with pytest.raises(AttributeError, match="immutable"):
        w.size = 5


def test_float_time_column_is_refused():
    with pytest.raises(TypeError, match=r"time column 't' must be datetime64 or integer with a declared unit, got dtype float64"):
        run_flow({**GOOD, "t": np.array([0.0, 1.0])})


def test_integer_time_needs_a_unit():
    with pytest.raises(ValueError, match=r"time column 't' is int64; declare its unit, e.g. EventTime\('t', unit='ms'\)"):
        run_flow(GOOD, time=ps.EventTime("t"))


def test_nat_timestamp_is_refused_with_its_row():
    t = np.array(["2025-01-01T00:00", "NaT"], dtype="datetime64[ms]")
    with pytest.raises(ValueError, match=r"time column 't' has a missing timestamp \(NaT\) at row 1"):
        run_flow({**GOOD, "t": t}, time=ps.EventTime("t"))


def test_timestamp_outside_supported_range_names_row_and_value():
    t = np.array([0, 4_102_444_800_000_000], dtype=np.int64)  # ms: year ~130000, a unit mistake
    with pytest.raises(ValueError, match=r"time column 't': timestamp 4102444800000000 at row 1 is outside the supported range"):
        run_flow({**GOOD, "t": t})


@pytest.mark.parametrize("col, match", [
    ("time", r"unknown time column 'time'; the batch has \['m', 't', 'v'\]"),
])
def test_unknown_time_column(col, match):
    with pytest.raises(KeyError, match=match):
        run_flow(GOOD, time=ps.EventTime(col, unit="ms"))


def test_unknown_key_column():
    with pytest.raises(KeyError, match=r"unknown key column 'meter'; the batch has \['m', 't', 'v'\]"):
        run_flow(GOOD, keys=("meter",))


def test_unknown_value_column():
    with pytest.raises(KeyError, match=r"aggregate kwh=sum\('kwh'\): unknown column 'kwh'"):
        run_flow(GOOD, aggs={"kwh": ps.agg.sum("kwh")})


def test_non_numeric_value_column():
    with pytest.raises(TypeError, match=r"aggregate s=sum\('m'\) needs a numeric column, got dtype <U1"):
        run_flow({**GOOD, "m": np.array(["a", "b"])}, aggs={"s": ps.agg.sum("m")})


def test_mismatched_column_lengths():
    with pytest.raises(ValueError, match=r"columns must have equal lengths: 't' has 3 rows, 'm' has 2"):
        ps.sources.Arrays({"m": np.array([1, 2]), "t": np.array([1, 2, 3])})


def test_float_keys_are_refused():
    with pytest.raises(TypeError, match=r"key column 'm' is float64; float keys are not supported"):
        run_flow({**GOOD, "m": np.array([1.0, 2.0])})


def test_mixed_type_object_keys_are_refused():
    with pytest.raises(ValueError, match=r"key column 'm' mixes types: row 1 holds int 2, earlier keys are str"):
        run_flow({**GOOD, "m": np.array(["a", 2], dtype=object)})


def test_missing_object_key_is_refused():
    with pytest.raises(ValueError, match=r"key column 'm' has a missing value \(None\) at row 1"):
        run_flow({**GOOD, "m": np.array(["a", None], dtype=object)})


def test_aggregate_name_collision():
    with pytest.raises(ValueError, match=r"aggregate output name 'window_start' collides"):
        run_flow(GOOD, aggs={"window_start": ps.agg.count()})


def test_window_without_time():
    flow = ps.Flow("x")
    src = flow.source(ps.sources.Arrays(GOOD))
    with pytest.raises(ValueError, match=r"window\(\) needs event time"):
        src.key_by("m").window(ps.windows.Tumbling("1m"))


def test_int_time_window_not_in_the_unit():
    with pytest.raises(ValueError, match=r"window parameter 500ms is not a whole number of s"):
        run_flow(GOOD, time=ps.EventTime("t", unit="s"), window=ps.windows.Tumbling("500ms"))


def test_bad_negative_ddof_and_batch_size():
    with pytest.raises(ValueError, match=r"ddof must be an int >= 0, got -1"):
        ps.agg.var("v", ddof=-1)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        ps.sources.Arrays(GOOD, batch_size=0)


def test_duplicate_sink_names():
    flow = ps.Flow("x")
    s = flow.source(ps.sources.Arrays(GOOD))
    s.sink(ps.sinks.Collect("a"))
    s.sink(ps.sinks.Collect("a"))
    with pytest.raises(ValueError, match=r"two sinks share the name 'a'"):
        flow.run()


def test_engine_refuses_events_after_flush():
    op = WindowAggregateOperator(ps.windows.Tumbling("1m"), {"n": ps.agg.count()}, ps.EventTime("t", unit="ms"), ("m",))
    op.process(ps.Batch(GOOD))
    op.finish()
    with pytest.raises(ValueError, match="has been flushed at end of input"):
        op.process(ps.Batch(GOOD))


@pytest.mark.parametrize("bad", [
    {"t": np.array(["2025-01-01", "NaT"], dtype="datetime64[ms]")},
    {"t": np.array([0, 2**62], dtype=np.int64)},
    {"m": np.array(["x", None], dtype=object)},
    {"v": np.array(["1", "2"])},
])
def test_rejected_batch_loses_nothing_already_accepted(bad):
    """batch1, a bad batch (raises), batch2 == batch1, batch2 with the bad one never sent."""
    def op():
        unit = "ms" if bad.get("t", np.zeros(1)).dtype.kind != "M" else None
        return WindowAggregateOperator(ps.windows.Tumbling("1s"), {"n": ps.agg.count(), "v": ps.agg.sum("v")},
                                       ps.EventTime("t", unit=unit), ("m",))
    def batch(start, m=("a", "b", "a")):
        t = np.array([start, start + 400, start + 900], dtype=np.int64)
        if "t" in bad and bad["t"].dtype.kind == "M":
            t = t.astype("datetime64[ms]")
        return ps.Batch({"m": np.array(m, dtype=object), "t": t, "v": np.array([1.0, 2.0, 3.0])})
    bad_batch = ps.Batch({**{k: v[:2] for k, v in batch(5000).to_dict().items()}, **bad})
    a, b = op(), op()
    ra = [a.process(batch(0))[0]]
    with pytest.raises((ValueError, TypeError)):
        a.process(bad_batch)
    ra += [a.process(batch(2000))[0], a.finish()]
    rb = [b.process(batch(0))[0], b.process(batch(2000))[0], b.finish()]
    assert ps.Batch.concat(ra) == ps.Batch.concat(rb)
