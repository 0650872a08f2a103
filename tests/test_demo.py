"""The demo (README's first command) against an independent NumPy/pandas computation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import pandas as pd

import pystream as ps
from pystream import demo

MIN15 = 900_000
LATENESS = 2 * 3_600_000
OOO = 60_000


def test_demo_outputs_match_an_independent_computation(tmp_path):
    out = demo.run(200_000, 2_000, seed=11, out=str(tmp_path))
    data = pd.DataFrame(out["data"])
    # Invalid: the poisoned clocks (decades ahead); everything else is judged by the watermark
    # rule computed here vectorially: W before event i = max(ts of earlier valid events) - ooo - 1.
    invalid = data.ts > data.ts.median() + 365 * 24 * 3_600_000
    w_all = np.maximum.accumulate(data.ts.where(~invalid, np.iinfo(np.int64).min).to_numpy()) - OOO - 1
    w_all = np.concatenate([[np.iinfo(np.int64).min // 2], w_all[:-1]])  # W before each reading
    dup = data.duplicated(["meter_id", "ts"])  # re-sends: the first copy (by arrival) counts
    res = out["outputs"]
    assert sorted(res["duplicates"]["ts"].tolist()) == sorted(data.ts[dup & ~invalid].tolist())
    valid = data[~invalid & ~dup]
    w_before = w_all[(~invalid & ~dup).to_numpy()]
    end = (valid.ts.to_numpy() // MIN15 + 1) * MIN15
    late = end - 1 + LATENESS <= w_before
    got_invalid = res["invalid"]["ts"].tolist() if len(res["invalid"]) else []  # no part file when none
    assert sorted(got_invalid) == sorted(data.ts[invalid].tolist())
    assert len(res["late"]) == int(late.sum()) > 0
    kept = valid[~late]
    want = kept.assign(window_start=kept.ts // MIN15 * MIN15).groupby(["meter_id", "window_start"]).kwh.agg(["sum", "size"])
    got = out["usage"].to_pandas().set_index(["meter_id", "window_start"]).sort_index()
    assert got.index.tolist() == want.index.tolist()
    np.testing.assert_allclose(got["kwh"], want["sum"], rtol=1e-12)
    assert got["readings"].tolist() == want["size"].tolist()
    load = out["load"]
    # The 5-minute operator judges lateness against its own (earlier) window ends.
    late5 = (valid.ts.to_numpy() // 300_000 + 1) * 300_000 - 1 + LATENESS <= w_before
    kept5 = valid[~late5]
    want_load = kept5.assign(w=kept5.ts // 300_000 * 300_000).groupby("w").kwh.sum()
    # Outage alerts: meters whose readings stopped arriving for an hour of event time. Each
    # alert names a real reading of that meter, one hour before the alert.
    alerts = out["alerts"].to_pandas()
    assert len(alerts) > 0
    assert (alerts.alert_at_ms - alerts.silent_since_ms == 3_600_000).all()
    readings_of = data.groupby("meter_id").ts.apply(set)
    assert all(row.silent_since_ms in readings_of[row.meter_id] for row in alerts.itertuples())
    metrics = {m["name"]: m for m in out["result"].metrics.values()}
    assert metrics["Tumbling('5m') over all keys"]["late"] == int(late5.sum())
    np.testing.assert_allclose(load["kwh"], want_load.to_numpy(), rtol=1e-12)
    check_bills(valid, w_before, out["bills"].to_pandas())
    check_registers(valid, w_before, res["register_usage_1h"])
    assert all(p.endswith(".parquet") for p in ps.sinks.Files.parts(str(tmp_path / "usage_15m")))
    assert len(out["result"].checkpoints) > 1


def check_bills(valid, w_before, bills):
    """Local-day usage and time-of-use cost per meter, with pandas' own time-zone handling."""
    parts = []
    for zone, rows in valid.assign(w=w_before).groupby("tz"):
        utc = pd.to_datetime(rows.ts, unit="ms", utc=True)
        local = utc.dt.tz_convert(zone)
        day = local.dt.floor("D", ambiguous=True, nonexistent="shift_forward")
        start = day.dt.tz_convert("UTC")
        end = (day.dt.tz_localize(None) + pd.Timedelta(days=1)).dt.tz_localize(zone).dt.tz_convert("UTC")
        to_ms = lambda s: (s - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)  # noqa: E731
        hour, weekday = local.dt.hour, local.dt.day_of_week
        price = np.where((weekday < 5) & (hour >= 17) & (hour < 21), 0.40,
                         np.where((weekday < 5) & (hour >= 7) & (hour < 17), 0.25, 0.15))
        parts.append(rows.assign(start=to_ms(start), end=to_ms(end), cost=rows.kwh * price,
                                 peak=np.where(price == 0.40, rows.kwh, 0.0)))
    rows = pd.concat(parts)
    kept = rows[~(rows.end - 1 + LATENESS <= rows.w)]
    want = kept.groupby(["meter_id", "start"]).agg(kwh=("kwh", "sum"), cost=("cost", "sum"), peak=("peak", "sum"),
                                                  end=("end", "first"))
    got = bills.set_index(["meter_id", "window_start"]).sort_index()
    assert got.index.tolist() == want.index.tolist() and len(got) > 0
    assert got.window_end.tolist() == want.end.tolist()
    np.testing.assert_allclose(got.kwh, want.kwh, rtol=1e-12)
    np.testing.assert_allclose(got.cost, want.cost, rtol=1e-9)
    np.testing.assert_allclose(got.peak_kwh, want.peak, rtol=1e-9, atol=1e-12)


