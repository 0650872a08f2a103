"""Kafka (confluent-kafka): a replayable, partitioned source and an exactly-once sink.

Source: every partition of a topic, assigned explicitly; the position is {partition: next
offset}, kept in checkpoints, so a restored run re-reads exactly what the epoch had not
covered. Each batch holds one partition's messages (its label, so each Kafka partition has
its own watermark). JSON values are decoded in one go by pyarrow's JSON reader over the
newline-joined values (no per-record parsing in Python); `kafka_partition`, `kafka_offset`
and `kafka_ts` (the Kafka timestamp, ms: usable as ingestion time with
`ps.IngestionTime("kafka_ts", unit="ms")`) are added. `stop_at_end=True` reads up to the end
offsets seen at start and ends (bounded replays, tests).

Sink: a transactional producer. pre_commit(epoch) keeps the epoch's rows in the checkpoint;
commit(epoch) produces them and an epoch marker (to `<topic>.pystream-epochs`, key = sink
name) in one Kafka transaction; recovery reads the last committed marker (read_committed)
and re-produces the checkpoint's epoch only if its marker is missing. Consumers reading with
isolation.level=read_committed see every row exactly once.
Needs confluent-kafka and pyarrow: pip install 'pystream[kafka]'.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from typing import Iterator

import numpy as np

from .batch import Batch
from .sinks import BufferedSink
from .sources import Source


def _require():
    try:
        import confluent_kafka  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise ImportError("the Kafka connector needs confluent-kafka and pyarrow: pip install 'pystream[kafka]'") from e


def decode_json(values: list[bytes]) -> dict[str, np.ndarray]:
    """JSON object values -> columns, parsed by pyarrow in one call (one object per value: a
    value holding a line break or not an object is an error)."""
    import pyarrow.json as pajson

    from ._messages import first_non_object

    if not isinstance(values, list):
        values = list(values)
    # Also a guard: pyarrow 26's JSON reader crashes the process on a top-level null.
    i, why = first_non_object(values)
    if i >= 0:
        hint = "; send compact JSON, one object per message" if why == "spans several lines" else f": {values[i][:40]!r}"
        raise ValueError(f"value {i} of the batch {why}{hint}")
    table = pajson.read_json(io.BytesIO(b"\n".join(values)))
    if table.num_rows != len(values):
        raise ValueError(f"{len(values)} values decoded to {table.num_rows} JSON objects; each value must be one object")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def encode_json(batch: Batch) -> list[str]:
    """Rows -> compact JSON objects, built column by column with NumPy string operations."""
    parts = None
    for i, name in enumerate(batch.columns):
        arr = batch[name]
        k = arr.dtype.kind
        if k == "b":
            text = np.where(arr, "true", "false")
        elif k in "iu":
            text = arr.astype(str)
        elif k == "f":
            text = np.where(np.isfinite(arr), arr.astype(str), "null")
        elif k == "M":
            text = np.char.add(np.char.add('"', np.datetime_as_string(arr)), '"')
        else:
            text = np.array([json.dumps(v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
                             for v in arr.tolist()], dtype=object).astype(str)
        field = np.char.add(("{" if i == 0 else ",") + json.dumps(name) + ":", text.astype(str))
        parts = field if parts is None else np.char.add(parts, field)
    if parts is None:
        return ["{}"] * len(batch)
    return np.char.add(parts, "}").tolist()


#: Consumer settings the sources start from (a source's `config` overrides them). librdkafka
#: stops fetching a partition once its local queue holds `queued.min.messages` (100k) and
#: then waits `fetch.queue.backoff.ms`, by default a whole second: a consumer that keeps up
#: in batches hit that wait again and again (measured on the mock cluster: 0.17M messages/s;
#: with 10 ms, 0.8M).
CONSUMER_DEFAULTS = {"fetch.queue.backoff.ms": 10}


class Kafka(Source):
    """`ps.sources.Kafka(topic, bootstrap, decoder="json", batch_size=10000, stop_at_end=False)`."""

    replayable = True

    def __init__(self, topic: str, bootstrap: str, decoder="json", batch_size: int = 10_000, stop_at_end: bool = False,
                 poll_timeout: float = 0.1, config: dict | None = None, name: str | None = None):
        _require()
        if decoder != "json" and not callable(decoder):
            raise ValueError(f"decoder must be 'json' or a function(values: list[bytes]) -> columns, got {decoder!r}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.topic, self.bootstrap, self.batch_size, self.stop_at_end = topic, bootstrap, batch_size, stop_at_end
        self.decoder = decode_json if decoder == "json" else decoder
        self.poll_timeout, self.config = poll_timeout, dict(config or {})
        self.name = name or topic

    def fingerprint(self) -> str:
        return f"Kafka:{self.name}:{self.topic}"

    def _consumer(self):
        from confluent_kafka import Consumer

        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"pystream-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": False,
                         "isolation.level": "read_committed", **CONSUMER_DEFAULTS, **self.config})

    def partitions(self) -> list:
        c = self._consumer()
        try:
            md = c.list_topics(self.topic, timeout=10)
            t = md.topics.get(self.topic)
            if t is None or t.error is not None:
                raise ValueError(f"Kafka topic {self.topic!r} is not available at {self.bootstrap}: "
                                 f"{None if t is None else t.error}")
            return sorted(t.partitions)
        finally:
            c.close()

    def read(self, position=None) -> Iterator[tuple]:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        parts = self.partitions()
        pos = {int(p): int(o) for p, o in (position or {}).items()}
        c = self._consumer()
        try:
            c.assign([TopicPartition(self.topic, p, pos.get(p, OFFSET_BEGINNING)) for p in parts])
            ends = {p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] for p in parts}
            tps = [TopicPartition(self.topic, p) for p in parts]
            last_msg = time.monotonic()
            while True:
                msgs = c.consume(self.batch_size, self.poll_timeout)
                if not msgs:
                    # The consumer's position also steps over transaction markers, which are
                    # never delivered: compare it, not the last message, with the end offsets;
                    # an aborted or marker-only tail ends the read after 3 s without messages.
                    quiet = time.monotonic() - last_msg
                    if self.stop_at_end and (quiet >= 3.0 or all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0
                                                                 for tp in c.position(tps))):
                        return
                    yield None, dict(pos), None
                    continue
                last_msg = time.monotonic()
                for p, batch in self.batches_of(msgs):
                    pos[p] = int(batch["kafka_offset"][-1]) + 1
                    yield batch, dict(pos), p
        finally:
            c.close()

    def batches_of(self, msgs):
        """(partition, Batch) for each partition among consumed messages, decoded, with
        kafka_partition, kafka_offset and kafka_ts columns. The values of all partitions are
        decoded in one call; only a failing call is repeated per partition, to name the
        partition and offsets of the poison message."""
        from ._messages import message_columns

        try:
            part, offs, kts, values = message_columns(msgs)
        except RuntimeError as e:
            raise RuntimeError(f"Kafka topic {self.topic!r}: {e}") from None
        parts = np.unique(part)
        if len(parts) == 1:
            groups = [(int(parts[0]), None)]
        else:
            order = np.argsort(part, kind="stable")
            cuts = np.searchsorted(part[order], parts, side="right")[:-1]
            groups = list(zip(parts.tolist(), np.split(order, cuts)))
        try:
            cols = self.decoder(values)
        except Exception as whole:
            for p, idx in groups:  # find the partition of the poison message
                mine = values if idx is None else [values[i] for i in idx.tolist()]
                o = offs if idx is None else offs[idx]
                try:
                    self.decoder(mine)
                except Exception as e:  # it must name itself, not crash the run obscurely
                    raise ValueError(f"Kafka topic {self.topic!r} partition {p} offsets {o[0]}..{o[-1]}: "
                                     f"cannot decode the values: {e}") from None
            # Each partition decodes alone but not together (e.g. a column's type differs).
            raise ValueError(f"Kafka topic {self.topic!r} partitions {[p for p, _ in groups]}: cannot decode "
                             f"their values together: {whole}") from None
        cols = {k: np.asarray(v) for k, v in cols.items()}
        for p, idx in groups:
            mine = cols if idx is None else {k: v[idx] for k, v in cols.items()}
            n = len(offs) if idx is None else len(idx)
            mine["kafka_partition"] = np.full(n, p, dtype=np.int64)
            mine["kafka_offset"] = offs if idx is None else offs[idx]
            mine["kafka_ts"] = kts if idx is None else kts[idx]
            yield p, Batch(mine)

    def __repr__(self):
        return f"Kafka({self.topic!r})"


class KafkaSink(BufferedSink):
    """`ps.sinks.Kafka(topic, bootstrap, name=None, key=None)`: JSON values, exactly-once via
    transactions tied to the checkpoint epoch (see the module note). `key` names a column
    whose value becomes the message key (so one meter's rows share a partition)."""

    transactional = True
    durable = True

    def __init__(self, topic: str, bootstrap: str, name: str | None = None, key: str | None = None,
                 config: dict | None = None):
        _require()
        self.topic, self.bootstrap, self.key = topic, bootstrap, key
        self.name = name or topic
        self.markers = f"{topic}.pystream-epochs"
        self.config = dict(config or {})
        self._producer = None
        self._pending: list[Batch] = []
        self._committed = -1

    def fingerprint(self) -> str:
        return f"KafkaSink:{self.name}:{self.topic}"

    def open(self) -> None:
        from confluent_kafka import Producer

        # Markers go to partition 0 of the marker topic (auto-created by the broker if needed).
        self._producer = Producer({"bootstrap.servers": self.bootstrap, "transactional.id": f"pystream-{self.name}",
                                   "linger.ms": 5, **self.config})
        self._producer.init_transactions(30)  # fences (aborts) a dead predecessor's open transaction
        self._pending = []

    def _last_marker(self) -> int:
        """The last committed epoch marker of this sink (read_committed), or -1."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"pystream-m-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "isolation.level": "read_committed"})
        try:
            if self.markers not in c.list_topics(timeout=10).topics:
                return -1
            tp = TopicPartition(self.markers, 0, OFFSET_BEGINNING)
            c.assign([tp])
            end = c.get_watermark_offsets(TopicPartition(self.markers, 0), timeout=10)[1]
            last, idle = -1, 0
            # Transaction markers are never delivered: stop when the position reaches the end
            # offset, or when nothing more comes (an aborted tail).
            while idle < 3 and c.position([TopicPartition(self.markers, 0)])[0].offset < end:
                msgs = c.consume(1000, 0.5)
                idle = 0 if msgs else idle + 1
                for m in msgs:
                    if m.error() is None and m.key() == self.name.encode():
                        last = int(m.value())
            return last
        finally:
            c.close()

    def _publish(self, batch: Batch | None, epoch: int) -> None:
        p = self._producer
        p.begin_transaction()
        if batch is not None and len(batch):
            values = encode_json(batch)
            keys = None if self.key is None else [str(k).encode() for k in batch[self.key].tolist()]
            for i, v in enumerate(values):
                while True:
                    try:
                        p.produce(self.topic, value=v.encode(), key=None if keys is None else keys[i])
                        break
                    except BufferError:
                        p.poll(0.05)
        p.produce(self.markers, key=self.name.encode(), value=str(epoch).encode(), partition=0)
        p.commit_transaction(60)
        self._committed = epoch

    def pre_commit(self, epoch: int):
        batch = self._take()
        return {"epoch": epoch, "rows": None if batch is None else batch.to_dict()}

    def commit(self, handle) -> None:
        if handle is None or handle["epoch"] <= self._committed:
            return
        self._publish(None if handle["rows"] is None else Batch(handle["rows"]), handle["epoch"])

    def recover(self, handle, epoch: int) -> None:
        if self._producer is None:
            self.open()
        # A fresh run counts epochs from 0 again; a resumed one continues after its marker.
        self._committed = -1 if handle is None and epoch < 0 else self._last_marker()
        self.commit(handle)

    def flush_epoch(self, epoch: int) -> None:
        batch = self._take()
        if batch is not None:
            self._publish(batch, epoch)

    def close(self):
        batch = self._take()
        if batch is not None:
            self._publish(batch, self._committed + 1)
        if self._producer is not None:
            self._producer.flush(30)
            self._producer = None
        return self.topic

    @staticmethod
    def read(topic: str, bootstrap: str) -> Batch:
        """Every committed row of a topic (read_committed), as a Batch (for tests and checks)."""
        src = Kafka(topic, bootstrap, stop_at_end=True)
        batches = [b for b, _, _ in src.read() if b is not None]
        return Batch.concat(batches) if batches else Batch()
