"""MQTT source against the Mosquitto broker on loopback: topic filters, QoS 1, JSON payloads
into a windowed query; exactly-once is refused because MQTT cannot replay."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import pystream as ps
from conftest import require_service

pytest.importorskip("paho.mqtt", reason="pip install 'pystream[mqtt]'")


def test_mqtt_readings_through_a_window():
    require_service("127.0.0.1", 1883, "Mosquitto (MQTT)")
    import paho.mqtt.client as mqtt

    run = f"pystream-test-{np.random.default_rng().integers(1 << 30)}"
    src = ps.sources.MQTT(f"{run}/meters/+/reading", batch_size=500, idle_timeout=1.5)
    flow = ps.Flow("mqtt")
    s = flow.source(src, time=ps.EventTime("ts", unit="ms"))
    s.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count()).sink(
        ps.sinks.Collect("usage"))
    s.sink(ps.sinks.Collect("raw"))
    out = {}
    th = threading.Thread(target=lambda: out.update(flow.run()))
    th.start()
    assert src.subscribed.wait(10)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", 1883)
    pub.loop_start()
    # In chunks the subscriber has taken before the next: Mosquitto drops QoS 1 messages beyond
    # its per-client queue (max_queued_messages, default 1000) when a subscriber falls behind.
    n, chunk = 2_000, 250
    for a in range(0, n, chunk):
        infos = []
        for i in range(a, a + chunk):
            msg = {"meter_id": i % 20, "ts": i * 10_000, "kwh": 0.25}
            infos.append(pub.publish(f"{run}/meters/{i % 20}/reading", json.dumps(msg), qos=1))
        for info in infos:
            info.wait_for_publish(10)
        deadline = time.monotonic() + 10
        while src.received < a + chunk and time.monotonic() < deadline:
            time.sleep(0.01)
    pub.loop_stop()
    pub.disconnect()
    th.join(30)
    raw = out["raw"]
    assert len(raw) == n and set(raw["mqtt_topic"]) == {f"{run}/meters/{m}/reading" for m in range(20)}
    assert int(out["usage"]["n"].sum()) == n and abs(float(out["usage"]["kwh"].sum()) - 0.25 * n) < 1e-9


def test_exactly_once_is_refused_for_mqtt(tmp_path):
    flow = ps.Flow("mqtt-eo")
    flow.source(ps.sources.MQTT("meters/+/reading")).sink(ps.sinks.Files(str(tmp_path / "o")))
    with pytest.raises(ValueError, match="replayable"):
        flow.run(checkpoints=str(tmp_path / "ck"), guarantee="exactly_once")
