"""Sources: where batches come from."""

from __future__ import annotations

from typing import Iterator

from .batch import Batch


class Source:
    """A source yields Batches. Bounded sources end; the runtime then flushes all windows.

    A replayable source (`replayable = True`) can restart from a position it reported: `read`
    yields (batch, position after the batch), and `read(position)` resumes right after it.
    Checkpoints store these positions; exactly-once and at-least-once need them.
    """

    name = "source"
    replayable = False

    def read(self, position=None) -> Iterator[tuple]:  # pragma: no cover - interface
        """Yields (batch, position after it[, partition label]); a batch of None means "no data
        right now" (an unbounded source polling), so the runtime can do its wall-clock checks."""
        raise NotImplementedError

    def partitions(self) -> list:
        """The partition labels known before reading (each holds the watermark back until it
        sends data or goes idle). A partition that first shows up later joins then."""
        return [getattr(self, "partition", None)]

    def batches(self) -> Iterator[Batch]:
        for item in self.read(None):
            if item[0] is not None:
                yield item[0]

    def fingerprint(self) -> str:
        """What identifies this source in a checkpoint (a changed source makes it incompatible)."""
        return f"{type(self).__name__}:{self.name}"


class Arrays(Source):
    """In-memory columns (a dict of arrays, a pandas DataFrame, a pyarrow Table or a Batch),
    served in slices of `batch_size` rows without copying."""

    def __init__(self, data, batch_size: int = 65_536, name: str = "arrays", partition=None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.data = Batch.from_any(data)
        self.batch_size = batch_size
        self.name = name
        #: a label for this source's one partition (None: the source is its own partition)
        self.partition = partition

    replayable = True

    def read(self, position=None) -> Iterator[tuple[Batch, int]]:
        """Batches from row `position` on (0 when None); the position after each is its end row."""
        n = len(self.data)
        start = 0 if position is None else int(position)
        if not 0 <= start <= n:
            raise ValueError(f"position {position!r} is outside this source's {n} rows")
        while start < n:
            stop = min(start + self.batch_size, n)
            yield self.data.slice(start, stop), stop, self.partition
            start = stop

    def fingerprint(self) -> str:
        return f"Arrays:{self.name}:{len(self.data)}:{self.batch_size}:{self.data.columns}"

    def __repr__(self):
        return f"Arrays({len(self.data)} rows, batch_size={self.batch_size})"


from .connectors_files import Files  # noqa: E402  (re-exported as ps.sources.Files)
from .simulator import MeterSimulator  # noqa: E402  (re-exported as ps.sources.MeterSimulator)

__all__ = ["Source", "Arrays", "Files", "MeterSimulator", "Kafka", "MQTT", "RedisStream"]


def __getattr__(name: str):
    """Connector sources load on first use (their client libraries are optional extras)."""
    if name == "Kafka":
        from .connectors_kafka import Kafka

        return Kafka
    if name == "RedisStream":
        from .connectors_redis import RedisStream

        return RedisStream
    if name == "MQTT":
        from .connectors_mqtt import MQTT

        return MQTT
    raise AttributeError(f"module 'pystream.sources' has no attribute {name!r}")
