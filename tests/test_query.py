"""Queryable live state: in-process queries, consistency under concurrent queries, the HTTP API
(JSON, Arrow IPC, errors, token), Prometheus /metrics, and the dashboard in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import pystream as ps
from pystream.query import QueryError

MIN = 60_000


class Gate(ps.sources.Source):
    """Delivers one batch each time the test calls `step()`; polls ("no data") in between, so
    the flow runs and serves queries while the test decides what arrives next."""

    name = "gate"

    def __init__(self, batches):
        self.batches = [ps.Batch.from_any(b) for b in batches]
        self.allowed = threading.Semaphore(0)
        self.delivered = threading.Event()
        self.done = 0

    def read(self, position=None):
        for i, b in enumerate(self.batches):
            while not self.allowed.acquire(timeout=0.005):
                yield None, i
            yield b, i + 1
            self.done = i + 1
            self.delivered.set()

    def step(self, flow, timeout=10.0):
        """Lets one batch through and waits until it went through the graph (the runtime
        re-polls the source only after pushing the batch, under the flow's lock)."""
        self.delivered.clear()
        self.allowed.release()
        assert self.delivered.wait(timeout)
        with flow.live.lock:
            pass


def readings(meters, t0_min, t1_min, seed=0):
    rng = np.random.default_rng(seed)
    t = np.repeat(np.arange(t0_min, t1_min) * MIN, meters)
    m = np.tile(np.arange(meters), t1_min - t0_min)
    return {"meter": m, "ts": t, "kwh": np.round(rng.random(len(t)), 3)}


def build(gate, meters=5):
    flow = ps.Flow("q")
    src = flow.source(gate, time=ps.EventTime("ts", unit="ms"))
    usage = src.key_by("meter").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count())
    usage.queryable("usage", history_rows=10_000)
    usage.sink(ps.sinks.Collect("usage"))
    src.window(ps.windows.Tumbling("5m")).aggregate(kwh=ps.agg.sum("kwh")).queryable("load")
    return flow


def start(flow, **kw):
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("result", flow.run(**kw)), daemon=True)
    th.start()
    deadline = time.time() + 10
    while not flow.live.states and time.time() < deadline:
        time.sleep(0.005)
    return th, out


def test_partial_and_last_results_match_the_data_seen_so_far():
    b1, b2, b3 = readings(5, 0, 10, 1), readings(5, 10, 20, 2), readings(5, 20, 31, 3)
    gate = Gate([b1, b2, b3])
    flow = build(gate)
    th, out = start(flow)
    gate.step(flow)
    q = flow.query("usage", key=3)
    # Minutes 0..9 of meter 3 are in the open window [0, 15 min); nothing fired yet.
    sel = b1["meter"] == 3
    assert q["partial"]["kwh"].tolist() == [pytest.approx(b1["kwh"][sel].sum())]
    assert q["partial"]["n"].tolist() == [10] and len(q["last"]) == 0
    assert q["watermark"] == 9 * MIN * 10**6 - 1
    gate.step(flow)
    q = flow.query("usage", key=3)
    both = {k: np.concatenate([b1[k], b2[k]]) for k in b1}
    first = (both["meter"] == 3) & (both["ts"] < 15 * MIN)
    assert q["last"]["kwh"].tolist() == [pytest.approx(both["kwh"][first].sum())]  # [0, 15) fired
    assert q["partial"]["window_start"].tolist() == [15 * MIN] and q["partial"]["n"].tolist() == [5]
    top = flow.state("usage").top("kwh", k=2, window="fired")
    w0 = (both["ts"] < 15 * MIN)
    totals = np.bincount(both["meter"][w0], weights=both["kwh"][w0])
    assert top["meter"].tolist() == np.argsort(-totals, kind="stable")[:2].tolist()
    with pytest.raises(QueryError, match="no key 99"):
        flow.query("usage", key=99)
    with pytest.raises(QueryError, match="no queryable state named 'nope'"):
        flow.query("nope")
    gate.step(flow)
    th.join(10)
    final = out["result"]["usage"]
    q = flow.query("usage", key=3, last=100)
    mine = final.filter(final["meter"] == 3)
    assert q["last"]["kwh"].tolist() == mine["kwh"].tolist() and len(q["partial"]) == 0


