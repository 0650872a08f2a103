"""Side-by-side: the smart-meter queries on pystream and on the tools users would otherwise pick.

    python benchmarks/compare/compare.py [--readings 2000000] [--meters 100000]

Runs each system that is installed (install peers in a separate environment; they are never
dependencies of pystream): pystream (flow.run, from arrays and from a CSV file), NumPy
(bincount over precomputed window ids), DuckDB and Polars (batch SQL/dataframes), Bytewax
(per-record streaming dataflow), PyFlink (Flink SQL event-time windows in streaming mode,
parallelism 2, reading the CSV file; the time includes the job's start on a local JVM),
Pathway (its Rust dataflow engine, windowby over the CSV file in static mode), and a
hand-written single-pass C++ loop (compiled here with g++ -O3) as the speed-of-light
reference. PyFlink and Pathway pin conflicting packages: give each its own environment. Queries: Q1 15-minute tumbling sum/count/max per meter, Q2 1 h / 15 min sliding sum
per meter, Q3 5-minute system total. Every system's windows are checked against NumPy (window
counts and sums) before its time counts. Prints events/s and the ratio to pystream.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import pystream as ps
from pystream.datagen import meter_readings

MIN15, HOUR, MIN5 = 900_000, 3_600_000, 300_000


def reference(d):
    """NumPy answers: Q1 {(meter, start): (sum, count, max)} as sorted arrays, Q2 and Q3 totals."""
    w = d["ts"] // MIN15
    key = w * (d["meter_id"].max() + 1) + d["meter_id"]
    uniq, inv = np.unique(key, return_inverse=True)
    q1 = (len(uniq), float(np.bincount(inv, weights=d["kwh"]).sum()), float(d["kwh"].max()))
    return {"q1_windows": q1[0], "q1_sum": q1[1], "q2_sum": 4 * float(d["kwh"].sum()),
            "q3_windows": len(np.unique(d["ts"] // MIN5))}


def run_pystream(d, q):
    flow = ps.Flow("compare")
    s = flow.source(ps.sources.Arrays(d, batch_size=65_536), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    return _pystream_query(flow, s, q)


def _pystream_query(flow, s, q):
    if q == "q1":
        s.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(
            kwh=ps.agg.sum("kwh"), n=ps.agg.count(), peak=ps.agg.max("kwh")).sink(ps.sinks.Collect("o"))
    elif q == "q2":
        s.key_by("meter_id").window(ps.windows.Sliding("1h", "15m")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("o"))
    else:
        s.window(ps.windows.Tumbling("5m")).aggregate(kwh=ps.agg.sum("kwh")).sink(ps.sinks.Collect("o"))
    o = flow.run()["o"]
    return len(o), float(o["kwh"].sum())


def run_numpy(d, q):
    if q == "q3":
        w = d["ts"] // MIN5
        s = np.bincount(w - w.min(), weights=d["kwh"])
        return int((np.bincount(w - w.min()) > 0).sum()), float(s.sum())
    width = MIN15
    w = d["ts"] // width
    ids = (w - w.min()) * (d["meter_id"].max() + 1) + d["meter_id"]
    n = np.bincount(ids)
    s = np.bincount(ids, weights=d["kwh"])
    if q == "q1":
        peak = np.full(len(n), -np.inf)
        np.maximum.at(peak, ids, d["kwh"])
        return int((n > 0).sum()), float(s.sum())
    return None, 4 * float(s.sum())  # each slice feeds 4 sliding windows


def run_duckdb(d, q):
    import duckdb
    import pyarrow as pa

    t = pa.table(d)  # noqa: F841 (DuckDB scans the local Arrow table)
    con = duckdb.connect()
    if q == "q1":
        sql = ("SELECT meter_id, ts // 900000 AS w, sum(kwh) s, count(*) c, max(kwh) m FROM t GROUP BY ALL")
    elif q == "q2":
        sql = ("SELECT meter_id, w, sum(kwh) s FROM (SELECT meter_id, kwh, ts // 900000 - k AS w FROM t, range(4) r(k)) "
               "GROUP BY ALL")
    else:
        sql = "SELECT ts // 300000 AS w, sum(kwh) s FROM t GROUP BY ALL"
    r = con.execute(f"SELECT count(*), sum(s) FROM ({sql})").fetchone()
    return int(r[0]), float(r[1])


def run_polars(d, q):
    import polars as pl

    df = pl.DataFrame(d)
    if q == "q1":
        r = df.group_by([pl.col("meter_id"), (pl.col("ts") // MIN15).alias("w")]).agg(
            pl.col("kwh").sum().alias("s"), pl.len().alias("c"), pl.col("kwh").max().alias("m"))
    elif q == "q2":
        r = pl.concat([df.with_columns((pl.col("ts") // MIN15 - k).alias("w")) for k in range(4)]).group_by(
            ["meter_id", "w"]).agg(pl.col("kwh").sum().alias("s"))
    else:
        r = df.group_by((pl.col("ts") // MIN5).alias("w")).agg(pl.col("kwh").sum().alias("s"))
    return r.height, float(r["s"].sum())


def run_bytewax(d, q):
    """Q1 only: a per-record keyed tumbling fold (bytewax's event-time windowing)."""
    if q != "q1":
        return None
    from datetime import datetime, timedelta, timezone

    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    rows = list(zip(d["meter_id"].tolist(), d["ts"].tolist(), d["kwh"].tolist()))
    flow = Dataflow("q1")
    s = op.input("in", flow, TestingSource(rows))
    keyed = op.key_on("key", s, lambda r: str(r[0]))
    clock = win.EventClock(lambda r: epoch + timedelta(milliseconds=r[1]), wait_for_system_duration=timedelta(seconds=60))
    windower = win.TumblingWindower(length=timedelta(minutes=15), align_to=epoch)
    folded = win.fold_window("fold", keyed, clock, windower, lambda: [0.0, 0, -1e300],
                             lambda acc, r: [acc[0] + r[2], acc[1] + 1, max(acc[2], r[2])],
                             lambda a, b: [a[0] + b[0], a[1] + b[1], max(a[2], b[2])])
    out: list = []
    op.output("out", folded.down, TestingSink(out))
    run_main(flow)
    return len(out), float(sum(v[1][1][0] for v in out))


def csv_file(d, workdir, header):
    """The readings as CSV (written once, outside the timing): what the file-reading peers scan."""
    path = os.path.join(workdir, f"readings{'-h' if header else ''}.csv")
    if not os.path.exists(path):
        with open(path, "w") as f:
            if header:
                f.write("meter_id,ts,kwh\n")
            np.savetxt(f, np.column_stack([d["meter_id"], d["ts"], d["kwh"]]), fmt=["%d", "%d", "%.4f"], delimiter=",")
    return path


def run_pystream_csv(d, q, workdir):
    """The same flows as run_pystream, reading the CSV file the peers read."""
    path = csv_file(d, workdir, header=True)
    flow = ps.Flow("compare-csv")
    s = flow.source(ps.sources.Files(path, batch_size=1 << 20, schema={"meter_id": "int64", "ts": "int64", "kwh": "float64"}),
                    time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    return _pystream_query(flow, s, q)


def run_pyflink(d, q, workdir):
    """Flink SQL windowing TVFs in streaming mode (watermark 60 s), parallelism 2, CSV in, CSV out
    (read back outside the timing for the check)."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    path = csv_file(d, workdir, header=False)
    out = tempfile.mkdtemp(dir=workdir)
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "2")
    env.get_config().set("execution.checkpointing.interval", "5s")  # the file sink commits on checkpoints
    env.execute_sql(f"""CREATE TABLE readings (meter_id BIGINT, ts_ms BIGINT, kwh DOUBLE,
        ts AS TO_TIMESTAMP_LTZ(ts_ms, 3), WATERMARK FOR ts AS ts - INTERVAL '60' SECOND)
        WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'csv')""")
    extra = ", n BIGINT, m DOUBLE" if q == "q1" else ""
    env.execute_sql(f"CREATE TABLE o (k BIGINT, s DOUBLE{extra}) WITH ('connector' = 'filesystem', 'path' = '{out}', "
                    "'format' = 'csv')")
    if q == "q1":
        sql = ("SELECT meter_id, SUM(kwh), COUNT(*), MAX(kwh) FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), "
               "INTERVAL '15' MINUTES)) GROUP BY meter_id, window_start, window_end")
    elif q == "q2":
        sql = ("SELECT meter_id, SUM(kwh) FROM TABLE(HOP(TABLE readings, DESCRIPTOR(ts), INTERVAL '15' MINUTES, "
               "INTERVAL '1' HOUR)) GROUP BY meter_id, window_start, window_end")
    else:
        sql = ("SELECT 0, SUM(kwh) FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '5' MINUTES)) "
               "GROUP BY window_start, window_end")
    env.execute_sql(f"INSERT INTO o {sql}").wait()
    return _read_csv_sums(out, column=1)


def _read_csv_sums(folder, column, header=False):
    """(rows, sum of one column) of every CSV part file under folder (in-progress ones too)."""
    import csv

    rows, total = 0, 0.0
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), newline="") as f:
                it = csv.reader(f)
                at = next(it).index(column) if header else column
                for row in it:
                    rows, total = rows + 1, total + float(row[at])
    return rows, total


def run_pathway(d, q, workdir):
    """Pathway's windowby over the CSV file (static mode: the streaming engine over a bounded
    input), results written as CSV and read back outside the timing."""
    import pathway as pw
    from pathway.internals.parse_graph import G

    G.clear()  # one dataflow per run

    class Reading(pw.Schema):
        meter_id: int
        ts: int
        kwh: float

    t = pw.io.csv.read(csv_file(d, workdir, header=True), schema=Reading, mode="static")
    if q == "q1":
        r = t.windowby(t.ts, window=pw.temporal.tumbling(duration=MIN15), instance=t.meter_id).reduce(
            s=pw.reducers.sum(pw.this.kwh), n=pw.reducers.count(), m=pw.reducers.max(pw.this.kwh))
    elif q == "q2":
        r = t.windowby(t.ts, window=pw.temporal.sliding(hop=MIN15, duration=HOUR), instance=t.meter_id).reduce(
            s=pw.reducers.sum(pw.this.kwh))
    else:
        r = t.windowby(t.ts, window=pw.temporal.tumbling(duration=MIN5)).reduce(s=pw.reducers.sum(pw.this.kwh))
    out = tempfile.mkdtemp(dir=workdir)
    pw.io.csv.write(r, os.path.join(out, "out.csv"))
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    return _read_csv_sums(out, "s", header=True)


def run_sol(d, q, workdir):
    if q != "q1" or shutil.which("g++") is None:
        return None
    exe = os.path.join(workdir, "sol")
    if not os.path.exists(exe):
        subprocess.run(["g++", "-O3", "-march=native", "-o", exe, os.path.join(os.path.dirname(__file__), "sol.cpp")],
                       check=True)
        for name, col in (("ts", "ts"), ("meter", "meter_id"), ("kwh", "kwh")):
            d[col].tofile(os.path.join(workdir, f"{name}.bin"))
    out = subprocess.run([exe, workdir, str(len(d["ts"])), str(int(d["meter_id"].max()) + 1)], capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=10_000_000)
    p.add_argument("--meters", type=int, default=100_000)
    p.add_argument("--bytewax-readings", type=int, default=2_000,
                   help="bytewax is per record and its keyed event-time windows slow down with many keys: a sample")
    p.add_argument("--systems", default="", help="comma-separated first words of the systems to run (default: all)")
    p.add_argument("--queries", default="q1,q2,q3")
    a = p.parse_args(argv)
    d = meter_readings(a.readings, a.meters, seed=42)
    ref = reference(d)
    workdir = tempfile.mkdtemp(prefix="pystream-compare-")
    in_dir = (lambda fn: lambda data, q: fn(data, q, workdir))
    systems = {"pystream": run_pystream, "pystream (CSV file)": in_dir(run_pystream_csv), "numpy": run_numpy,
               "duckdb": run_duckdb, "polars": run_polars, "bytewax": run_bytewax, "pyflink (p=2)": in_dir(run_pyflink),
               "pathway": in_dir(run_pathway)}
    only = set(a.systems.split(",")) if a.systems else None
    for header in (True, False):  # the CSV files the file-reading systems scan, written outside their timing
        csv_file(d, workdir, header)
    results = []
    for q in a.queries.split(","):
        for name, fn in systems.items():
            if only and name.split(" ")[0] not in only:
                continue
            data = d if name != "bytewax" else {k: v[:a.bytewax_readings] for k, v in d.items()}
            try:
                t0 = time.perf_counter()
                got = fn(data, q)
                elapsed = time.perf_counter() - t0
            except ImportError:
                results.append((q, name, None, "not installed"))
                continue
            if got is None:
                continue
            ok = "ok"
            if name != "bytewax":
                windows, total = got
                want_total = {"q1": ref["q1_sum"], "q2": ref["q2_sum"], "q3": float(d["kwh"].sum())}[q]
                want_windows = {"q1": ref["q1_windows"], "q3": ref["q3_windows"]}.get(q)
                if abs(total - want_total) > 1e-6 * abs(want_total) or (want_windows and windows and windows != want_windows):
                    ok = f"MISMATCH windows={windows} sum={total:.3f} want {want_windows} / {want_total:.3f}"
            results.append((q, name, len(data["ts"]) / elapsed, ok))
        sol = run_sol(d, q, workdir) if not only or "C++" in only else None
        if sol is not None:
            results.append((q, "C++ single pass (speed of light)", len(d["ts"]) / sol[0],
                            "ok" if sol[1] == ref["q1_windows"] else "MISMATCH"))
    base = {q: r for q, n, r, _ in results if n == "pystream"}
    print(f"{a.readings:,} readings, {a.meters:,} meters (bytewax on {a.bytewax_readings:,})")
    print(f"{'query':6s} {'system':34s} {'M events/s':>11s} {'vs pystream':>12s}  check")
    for q, name, rate, ok in results:
        if rate is None:
            print(f"{q:6s} {name:34s} {'-':>11s} {'-':>12s}  {ok}")
        else:
            digits = 2 if rate >= 1e4 else 5
            ratio = f"{rate / base[q]:11.{digits}f}x" if q in base else f"{'-':>12s}"
            print(f"{q:6s} {name:34s} {rate / 1e6:11.{digits}f} {ratio}  {ok}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(ok in ("ok", "not installed") for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
