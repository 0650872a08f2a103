"""Kafka (confluent-kafka): a replayable, partitioned source and an exactly-once sink.

Source: every partition of a topic, assigned explicitly; the position is {partition: next
offset}, kept in checkpoints, so a restored run re-reads exactly what the epoch had not
covered. Each batch holds one partition's messages (its label, so each Kafka partition has
its own watermark). JSON values are decoded in one go by pyarrow's JSON reader over the
newline-joined values (no per-record parsing in Python). With that JSON decoder the messages
come from pystream's own consumer (pystream._kafka over the librdkafka that confluent-kafka
ships): one call per batch copies the values into one newline-separated buffer, checks each is
one JSON object on one line, and fills partition/offset/timestamp arrays, with no Python
object per message (`native=False` uses confluent-kafka's consume()). `kafka_partition`,
`kafka_offset` and `kafka_ts` (the Kafka timestamp, ms: usable as ingestion time with
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

    joined = isinstance(values, JoinedValues)
    if not joined and not isinstance(values, list):
        values = list(values)
    # Also a guard: pyarrow 26's JSON reader crashes the process on a top-level null.
    i, why = values.first_non_object() if joined else first_non_object(values)
    if i >= 0:
        hint = "; send compact JSON, one object per message" if why == "spans several lines" else f": {values[i][:40]!r}"
        raise ValueError(f"value {i} of the batch {why}{hint}")
    if joined:
        import pyarrow as pa

        data = pa.BufferReader(pa.py_buffer(values.buffer))  # read in place: no copy, no join
    else:
        data = io.BytesIO(b"\n".join(values))
    table = pajson.read_json(data)
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


class JoinedValues:
    """Consumed values in one buffer, each followed by a newline, as the native consumer
    hands them out: decode_json reads the buffer in place; values[i] is one value's bytes."""

    def __init__(self, buffer: np.ndarray, bounds: np.ndarray, bad: int = -1, bad_reason: str = ""):
        self.buffer, self.bounds, self.bad, self.bad_reason = buffer, bounds, bad, bad_reason

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.buffer[self.bounds[i]:self.bounds[i + 1] - 1].tobytes()

    def first_non_object(self) -> tuple:
        """As pystream._messages.first_non_object (checked by the consumer while copying)."""
        return (self.bad, self.bad_reason) if self.bad >= 0 else (-1, None)


def librdkafka_path() -> str | None:
    """The librdkafka that confluent-kafka uses (its wheels bundle one), else the system's
    by name, else None."""
    import ctypes.util
    import glob
    import os

    import confluent_kafka

    here = os.path.dirname(os.path.abspath(confluent_kafka.__file__))
    bundled = sorted(glob.glob(os.path.join(os.path.dirname(here), "confluent_kafka.libs", "librdkafka*.so*")))
    return bundled[0] if bundled else ctypes.util.find_library("rdkafka")


def _native_settings(config: dict) -> list | None:
    """Consumer settings as librdkafka's (name, text) pairs; None if one is a confluent-kafka
    callback or object, which only confluent-kafka's own consumer can take."""
    out = []
    for k, v in config.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif not isinstance(v, (str, int, float)):
            return None
        out.append((str(k), str(v)))
    return out


#: Consumer settings the sources start from (a source's `config` overrides them). librdkafka
#: stops fetching a partition once its local queue holds `queued.min.messages` (100k) and
#: then waits `fetch.queue.backoff.ms`, by default a whole second: a consumer that keeps up
#: in batches hit that wait again and again (measured on the mock cluster: 0.17M messages/s;
#: with 10 ms, 0.8M).
CONSUMER_DEFAULTS = {"fetch.queue.backoff.ms": 10}