def check_registers(valid, w_before, register_hourly):
    """Energy from the cumulative registers: per meter, the register advance between the first
    and last reading that arrived in order (ahead of the watermark), wrapping at 100,000."""
    in_order = valid[valid.ts.to_numpy() > w_before].sort_values(["meter_id", "ts"], kind="stable")
    step = in_order.groupby("meter_id").register.diff().dropna() % 100_000
    np.testing.assert_allclose(register_hourly["kwh"].sum(), step.sum(), rtol=1e-9)


def test_cli_runs_the_demo(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pystream", "demo", "--readings", "20000", "--meters", "200", "--serve",
                        "127.0.0.1:0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import re

    assert "dashboard http://127.0.0.1:" in r.stdout and "local-day bills" in r.stdout
    accounted = re.search(r"accounted for\s+([\d,]+) of ([\d,]+)", r.stdout)
    assert accounted and accounted.group(1) == accounted.group(2) and int(accounted.group(2).replace(",", "")) >= 20_000


def test_demo_in_memory_equals_checkpointed_files(tmp_path):
    mem = demo.run(50_000, 500, seed=2, out=None)
    files = demo.run(50_000, 500, seed=2, out=str(tmp_path))
    for name in ("usage_15m", "late", "system_5m"):
        assert files["outputs"][name].to_pandas().equals(mem["outputs"][name].to_pandas()), name


def test_demo_into_postgres_and_redis(tmp_path):
    """The demo's --postgres/--redis flags: results upserted into PostgreSQL (every reading
    accounted for, read back from the tables), 15-minute usage mirrored into Redis hashes."""
    from conftest import require_service

    require_service("127.0.0.1", 5432, "PostgreSQL")
    require_service("127.0.0.1", 6379, "Redis")
    import redis

    dsn, url = "postgresql://postgres@127.0.0.1:5432/test", "redis://127.0.0.1:6379/0"
    out = demo.run(30_000, 300, seed=5, out=str(tmp_path), postgres=dsn, redis=url)  # raises if readings were lost
    usage = out["outputs"]["usage_15m"]
    assert len(usage) == len(out["usage"]) > 0  # one row per (meter, window): upserts keep the final one
    r = redis.Redis.from_url(url)
    m, w, k = int(usage["meter_id"][0]), int(usage["window_start"][0]), float(usage["kwh"][0])
    assert float(r.hget(f"pystream:usage:{m}", str(w))) == pytest.approx(k)


def test_demo_through_kafka():
    """--kafka mock: the fleet publishes to a Kafka topic (librdkafka's mock cluster) and the
    pipeline reads it back through ps.sources.Kafka; every reading is still accounted for."""
    pytest.importorskip("confluent_kafka")
    out = demo.run(20_000, 200, seed=3, out=None, kafka="mock")  # raises if a reading went missing
    assert len(out["usage"]) > 0 and out["result"].metrics
