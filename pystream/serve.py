"""HTTP for a running flow: queryable state (JSON or Arrow IPC), Prometheus /metrics and a live
dashboard. Standard library server (one thread per request) in a daemon thread.

  GET /                                   the dashboard (plain HTML/JS shipped in the package)
  GET /api                                the flow and its queryable states
  GET /api/state/NAME?key=K[&last=N]      partial windows and last N fired rows of key K
                                          (repeat key= for several key columns; no key: all)
  GET /api/state/NAME/top?by=AGG&k=10[&window=open|fired]
  GET /api/state/NAME/watermark
  GET /api/state/NAME/owner?key=K         (Kafka consumer-group members) K's partition and the
                                          member that owns it; a key query for a key another
                                          member owns answers 307 to that member's URL
  GET /api/metrics                        counters and gauges as JSON
  GET /metrics                            Prometheus text format (pip install 'pystream[serve]')
Row endpoints take format=arrow (Arrow IPC stream; for /api/state/NAME choose part=partial or
part=last). Unknown names, keys and paths answer 404 with a message, bad parameters 400. The
server binds 127.0.0.1 unless the address names a host; with a token every request needs
`Authorization: Bearer TOKEN` (or ?token=TOKEN, which the dashboard passes on).
"""

from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np

from .query import NotStarted, QueryError, to_arrow_ipc, to_records


class HTTPError(Exception):
    def __init__(self, status: int, message: str, location: str | None = None):
        super().__init__(message)
        self.status, self.location = status, location


def parse_address(address: str) -> tuple[str, int]:
    """":8080" -> ("127.0.0.1", 8080); "0.0.0.0:8080" listens on every interface."""
    if isinstance(address, int):
        return "127.0.0.1", address
    host, sep, port = str(address).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"serve address must be 'HOST:PORT' or ':PORT', got {address!r}")
    return (host or "127.0.0.1"), int(port)