def test_queries_never_see_a_half_applied_batch():
    """Every batch adds one reading to each of 2,000 meters in the same open window; concurrent
    queries must always see all meters with the same count."""
    meters, rounds = 2_000, 60
    batches = [{"meter": np.arange(meters), "ts": np.full(meters, i * 1000), "kwh": np.ones(meters)} for i in range(rounds)]
    gate = Gate(batches)
    flow = ps.Flow("consistent")
    src = flow.source(gate, time=ps.EventTime("ts", unit="ms"))
    src.key_by("meter").window(ps.windows.Tumbling("1h")).aggregate(n=ps.agg.count()).queryable("c")
    th, _ = start(flow)
    seen, stop = [], threading.Event()

    def reader():
        st = flow.state("c")
        while not stop.is_set():
            p = st.partial()
            if len(p):
                counts = np.unique(p["n"])
                seen.append((len(p), counts.tolist()))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    for _ in range(rounds):
        gate.allowed.release()
        time.sleep(0.003)
    th.join(30)
    stop.set()
    for r in readers:
        r.join()
    assert len(seen) > 10
    assert all(n == meters and len(c) == 1 for n, c in seen), [s for s in seen if len(s[1]) != 1][:3]


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def test_http_api_json_arrow_errors_and_token():
    gate = Gate([readings(5, 0, 20, 4)])
    flow = build(gate)
    with flow.serve("127.0.0.1:0", token="s3cret") as srv:
        assert srv.host == "127.0.0.1"
        status, _, body = get(srv.url + "/api/state/usage?key=1", "s3cret")
        assert status == 503 and b"once the flow has started" in body
        th, out = start(flow)
        gate.step(flow)
        assert get(srv.url + "/api")[0] == 401
        assert get(srv.url + "/api?token=wrong")[0] == 401
        status, ctype, body = get(srv.url + "/api/state/usage?key=1&last=5", "s3cret")
        assert status == 200 and ctype == "application/json"
        doc = json.loads(body)
        q = flow.query("usage", key=1, last=5)
        assert [r["kwh"] for r in doc["last"]] == q["last"]["kwh"].tolist()
        assert [r["n"] for r in doc["partial"]] == q["partial"]["n"].tolist()
        assert doc["watermark"] == q["watermark"]
        status, ctype, body = get(srv.url + "/api/state/usage/top?by=kwh&k=3&format=arrow", "s3cret")
        assert status == 200 and ctype == "application/vnd.apache.arrow.stream"
        import pyarrow as pa

        table = pa.ipc.open_stream(body).read_all()
        top = flow.state("usage").top("kwh", 3)
        assert table.column("meter").to_pylist() == top["meter"].tolist()
        for path, code, words in [("/api/state/nope", 404, "no queryable state named 'nope'"),
                                  ("/api/state/usage?key=77", 404, "no key '77'"),
                                  ("/api/state/usage?key=x", 400, "holds integers"),
                                  ("/api/state/usage/top?by=volts", 404, "no aggregate 'volts'"),
                                  ("/api/state/usage?last=0", 400, "last must be"),
                                  ("/api/state/load?key=1", 400, "not keyed"),
                                  ("/nowhere", 404, "no such path")]:
            status, ctype, body = get(srv.url + path, "s3cret")
            assert status == code and words in json.loads(body)["error"], (path, status, body)
        gate.allowed.release()
        th.join(10)
    with pytest.raises(OSError):
        urllib.request.urlopen(srv.url + "/api", timeout=2)  # closed


