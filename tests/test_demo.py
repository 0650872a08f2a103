"""The demo (README's first command) against an independent NumPy/pandas computation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
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
    valid = data[~invalid]
    w_before = np.maximum.accumulate(valid.ts.to_numpy()) - OOO - 1
    w_before = np.concatenate([[np.iinfo(np.int64).min // 2], w_before[:-1]])
    end = (valid.ts.to_numpy() // MIN15 + 1) * MIN15
    late = end - 1 + LATENESS <= w_before
    res = out["outputs"]
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
    assert all(p.endswith(".parquet") for p in ps.sinks.Files.parts(str(tmp_path / "usage_15m")))
    assert len(out["result"].checkpoints) > 1


def test_cli_runs_the_demo(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pystream", "demo", "--readings", "20000", "--meters", "200"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import re

    accounted = re.search(r"accounted for\s+([\d,]+) of ([\d,]+)", r.stdout)
    assert accounted and accounted.group(1) == accounted.group(2) and int(accounted.group(2).replace(",", "")) >= 20_000


def test_demo_in_memory_equals_checkpointed_files(tmp_path):
    mem = demo.run(50_000, 500, seed=2, out=None)
    files = demo.run(50_000, 500, seed=2, out=str(tmp_path))
    for name in ("usage_15m", "late", "system_5m"):
        assert files["outputs"][name].to_pandas().equals(mem["outputs"][name].to_pandas()), name