class Server:
    """Serves one flow's live state; `url` is where, `close()` stops it."""

    def __init__(self, flow, address: str = ":8080", token: str | None = None):
        host, port = parse_address(address)
        self.flow, self.token = flow, token
        handler = type("Handler", (_Handler,), {"server_obj": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="pystream-serve", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- request handling (pure functions of the flow's live state) ----------------------------
    def handle(self, path: str, q: dict) -> tuple[int, str, bytes]:
        parts = [p for p in path.split("/") if p]
        if parts in ([], ["dashboard"]):
            return 200, "text/html; charset=utf-8", resources.files("pystream").joinpath("dashboard.html").read_bytes()
        if parts == ["metrics"]:
            return 200, PROMETHEUS_TYPE, prometheus_text(self.flow)
        if parts[:1] != ["api"]:
            raise HTTPError(404, f"no such path {path!r}; try /, /api, /api/state/NAME, /api/metrics or /metrics")
        if parts == ["api"]:
            live = self.flow.live
            return _json({"flow": self.flow.name, "running": live.running,
                          "queryable": [st.describe() for st in list(live.states.values())]})
        if parts == ["api", "metrics"]:
            return _json(self.flow.live.snapshot())
        if len(parts) >= 3 and parts[1] == "state":
            return self.state(parts[2], parts[3:], q)
        raise HTTPError(404, f"no such path {path!r}")

    def state(self, name: str, rest: list[str], q: dict) -> tuple[int, str, bytes]:
        try:
            st = self.flow.state(name)
        except NotStarted as e:
            raise HTTPError(503, str(e)) from None
        except QueryError as e:
            raise HTTPError(404, str(e)) from None
        fmt = _one(q, "format", "json")
        if fmt not in ("json", "arrow"):
            raise HTTPError(400, f"format must be 'json' or 'arrow', got {fmt!r}")
        if rest == ["watermark"]:
            wm = st.watermark
            return _json({"name": name, "watermark": wm, "watermark_utc": _iso(wm)})
        if rest == ["top"]:
            by = _one(q, "by", None) or next(iter(st.op.aggs))
            k = _int(q, "k", 10)
            window = _one(q, "window", "open")
            try:
                rows = st.top(by, k, window)
            except QueryError as e:
                raise HTTPError(404, str(e)) from None
            except ValueError as e:
                raise HTTPError(400, str(e)) from None
            if fmt == "arrow":
                return _arrow(rows)
            return _json({"name": name, "by": by, "k": k, "window": window, "rows": to_records(rows)})
        if rest == ["owner"]:
            if not hasattr(st, "owner"):
                raise HTTPError(404, f"{name!r} runs in one process: /owner is for Kafka consumer-group members")
            key = self.key_of(st, q.get("key"))
            if key is None:
                raise HTTPError(400, "owner needs key=")
            try:
                return _json(st.owner(key))
            except ValueError as e:
                raise HTTPError(400, str(e)) from None
        if rest:
            raise HTTPError(404, f"no such path under /api/state/{name}: {'/'.join(rest)!r}; try /top or /watermark")
        key = self.key_of(st, q.get("key"))
        last = _int(q, "last", 10)
        try:
            partial, fired, wm = st.view(key, last)  # one consistent view: all three from the same moment
        except QueryError as e:
            where = _elsewhere(st, key)
            if where is not None:  # another consumer-group member owns the key: send the client there
                raise HTTPError(307, str(e), location=f"{where.rstrip('/')}/api/state/{name}?"
                                                      f"{urlencode(q, doseq=True)}") from None
            raise HTTPError(404, str(e)) from None
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
        if fmt == "arrow":
            part = _one(q, "part", "partial")
            if part not in ("partial", "last"):
                raise HTTPError(400, f"part must be 'partial' or 'last', got {part!r}")
            return _arrow(partial if part == "partial" else fired)
        return _json({"name": name, "key": None if key is None else list(key) if isinstance(key, tuple) else key,
                      "watermark": wm, "watermark_utc": _iso(wm),
                      "partial": to_records(partial), "last": to_records(fired)})

    @staticmethod
    def key_of(st, values):
        if not values:
            return None
        if not st.keys:
            raise HTTPError(400, f"{st.name!r} is not keyed; query it without key=")
        if len(values) != len(st.keys):
            raise HTTPError(400, f"{st.name!r} is keyed by {list(st.keys)}: give key= {len(st.keys)} time(s)")
        return values[0] if len(values) == 1 else tuple(values)


def _elsewhere(st, key) -> str | None:
    """The URL of the consumer-group member that owns `key`, where another one does and
    announced one."""
    if key is None or not hasattr(st, "owner"):
        return None
    try:
        where = st.owner(key)
    except ValueError:
        return None
    return where["url"] if not where["here"] and where["url"] else None


def _one(q, name, default):
    v = q.get(name)
    return v[0] if v else default


def _int(q, name, default):
    v = _one(q, name, None)
    if v is None:
        return default
    if not v.isdigit() or not 0 < int(v) <= 1_000_000:
        raise HTTPError(400, f"{name} must be an integer in 1..1000000, got {v!r}")
    return int(v)


def _iso(ns):
    """UTC ISO 8601 of a watermark; past the supported time range it is the end-of-input mark."""
    if ns is None:
        return None
    if ns >= 2**62:
        return "end of input"
    return str(np.datetime64(int(ns), "ns").astype("datetime64[ms]")) + "Z"


def _json(obj) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(obj, default=_plain, allow_nan=False).encode()


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _arrow(batch) -> tuple[int, str, bytes]:
    try:
        return 200, "application/vnd.apache.arrow.stream", to_arrow_ipc(batch)
    except ImportError:
        raise HTTPError(501, "format=arrow needs pyarrow: pip install 'pystream[arrow]'") from None


class _Handler(BaseHTTPRequestHandler):
    server_obj: Server
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        url = urlparse(self.path)
        q = parse_qs(url.query)
        location = None
        try:
            self.check_token(q)
            status, ctype, body = self.server_obj.handle(url.path, q)
        except HTTPError as e:
            status, ctype, body = e.status, "application/json", json.dumps({"error": str(e)}).encode()
            location = e.location
        except Exception as e:  # a bug must not kill the server thread; report it
            status, ctype, body = 500, "application/json", json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        self.send_response(status)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def check_token(self, q) -> None:
        token = self.server_obj.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        given = given[7:] if given.startswith("Bearer ") else _one(q, "token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPError(401, "this server needs a token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN")

    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name)
        pass  # quiet: a dashboard polls every second


# -- Prometheus ------------------------------------------------------------------------------------

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prometheus_text(flow) -> bytes:
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError:
        raise HTTPError(501, "/metrics needs prometheus-client: pip install 'pystream[serve]'") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FlowCollector(flow))
    return generate_latest(registry)


class _FlowCollector:
    """Reads the flow's live snapshot at scrape time (prometheus-client custom collector)."""

    def __init__(self, flow):
        self.flow = flow

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self.flow.live.snapshot()
        labels = ["flow", "operator", "id"]

        def family(cls, name, doc):
            return cls(name, doc, labels=labels)

        fams = {
            "events_in": family(CounterMetricFamily, "pystream_events_in", "Events into the operator"),
            "rows_out": family(CounterMetricFamily, "pystream_rows_out", "Rows the operator emitted"),
            "late": family(CounterMetricFamily, "pystream_late_events", "Events late for all their windows"),
            "invalid": family(CounterMetricFamily, "pystream_invalid_events", "Events refused (max_future, zone)"),
            "watermark": family(GaugeMetricFamily, "pystream_watermark_seconds", "Operator watermark (Unix seconds)"),
            "lag": family(GaugeMetricFamily, "pystream_watermark_lag_seconds", "Wall clock minus watermark"),
            "event_lag": family(GaugeMetricFamily, "pystream_event_time_lag_seconds",
                                "Largest event time seen minus watermark"),
            "open_windows": family(GaugeMetricFamily, "pystream_open_windows", "Windows holding data not fired yet"),
            "num_keys": family(GaugeMetricFamily, "pystream_keys", "Keys in operator state"),
            "state_bytes": family(GaugeMetricFamily, "pystream_state_bytes", "Bytes of operator state"),
        }
        for op in snap["operators"]:
            lv = [self.flow.name, str(op["name"]), f"op{op['id']}"]
            for k in ("events_in", "rows_out", "late", "invalid", "open_windows", "num_keys", "state_bytes"):
                if op.get(k) is not None:
                    fams[k].add_metric(lv, op[k])
            wm = op.get("watermark")
            if wm is not None and abs(wm) <= 2**62:
                fams["watermark"].add_metric(lv, wm / 1e9)
                fams["lag"].add_metric(lv, (snap["now_ns"] - wm) / 1e9)
                if op.get("max_event_time") is not None:
                    fams["event_lag"].add_metric(lv, (op["max_event_time"] - wm) / 1e9)
        yield from fams.values()
        flow_label = ["flow"]
        running = GaugeMetricFamily("pystream_running", "1 while the flow runs", labels=flow_label)
        running.add_metric([self.flow.name], 1.0 if snap["running"] else 0.0)
        yield running
        buckets, acc = [], 0
        for bound, count in snap["batch_buckets"]:
            acc += count
            buckets.append((bound if isinstance(bound, str) else repr(bound), acc))
        hist = HistogramMetricFamily("pystream_batch_duration_seconds", "Time to push one source batch through the graph",
                                     labels=flow_label)
        hist.add_metric([self.flow.name], buckets, snap["batch_seconds"])
        yield hist
        ck = CounterMetricFamily("pystream_checkpoints", "Checkpoints written", labels=flow_label)
        ck.add_metric([self.flow.name], snap["checkpoints"])
        yield ck
        dur = GaugeMetricFamily("pystream_checkpoint_duration_seconds", "Duration of the last checkpoint", labels=flow_label)
        dur.add_metric([self.flow.name], snap["checkpoint_seconds"])
        yield dur
        size = GaugeMetricFamily("pystream_checkpoint_size_bytes", "Size of the last checkpoint", labels=flow_label)
        size.add_metric([self.flow.name], snap["checkpoint_bytes"])
        yield size