class Kafka(Source):
    """`ps.sources.Kafka(topic, bootstrap, decoder="json", batch_size=10000, stop_at_end=False)`.

    native: None reads with pystream's own consumer where it can (the JSON decoder, settings
    without confluent-kafka callbacks, librdkafka found), True requires it, False always uses
    confluent-kafka's consume()."""

    replayable = True

    def __init__(self, topic: str, bootstrap: str, decoder="json", batch_size: int = 10_000, stop_at_end: bool = False,
                 poll_timeout: float = 0.1, config: dict | None = None, name: str | None = None,
                 native: bool | None = None):
        _require()
        if native not in (None, True, False):
            raise ValueError(f"native must be None (when it can), True or False, got {native!r}")
        if decoder != "json" and not callable(decoder):
            raise ValueError(f"decoder must be 'json' or a function(values: list[bytes]) -> columns, got {decoder!r}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.topic, self.bootstrap, self.batch_size, self.stop_at_end = topic, bootstrap, batch_size, stop_at_end
        self.decoder = decode_json if decoder == "json" else decoder
        self.poll_timeout, self.config = poll_timeout, dict(config or {})
        self.name = name or topic
        self.native = native

    def fingerprint(self) -> str:
        return f"Kafka:{self.name}:{self.topic}"

    def _settings(self) -> dict:
        return {"bootstrap.servers": self.bootstrap, "group.id": f"pystream-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False, "enable.partition.eof": False, "isolation.level": "read_committed",
                "auto.offset.reset": "earliest", **CONSUMER_DEFAULTS, **self.config}

    def _consumer(self):
        from confluent_kafka import Consumer

        return Consumer(self._settings())

    def _native_consumer(self):
        """pystream's own consumer (whole batches, no Python object per message), used for the
        JSON decoder unless native=False; None where it cannot be (native=True then raises)."""
        if self.native is False:
            return None
        why = None
        settings = _native_settings(self._settings())
        lib = librdkafka_path()
        try:
            from . import _kafka
        except ImportError:
            _kafka = None
        if _kafka is None:
            why = "this build of pystream has no native Kafka consumer (pystream._kafka)"
        elif self.decoder is not decode_json:
            why = "it decodes JSON values only (this source has a custom decoder)"
        elif settings is None:
            why = "config holds confluent-kafka callbacks or objects"
        elif lib is None:
            why = "no librdkafka library was found"
        if why is None:
            return _kafka.Consumer(lib, settings)
        if self.native:
            raise ValueError(f"Kafka source {self.name!r}: native=True, but the native consumer cannot run: {why}")
        return None

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
        c = self._consumer()  # metadata and end offsets; the data too without the native consumer
        fast = self._native_consumer()
        try:
            marks = {p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in parts}
            ends = {p: hi for p, (_lo, hi) in marks.items()}
            # From the first offset the partition holds, not OFFSET_BEGINNING: a logical offset
            # is resolved by a query that librdkafka retries on a 500 ms timer when the
            # partition's leader is not yet known, which it never is right after assign.
            start = [pos.get(p, marks[p][0] if marks[p][0] >= 0 else OFFSET_BEGINNING) for p in parts]
            if fast is not None:
                fast.assign(self.topic, parts, start)
            else:
                c.assign([TopicPartition(self.topic, p, o) for p, o in zip(parts, start)])
            tps = [TopicPartition(self.topic, p) for p in parts]
            last_msg = time.monotonic()
            while True:
                if fast is not None:
                    got = fast.consume(self.batch_size, int(self.poll_timeout * 1000))
                    if got["error"]:
                        raise RuntimeError(f"Kafka topic {self.topic!r}: Kafka message {got['error']}")
                    empty = not len(got["offset"])
                else:
                    msgs = c.consume(self.batch_size, self.poll_timeout)
                    empty = not msgs
                if empty:
                    # The consumer's position also steps over transaction markers, which are
                    # never delivered: compare it, not the last message, with the end offsets;
                    # an aborted or marker-only tail ends the read after 3 s without messages.
                    quiet = time.monotonic() - last_msg
                    if self.stop_at_end:
                        at = fast.positions(self.topic, parts) if fast is not None else [tp.offset for tp in c.position(tps)]
                        if quiet >= 3.0 or all(o >= ends[p] or ends[p] == 0 for p, o in zip(parts, at)):
                            return
                    yield None, dict(pos), None
                    continue
                last_msg = time.monotonic()
                batches = self.batches_of(msgs) if fast is None else self._batches(
                    got["partition"], got["offset"], got["timestamp"],
                    JoinedValues(got["values"], got["bounds"], got["bad"], got["bad_reason"]))
                for p, batch in batches:
                    pos[p] = int(batch["kafka_offset"][-1]) + 1
                    yield batch, dict(pos), p
        finally:
            if fast is not None:
                fast.close()
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
        return self._batches(part, offs, kts, values)

    def _batches(self, part, offs, kts, values):
        """batches_of from columns: partition, offset and timestamp arrays and the values (a
        list of bytes, or JoinedValues from the native consumer)."""
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
