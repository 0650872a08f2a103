"""`pystream demo`: a smart-meter pipeline on embedded defaults.

A synthetic fleet (commercial meters every 5 min, residential every 15 min, daily load
curves, transmission delays, three time zones, cumulative registers) plus the trouble real
fleets have: meters that were offline and send their backlog late, re-sent duplicates and a
few clocks far in the future. The flow drops duplicates, computes per-meter 15-minute, hourly
and local-day usage with a time-of-use bill (peak/shoulder/off-peak by local time, DST
correct), usage from the registers, system load every 5 minutes and a rolling hour, outage
alerts, reports late, invalid and duplicate readings, and checks that every reading is
accounted for.

Embedded defaults: checkpoints in OUT/checkpoints and exactly-once output as part files in
OUT/<result>/ (Parquet when pyarrow is installed, else CSV); `--resume` continues an
interrupted run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np

import pystream as ps

HOUR_MS = 3_600_000


def fleet(n_readings: int, n_meters: int, seed: int) -> ps.sources.MeterSimulator:
    """A simulated fleet of about `n_readings` readings: whole 15-minute blocks of `n_meters`
    meters (20% commercial), 0.5% of readings held by offline devices for up to 3 h, 0.1%
    re-sent, a few clocks decades ahead."""
    per_block = int(n_meters * 0.2) * 3 + (n_meters - int(n_meters * 0.2))
    blocks = max(1, -(-n_readings // per_block))
    return ps.sources.MeterSimulator(n_meters, commercial_share=0.2, duration=f"{blocks * 15}m", seed=seed,
                                     offline_share=0.005, max_backlog="3h", duplicate_share=0.001,
                                     future_share=0.000005)


#: Key columns per result when written to PostgreSQL (upserts keep each window's final row).
PG_KEYS = {"usage_15m": ("meter_id", "window_start"), "usage_1h": ("meter_id", "window_start"),
           "daily_bill": ("meter_id", "window_start"), "register_usage_1h": ("meter_id", "window_start"),
           "system_5m": ("window_start",), "system_rolling_1h": ("window_start",)}
RESULTS = ("usage_15m", "late", "invalid", "duplicates", "usage_1h", "daily_bill", "register_usage_1h",
           "register_anomalies", "register_late", "system_5m", "system_rolling_1h", "outage_alerts")
#: The demo's tariff: weekday peak 17-21 h, shoulder 7-17 h, off-peak otherwise (local time).
TARIFF = ps.meters.TimeOfUse(peak_hours=(17, 21), peak=0.40, shoulder_hours=(7, 17), shoulder=0.25, offpeak=0.15)
OUTAGE_AFTER = ps.parse_duration("1h")


def _arm_outage_timer(batch, ctx):
    """Every reading moves its meter's outage timer to (newest reading + 1 h)."""
    newest = np.full(len(ctx.keys), np.iinfo(np.int64).min)
    np.maximum.at(newest, ctx.row, ctx.ts)
    ctx.state["last_reading"] = np.maximum(ctx.state["last_reading"], newest)
    ctx.set_event_timer(ctx.state["last_reading"] + OUTAGE_AFTER)


