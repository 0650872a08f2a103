"""A librdkafka mock cluster for tests: it lives inside a client of this process and speaks the
real Kafka protocol on loopback sockets, so other clients (and subprocesses) can use it."""

from __future__ import annotations

import json

import numpy as np


class MockCluster:
    def __init__(self, brokers: int = 1):
        from confluent_kafka import Producer

        self._holder = Producer({"test.mock.num.brokers": brokers, "log_level": 3})
        md = self._holder.list_topics(timeout=10)
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in md.brokers.values())

    def produce_json(self, topic: str, data: dict, key: str | None = None, partition: int | None = None) -> None:
        """Rows of `data` as JSON messages (keyed by column `key`, so a key's rows share a
        partition; or all into `partition`)."""
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "log_level": 3})
        cols = list(data)
        for row in zip(*(np.asarray(data[c]).tolist() for c in cols)):
            rec = dict(zip(cols, row))
            while True:
                try:
                    p.produce(topic, value=json.dumps(rec).encode(), key=None if key is None else str(rec[key]).encode(),
                              **({} if partition is None else {"partition": partition}))
                    break
                except BufferError:
                    p.poll(0.05)
        p.flush(30)
