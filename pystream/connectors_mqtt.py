"""MQTT source (paho-mqtt): subscribe to topic filters such as `meters/+/reading` at QoS 1 and
turn JSON payloads into batches (pyarrow parses the newline-joined payloads in one call).

MQTT keeps no replayable log, so this source is not replayable: exactly-once is refused at
build time with a clear message (at-most-once works; at-least-once needs a replayable source
too). The `mqtt_topic` column carries each message's topic (e.g. to take a meter id from it).
Needs paho-mqtt and pyarrow: pip install 'pystream[mqtt]'.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from typing import Iterator

import numpy as np

from .batch import Batch
from .sources import Source


class MQTT(Source):
    """`ps.sources.MQTT(topics, host="127.0.0.1", port=1883, qos=1, batch_size=10000,
    max_wait=0.2, idle_timeout=None)`: `idle_timeout` (seconds) ends the stream after that
    long without a message (None: unbounded).

    QoS 1 protects messages between broker and client, not inside the broker: Mosquitto drops
    messages for a subscriber whose queue exceeds `max_queued_messages` (default 1000; its log
    says "Outgoing messages are being dropped"). Raise that limit for bursty publishers."""

    replayable = False

    def __init__(self, topics="meters/+/reading", host: str = "127.0.0.1", port: int = 1883, qos: int = 1,
                 batch_size: int = 10_000, max_wait: float = 0.2, idle_timeout: float | None = None,
                 decoder="json", client_id: str | None = None, name: str | None = None):
        try:
            import paho.mqtt.client  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError("ps.sources.MQTT needs paho-mqtt and pyarrow: pip install 'pystream[mqtt]'") from e
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        self.host, self.port, self.qos = host, port, qos
        self.batch_size, self.max_wait, self.idle_timeout = batch_size, max_wait, idle_timeout
        if decoder != "json" and not callable(decoder):
            raise ValueError(f"decoder must be 'json' or a function(payloads: list[bytes]) -> columns, got {decoder!r}")
        from .connectors_kafka import decode_json

        self.decoder = decode_json if decoder == "json" else decoder
        self.client_id = client_id or f"pystream-{uuid.uuid4().hex[:8]}"
        self.name = name or "mqtt"
        #: set once the subscription is acknowledged (tests wait on it before publishing)
        self.subscribed = threading.Event()
        #: messages received from the broker so far (in the client's network thread)
        self.received = 0

    def fingerprint(self) -> str:
        return f"MQTT:{self.name}:{','.join(self.topics)}"

    def read(self, position=None) -> Iterator[tuple]:
        import paho.mqtt.client as mqtt

        inbox: deque = deque()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)

        def on_connect(c, userdata, flags, reason, props):
            if reason.is_failure:
                raise ConnectionError(f"MQTT broker {self.host}:{self.port} refused the connection: {reason}")
            c.subscribe([(t, self.qos) for t in self.topics])

        client.on_connect = on_connect
        client.on_subscribe = lambda c, userdata, mid, reasons, props: self.subscribed.set()

        def on_message(c, userdata, msg):
            inbox.append((msg.topic, msg.payload))
            self.received += 1

        client.on_message = on_message
        try:
            client.connect(self.host, self.port)
        except OSError as e:
            raise ConnectionError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {e}") from None
        client.loop_start()
        try:
            last = time.monotonic()
            while True:
                deadline = time.monotonic() + self.max_wait
                while len(inbox) < self.batch_size and time.monotonic() < deadline:
                    time.sleep(0.005)
                n = min(len(inbox), self.batch_size)
                if n == 0:
                    if self.idle_timeout is not None and time.monotonic() - last >= self.idle_timeout:
                        return
                    yield None, None, None
                    continue
                items = [inbox.popleft() for _ in range(n)]
                cols = self.decoder([p for _, p in items])
                cols["mqtt_topic"] = np.array([t for t, _ in items], dtype=object)
                last = time.monotonic()
                yield Batch(cols), None, None
        finally:
            client.loop_stop()
            client.disconnect()

    def __repr__(self):
        return f"MQTT({self.topics!r}, {self.host}:{self.port})"