def _outage(timers, ctx):
    """The watermark passed (last reading + 1 h): the meter has gone quiet."""
    if ctx.end_of_input:  # the simulation ended; that is not an outage
        return None
    return {"meter_id": timers["meter_id"], "silent_since_ms": ctx.state["last_reading"] // 1_000_000,
            "alert_at_ms": timers["timer"] // 1_000_000}


def price_readings(batch: ps.Batch) -> ps.Batch:
    """Each reading's cost under the time-of-use tariff in its meter's local time."""
    ts_ns = batch["ts"] * 1_000_000
    period = TARIFF.periods(ts_ns, batch["tz"])
    prices = np.array([TARIFF.offpeak, TARIFF.shoulder, TARIFF.peak])
    return batch.with_columns(cost=batch["kwh"] * prices[period], peak_kwh=np.where(period == 2, batch["kwh"], 0.0))


def _file_format() -> str:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "csv"
    return "parquet"


def build(source: ps.sources.Source, out: str | None = None, sink=None, redis: str | None = None) -> ps.Flow:
    """The demo flow; results go to Collect sinks, to exactly-once part files under `out`, or
    to `sink(name)`. Per-meter 15-minute and hourly usage and the 5-minute system load are
    queryable live ("usage", "usage_1h", "load")."""
    fmt = _file_format()

    if sink is None:
        def sink(name):
            return ps.sinks.Files(os.path.join(out, name), format=fmt, name=name) if out else ps.sinks.Collect(name)

    flow = ps.Flow("smart-meters")
    readings = flow.source(
        source,
        time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s", max_future="1d"),
    )
    clean = readings.key_by("meter_id").dedupe(horizon="6h")  # re-sends would count twice
    clean.side("duplicates").sink(sink("duplicates"))
    clean.invalid().sink(sink("invalid"))  # clocks more than a day ahead of the watermark
    priced = clean.map(price_readings)
    per_meter = priced.key_by("meter_id")
    usage = per_meter.window(ps.windows.Tumbling("15m"), allowed_lateness="2h").aggregate(
        kwh=ps.agg.sum("kwh"), readings=ps.agg.count(), peak=ps.agg.max("kwh"))
    usage.queryable("usage")
    usage.sink(sink("usage_15m"))
    if redis:  # dashboards: hashes usage:<meter> (field = window start) and a top list per window
        usage.sink(ps.sinks.Redis(redis, key="pystream:usage:{meter_id}", field="{window_start}", value="kwh",
                                  zset="pystream:top:{window_start}", name="pystream-demo-usage"))
    usage.late().sink(sink("late"))
    per_meter.window(ps.windows.Tumbling("1h"), allowed_lateness="2h").aggregate(
        kwh=ps.agg.sum("kwh")).queryable("usage_1h").sink(sink("usage_1h"))
    daily = per_meter.window(ps.windows.Calendar("day", tz_column="tz"), allowed_lateness="2h").aggregate(
        kwh=ps.agg.sum("kwh"), peak_kwh=ps.agg.sum("peak_kwh"), cost=ps.agg.sum("cost"))
    daily.queryable("daily_bill").sink(sink("daily_bill"))
    # The same energy from the cumulative registers (which wrap at 100,000 kWh).
    registers = clean.register_deltas("register", out="kwh", modulus=100_000)
    registers.side("anomalies").sink(sink("register_anomalies"))
    registers.late().sink(sink("register_late"))  # behind the watermark: cannot be put in order
    registers.window(ps.windows.Tumbling("1h"), allowed_lateness="2h").aggregate(
        kwh=ps.agg.sum("kwh")).sink(sink("register_usage_1h"))
    system = priced.unkeyed()
    system.window(ps.windows.Tumbling("5m"), allowed_lateness="2h").aggregate(
        kwh=ps.agg.sum("kwh"), readings=ps.agg.count()).queryable("load").sink(sink("system_5m"))
    system.window(ps.windows.Sliding("1h", "15m"), allowed_lateness="2h").aggregate(
        kwh=ps.agg.sum("kwh")).sink(sink("system_rolling_1h"))
    clean.process(_arm_outage_timer, state={"last_reading": np.int64(0)}, on_timer=_outage,
                  ttl="1d").sink(sink("outage_alerts"))
    return flow


def final_rows(batch: ps.Batch, keys: list[str]) -> ps.Batch:
    """The last emitted row of each (keys, window): late updates replace earlier rows."""
    cols = [batch[k] for k in keys] + [batch["window_start"]]
    if not len(batch):
        return batch
    order = np.lexsort(cols[::-1])
    sorted_cols = [c[order] for c in cols]
    last = np.ones(len(order), dtype=bool)
    same_next = np.ones(len(order) - 1, dtype=bool)
    for c in sorted_cols:
        same_next &= c[1:] == c[:-1]
    last[:-1] = ~same_next
    # lexsort is stable, so within a (keys, window) group the last row is the latest emission.
    return batch.take(order[last])


def _pg_has(dsn: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass(%s)", (f"pystream_demo_{name}",)).fetchone()[0] is not None


def _drop_demo_tables(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in RESULTS:
            conn.execute(f"DROP TABLE IF EXISTS pystream_demo_{name}")
            conn.execute(f"DROP TABLE IF EXISTS pystream_demo_{name}__pystream_stage")
        if conn.execute("SELECT to_regclass('pystream_epochs')").fetchone()[0] is not None:
            conn.execute("DELETE FROM pystream_epochs WHERE sink = ANY(%s)", (list(RESULTS),))


def _server(flow, address):
    """Serves the flow at `address`, or on a free port when that one is taken."""
    try:
        return flow.serve(address)
    except OSError:
        host = address.rpartition(":")[0] or "127.0.0.1"
        return flow.serve(f"{host}:0")


def via_kafka(sim: ps.sources.MeterSimulator, bootstrap: str) -> ps.sources.Source:
    """Publishes the fleet's readings to a Kafka topic (as meters would, keyed by meter) and
    returns a source reading them back; bootstrap "mock" starts librdkafka's mock cluster."""
    from confluent_kafka import Producer

    from .connectors_kafka import encode_json

    if bootstrap == "mock":
        via_kafka.cluster = Producer({"test.mock.num.brokers": 1, "log_level": 3})  # lives with the process
        md = via_kafka.cluster.list_topics(timeout=10)
        bootstrap = ",".join(f"{b.host}:{b.port}" for b in md.brokers.values())
    topic = f"pystream-demo-readings-{sim.seed}"
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000,
                  "log_level": 3})
    for batch in sim.batches():
        keys = batch["meter_id"].astype(str).tolist()
        for k, v in zip(keys, encode_json(batch)):
            while True:
                try:
                    p.produce(topic, key=k.encode(), value=v.encode())
                    break
                except BufferError:
                    p.poll(0.05)
    p.flush(120)
    print(f"published the readings to Kafka topic {topic!r} at {bootstrap}; reading them back from there")
    return ps.sources.Kafka(topic, bootstrap, batch_size=20_000, stop_at_end=True)


def run(n_readings: int, n_meters: int, seed: int, out: str | None, resume: bool = False,
        guarantee: str = "exactly_once", serve: str | None = None, progress: bool = False,
        postgres: str | None = None, redis: str | None = None, kafka: str | None = None,
        ray=None) -> dict:
    """The demo run; `ray`: on the Ray runtime, with that many window actors (an int) or as a
    ps.runtimes.Ray says (None: locally)."""
    if ray is not None and postgres:
        raise SystemExit("--ray writes part files (or keeps results in memory); --postgres runs locally")
    runtime = ps.runtimes.Ray(parallelism=ray) if isinstance(ray, int) else ray
    progress = progress and runtime is None  # the progress panel follows the local runtime
    sim = fleet(n_readings, n_meters, seed)
    print(f"pystream demo: simulating {n_meters:,} meters for {sim.blocks * 15 // 60} h {sim.blocks * 15 % 60} min "
          f"of event time (seed {seed}) ...")
    data = ps.Batch.concat(list(sim.batches())).to_dict()  # the same readings, for the summary and checks
    if out and not resume:
        for name in (*RESULTS, "checkpoints"):
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    pg_sink = None
    if postgres:
        if not out:
            raise SystemExit("--postgres needs --out DIR for its checkpoints")

        def pg_sink(name):
            return ps.sinks.Postgres(postgres, f"pystream_demo_{name}", key=PG_KEYS.get(name), name=name)

        if not resume:
            _drop_demo_tables(postgres)
    flow = build(via_kafka(sim, kafka) if kafka else sim, out=out, sink=pg_sink, redis=redis)
    server = _server(flow, serve) if serve else None
    if server is not None:
        print(f"live state while it runs: dashboard {server.url}/  query {server.url}/api/state/usage?key=42  "
              f"metrics {server.url}/metrics")
    t0 = time.perf_counter()
    if out:
        result = flow.run(checkpoints=os.path.join(out, "checkpoints"), resume=resume, guarantee=guarantee,
                          checkpoint_every=4, progress=progress, runtime=runtime)
        elapsed = time.perf_counter() - t0
        if postgres:
            outputs = {name: ps.sinks.Postgres.read(postgres, f"pystream_demo_{name}") if _pg_has(postgres, name)
                       else ps.Batch() for name in RESULTS}
        else:
            outputs = {name: ps.sinks.Files.read(os.path.join(out, name)) for name in RESULTS}
    else:
        result = flow.run(progress=progress, runtime=runtime)
        elapsed = time.perf_counter() - t0
        outputs = dict(result)
    usage = final_rows(outputs["usage_15m"], ["meter_id"])
    hourly = final_rows(outputs["usage_1h"], ["meter_id"])
    load = final_rows(outputs["system_5m"], [])
    late, invalid, dups = outputs["late"], outputs["invalid"], outputs["duplicates"]
    bills = final_rows(outputs["daily_bill"], ["meter_id"])
    accounted = int(usage["readings"].sum()) + len(late) + len(invalid) + len(dups)

    durable = (f", including {len(result.checkpoints)} checkpoints and {guarantee} commits of fsynced part files"
               if out else "")
    if runtime is not None:
        m = result.metrics["ray"]
        print(f"\non the Ray runtime: {runtime.parallelism} window actors, {m['rounds']:,} rounds, "
              f"{m['recoveries']} recoveries")
    print(f"\nran {len(data['ts']):,} readings through de-duplication, register deltas, 6 windowed aggregations "
          f"and outage detection in {elapsed:.2f} s ({len(data['ts']) / elapsed / 1e6:.1f} M readings/s{durable})")
    print(f"  15-minute usage rows     {len(usage):>12,}  (updates from late data: {int(outputs['usage_15m']['update'].sum()):,})")
    print(f"  hourly usage rows        {len(hourly):>12,}")
    print(f"  late readings (side out) {len(late):>12,}  (arrived after their 15-min window closed + 2 h)")
    for m in result.metrics.values():
        if m.get("events_in"):  # the local runtime's operators (Ray's metrics are its own)
            print(f"    late for {m['name']:<40s} {m['late']:>9,}")
    print(f"  invalid readings         {len(invalid):>12,}  (clock more than 1 day ahead of the watermark)")
    print(f"  duplicate readings       {len(dups):>12,}  (re-sent; dropped before any aggregation)")
    if len(bills):
        peak_share = float(bills["peak_kwh"].sum() / max(bills["kwh"].sum(), 1e-12))
        print(f"  local-day bills          {len(bills):>12,}  ({bills['kwh'].sum():,.1f} kWh, {bills['cost'].sum():,.2f} "
              f"at {TARIFF.peak}/{TARIFF.shoulder}/{TARIFF.offpeak} per kWh; {peak_share:.1%} at peak)")
    reg = outputs["register_usage_1h"]
    print(f"  energy from registers    {float(reg['kwh'].sum()) if len(reg) else 0.0:>12,.1f} kWh  "
          f"(interval readings: {float(usage['kwh'].sum()):,.1f} kWh; {len(outputs['register_anomalies']):,} "
          f"register anomalies, {len(outputs['register_late']):,} register reads too late to order)")
    alerts = outputs["outage_alerts"]
    print(f"  outage alerts            {len(alerts):>12,}  (meters silent for 1 h of event time; "
          f"{len(np.unique(alerts['meter_id'])) if len(alerts) else 0:,} meters)")
    print(f"  accounted for            {accounted:>12,} of {len(data['ts']):,}")
    peak = int(np.argmax(load["kwh"]))
    start = load["window_start"][peak].astype("datetime64[ms]")
    print(f"  system peak (5 min)      {load['kwh'][peak]:>12,.1f} kWh at {start} UTC")
    top = np.argsort(hourly["kwh"])[-3:][::-1]
    print("  top meter-hours          " + ", ".join(
        f"meter {hourly['meter_id'][i]} {hourly['kwh'][i]:.2f} kWh" for i in top))
    if postgres:
        print(f"\n{guarantee} results in PostgreSQL tables pystream_demo_* (windows upserted by key); "
              f"{len(result.checkpoints)} checkpoints in {out}/checkpoints")
    elif out:
        print(f"\n{guarantee} results in {out}/ ({_file_format()} part files per checkpoint epoch; "
              f"{len(result.checkpoints)} checkpoints in {out}/checkpoints"
              + (f", resumed from epoch {result.resumed_from}" if result.resumed_from is not None else "") + ")")
        print(f"read them with ps.sinks.Files.read('{out}/usage_15m'); inspect checkpoints with "
              f"'pystream checkpoints list {out}/checkpoints'")
    if server is not None:
        import sys

        if sys.stdin.isatty():
            input(f"\nfinal state at {server.url}/ (dashboard) - press Enter to stop serving ")
        server.close()
    if accounted != len(data["ts"]):
        raise SystemExit("error: readings were lost")
    return {"result": result, "outputs": outputs, "data": data, "usage": usage, "load": load, "alerts": alerts,
            "bills": bills}


def serve_main(argv=None) -> int:
    """`pystream serve`: the demo pipeline live, paced like a real fleet, with its queryable
    state, /metrics and the dashboard served over HTTP."""
    p = argparse.ArgumentParser(prog="pystream serve", description="Run the smart-meter pipeline live with a dashboard.")
    p.add_argument("--address", default="127.0.0.1:8080", help="HOST:PORT to serve on (default 127.0.0.1:8080)")
    p.add_argument("--token", default=os.environ.get("PYSTREAM_TOKEN"), help="require this bearer token "
                   "(default: $PYSTREAM_TOKEN)")
    p.add_argument("--meters", type=int, default=20_000)
    p.add_argument("--hours", type=float, default=24.0, help="hours of event time to simulate")
    p.add_argument("--pace", type=float, default=600.0, help="times faster than real time (default 600)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--linger", action="store_true", help="keep serving after the simulation ends (until Ctrl-C)")
    a = p.parse_args(argv)
    sim = ps.sources.MeterSimulator(a.meters, commercial_share=0.2, duration=f"{int(a.hours * 60)}m", seed=a.seed,
                                    offline_share=0.005, max_backlog="3h", duplicate_share=0.001, pace=a.pace)
    flow = build(sim, sink=ps.sinks.Discard)
    server = flow.serve(a.address, token=a.token)
    print(f"pystream serve: {a.meters:,} meters, {a.hours:g} h of event time at {a.pace:g}x real time\n"
          f"  dashboard  {server.url}/" + (f"?token={a.token}" if a.token else "") + "\n"
          f"  state      {server.url}/api/state/usage?key=42\n  metrics    {server.url}/metrics", flush=True)
    try:
        flow.run(progress=True)
        if a.linger:
            print("simulation finished; still serving (Ctrl-C to stop)", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pystream demo", description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=2_000_000, help="number of meter readings (default 2M)")
    p.add_argument("--meters", type=int, default=20_000, help="number of meters (default 20k)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="pystream-demo", help="directory for results and checkpoints "
                   "(default ./pystream-demo); '-' keeps results in memory only")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    p.add_argument("--guarantee", default="exactly_once", choices=["at_most_once", "at_least_once", "exactly_once"])
    p.add_argument("--serve", default="127.0.0.1:8080", help="serve queryable state, /metrics and the dashboard here "
                   "while it runs (default 127.0.0.1:8080; a free port if taken); '-' to not serve")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--postgres", metavar="DSN", help="write results to PostgreSQL tables pystream_demo_* instead of "
                   "part files (exactly-once upserts), e.g. postgresql://postgres@127.0.0.1/test")
    p.add_argument("--redis", metavar="URL", help="also write 15-minute usage to Redis hashes pystream:usage:<meter> "
                   "and top lists pystream:top:<window>, e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="publish the readings to Kafka and read them from there "
                   "('mock' starts librdkafka's in-process mock cluster)")
    p.add_argument("--ray", type=int, metavar="N", help="run on the Ray runtime with N window actors "
                   "(pip install 'pystream[ray]'; results as a local run's)")
    args = p.parse_args(argv)
    if args.ray is not None and args.ray < 1:
        p.error(f"--ray needs N >= 1 window actors, got {args.ray}")
    run(args.readings, args.meters, args.seed, None if args.out == "-" else args.out, args.resume, args.guarantee,
        serve=None if args.serve == "-" else args.serve, progress=not args.no_progress, postgres=args.postgres,
        redis=args.redis, kafka=args.kafka, ray=args.ray)
    return 0