def test_prometheus_metrics_match_the_run():
    from prometheus_client.parser import text_string_to_metric_families

    data = readings(50, 0, 60, 5)
    flow = ps.Flow("metrics")
    src = flow.source(ps.sources.Arrays(data, batch_size=500), time=ps.EventTime("ts", unit="ms"))
    w = src.key_by("meter").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"))
    w.sink(ps.sinks.Collect("o"))
    w.late().sink(ps.sinks.Collect("late"))
    with flow.serve("127.0.0.1:0") as srv:
        flow.run()
        status, ctype, body = get(srv.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    events = {s.labels["id"]: s.value for s in fams["pystream_events_in"].samples}
    assert list(events.values()) == [len(data["ts"])]
    assert fams["pystream_keys"].samples[0].value == 50
    hist = fams["pystream_batch_duration_seconds"]
    count = [s.value for s in hist.samples if s.name.endswith("_count")]
    assert count == [len(data["ts"]) / 500]
    assert {"pystream_watermark_seconds", "pystream_state_bytes", "pystream_open_windows", "pystream_checkpoints",
            "pystream_late_events", "pystream_running"} <= set(fams)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("CI needs Chromium for the dashboard test (.ci/run installs Debian's chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def dump_dom(browser, url, budget_ms=2500):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, env=env)  # not the sanitizers' preload
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def element(dom, ident):
    import re

    m = re.search(r'<[^>]*\bid="' + ident + r'"[^>]*>([^<]*)<', dom)
    assert m, f"no element #{ident} in the page"
    tag = m.group(0)
    value = re.search(r'data-value="([^"]*)"', tag)
    return m.group(1), (value.group(1) if value else None)


def test_dashboard_in_headless_chromium_shows_the_query_api_numbers_and_updates():
    browser = _chromium()
    gate = Gate([readings(5, 0, 20, 6), readings(5, 20, 50, 7), readings(5, 50, 60, 8)])
    flow = build(gate)
    with flow.serve("127.0.0.1:0") as srv:
        th, out = start(flow)
        gate.step(flow)
        page = srv.url + "/?meter=2&state=usage&load=load"
        dom = dump_dom(browser, page)
        text, value = element(dom, "meter-latest")
        want = flow.query("usage", key=2)["last"]["kwh"][-1]
        assert float(value) == pytest.approx(want)
        load_text, load_value = element(dom, "load-latest")
        load = flow.query("load", last=100)["last"]
        assert float(load_value) == pytest.approx(load["kwh"][-1])
        updates = int(element(dom, "updates")[0])
        assert updates >= 2  # the page refreshes every second (2.5 s of virtual time)
        assert "error" not in element(dom, "status")[0]
        gate.step(flow)  # more data: the page must show the new numbers
        dom2 = dump_dom(browser, page)
        value2 = float(element(dom2, "meter-latest")[1])
        want2 = flow.query("usage", key=2)["last"]["kwh"][-1]
        assert value2 == pytest.approx(want2) and value2 != pytest.approx(float(value))
        assert element(dom2, "watermark")[0] != element(dom, "watermark")[0]
        gate.step(flow)
        th.join(10)


def test_progress_reports_events_watermark_and_late(capsys):
    data = readings(20, 0, 120, 9)
    data["ts"][5] = 0  # one late reading after the first window fired? (not yet: same window)
    flow = ps.Flow("progress")
    src = flow.source(ps.sources.Arrays(data, batch_size=200), time=ps.EventTime("ts", unit="ms"))
    src.key_by("meter").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Discard("d"))
    result = flow.run(progress=True)
    err = capsys.readouterr().err
    assert result["d"] == 20 * 8  # 8 quarter-hours of 20 meters
    assert f"{len(data['ts']):,} events" in err and "watermark end of input" in err and "late 0" in err


def test_pystream_serve_command_serves_the_live_demo(tmp_path):
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pystream", "serve", "--address", f"127.0.0.1:{port}", "--meters", "500",
                             "--hours", "3", "--pace", "50000", "--linger"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)  # not the repo root: the installed package
    try:
        url = f"http://127.0.0.1:{port}"
        deadline, info = time.time() + 60, None
        while time.time() < deadline:
            try:
                info = json.loads(get(url + "/api")[2])
                if not info["running"] and info["queryable"]:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        assert info is not None and not info["running"], info
        assert {q["name"] for q in info["queryable"]} == {"usage", "usage_1h", "daily_bill", "load"}
        status, _, body = get(url + "/api/state/usage?key=42&last=3")
        doc = json.loads(body)
        assert status == 200 and len(doc["last"]) == 3 and all(r["meter_id"] == 42 for r in doc["last"])
        status, _, body = get(url + "/metrics")
        assert status == 200 and b"pystream_events_in_total" in body
        assert get(url + "/")[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)
