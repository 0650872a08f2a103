"""Sinks: where results go, and how they take part in checkpoints.

Protocol (the runtime calls, per sink):
    open()                      once, before any batch
    write(batch)                each output batch, as it is produced
    flush_epoch(epoch)          publish what was written since the last epoch
                                (at-least-once: before the checkpoint; at-most-once: after it)
    pre_commit(epoch) -> h      exactly-once: stage it durably, return a picklable handle
    commit(h)                   exactly-once: make a staged epoch visible (idempotent)
    recover(h, epoch)           on restart from checkpoint `epoch`: commit its pending handle h
                                (if any) and discard anything staged after it
    close() -> result           once, at the end (the value flow.run() returns for this sink)
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import re
import tempfile
import uuid

import numpy as np

from . import _faults
from .batch import Batch


class Sink:
    name: str
    #: supports two-phase commit, so it can take part in exactly-once
    transactional = False
    #: its output survives the process
    durable = False

    def open(self) -> None:
        pass

    def write(self, batch: Batch) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def flush_epoch(self, epoch: int) -> None:
        pass

    def pre_commit(self, epoch: int):
        raise TypeError(f"sink {self.name!r} ({type(self).__name__}) is not transactional")

    def commit(self, handle) -> None:
        raise TypeError(f"sink {self.name!r} ({type(self).__name__}) is not transactional")

    def recover(self, handle, epoch: int) -> None:
        pass

    def close(self):
        return None

    def fingerprint(self) -> str:
        return f"{type(self).__name__}:{self.name}"


class BufferedSink(Sink):
    """A sink that holds an epoch's batches until the runtime publishes them (flush_epoch,
    pre_commit or close)."""

    _pending: list

    def write(self, batch: Batch) -> None:
        if len(batch):
            self._pending.append(batch)

    def _take(self) -> Batch | None:
        batches, self._pending = self._pending, []
        return Batch.concat(batches) if batches else None


def _buffer_rows(value) -> int:
    """A sink's `buffer_rows` (rows it holds in memory before they go to disk), checked."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"buffer_rows must be an int >= 1, got {value!r}")
    return value


class Spool:
    """An epoch's batches for a sink that publishes them later: up to `buffer_rows` rows in
    memory, the rest pickled (protocol 5: NumPy columns as raw bytes) to an unnamed local temp
    file, so memory stays bounded whatever the epoch's size. `drain()` hands them back in
    order, in chunks of about `buffer_rows` rows, and empties the spool."""

    def __init__(self, buffer_rows: int = 65_536):
        self.buffer_rows = _buffer_rows(buffer_rows)
        self._mem: list[Batch] = []
        self._mem_rows = 0
        self._file = None  # spilled chunks, in order
        self.rows = 0

    def add(self, batch: Batch) -> None:
        if not len(batch):
            return
        self._mem.append(batch)
        self._mem_rows += len(batch)
        self.rows += len(batch)
        if self._mem_rows >= self.buffer_rows:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="pystream-spool-")
            pickle.dump(Batch.concat(self._mem), self._file, protocol=5)
            self._mem, self._mem_rows = [], 0

    def drain(self):
        """The spooled batches, oldest first, as chunks (a generator); the spool is empty after."""
        f, mem = self._file, self._mem
        self._file, self._mem, self._mem_rows, self.rows = None, [], 0, 0
        if f is not None:
            with f:
                f.seek(0)
                while True:
                    try:
                        yield pickle.load(f)
                    except EOFError:
                        break
        if mem:
            yield Batch.concat(mem)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._mem, self._mem_rows, self.rows = None, [], 0, 0


class Collect(Sink):
    """Keeps every batch in memory; `flow.run()` returns them concatenated under `name`.
    In-process only: its contents do not survive a crash, so it cannot be exactly-once."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"Collect needs a non-empty name, got {name!r}")
        self.name = name
        self._batches: list[Batch] = []

    def open(self) -> None:
        self._batches = []

    def write(self, batch: Batch) -> None:
        self._batches.append(batch)

    def close(self) -> Batch:
        nonempty = [b for b in self._batches if len(b)]
        if nonempty:
            return Batch.concat(nonempty)
        return self._batches[0] if self._batches else Batch()


class Discard(Sink):
    """Counts rows and drops them: for flows whose results are read live through queryable
    state (`.queryable(...)`) rather than stored. `flow.run()` returns the row count."""

    def __init__(self, name: str):
        self.name = name
        self.rows = 0

    def open(self) -> None:
        self.rows = 0

    def write(self, batch: Batch) -> None:
        self.rows += len(batch)

    def close(self) -> int:
        return self.rows


class Print(Sink):
    """Prints each non-empty batch (for exploring a flow)."""

    def __init__(self, name: str = "print", max_rows: int = 10):
        self.name = name
        self.max_rows = max_rows

    def write(self, batch: Batch) -> None:
        if len(batch):
            print(f"[{self.name}] {batch!r}")
            print(batch.slice(0, self.max_rows).to_dict())


_PART = re.compile(r"^part-(\d{8})(?:-([0-9a-z]+))?\.(csv|parquet)$")


class Files(BufferedSink):
    """Part files in a directory, one per epoch: transactional, so exactly-once works with no
    server.

    An epoch's rows go to its file as they come (a temp name in the directory, whole batches
    of up to `buffer_rows` rows at a time: one Parquet row group or a run of CSV lines each),
    so memory holds at most `buffer_rows` rows whatever an epoch's size, and a run without
    checkpoints, one epoch long, streams to disk too.
    exactly-once: at pre-commit the epoch's file is fsynced and renamed to
    `.pending-part-EPOCH.EXT`, at commit to `part-EPOCH.EXT`; recovery commits the
    checkpoint's pending epoch and deletes anything staged or half-written after it.
    at-least/at-most-once and plain runs: `part-EPOCH-RUNID.EXT`, published atomically at each
    epoch; a replay after a crash writes new files (its duplicates stay visible and countable).
    Every batch of an epoch must have the first one's column types (or ones Arrow casts to
    them safely). `Files.read(path)` returns every committed part, in epoch order, as one Batch.
    """

    transactional = True
    durable = True

    def __init__(self, path: str, format: str = "csv", name: str | None = None, buffer_rows: int = 65_536):
        if format not in ("csv", "parquet"):
            raise ValueError(f"Files format must be 'csv' or 'parquet', got {format!r}")
        if format == "parquet":
            _require_pyarrow("Files(format='parquet')")
        self.path = str(path)
        self.format = format
        self.name = name or os.path.basename(os.path.normpath(self.path)) or "files"
        self.buffer_rows = _buffer_rows(buffer_rows)
        self._pending: list[Batch] = []
        self._buffered = 0
        self._file: _PartWriter | None = None  # this epoch's rows on disk so far
        self._run = uuid.uuid4().hex[:8]
        #: set by a runtime that runs one copy of this sink per worker: names each copy's parts
        self.instance: str | None = None

    def _tag(self) -> str:
        return "" if self.instance is None else f"-{self.instance}"

    def fingerprint(self) -> str:
        return f"Files:{self.name}:{self.format}"

    def open(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        self._pending, self._buffered = [], 0
        if self._file is not None:  # a reopened sink (a restart): the unpublished rows are replayed
            self._file.abort()
            self._file = None

    def write(self, batch: Batch) -> None:
        if len(batch):
            self._pending.append(batch)
            self._buffered += len(batch)
            if self._buffered >= self.buffer_rows:
                self._spill()

    def _spill(self) -> None:
        """The buffered rows to the epoch's file."""
        batch, self._buffered = self._take(), 0
        if batch is None:
            return
        if self._file is None:
            self._file = _PartWriter(self.path, self.format, self.name)
        self._file.write(batch)

    def _finish(self) -> str | None:
        """The epoch's file, complete and fsynced (its temp path), or None: no rows."""
        self._spill()
        f, self._file = self._file, None
        return None if f is None else f.close()

    def flush_epoch(self, epoch: int) -> None:
        tmp = self._finish()
        if tmp is not None:
            self._publish(tmp, f"part-{epoch:08d}-{self._run}{(self.instance or '')}.{self.format}")

    def pre_commit(self, epoch: int):
        tmp = self._finish()
        if tmp is None:
            return None
        staged = f".pending-part-{epoch:08d}{self._tag()}.{self.format}"
        self._publish(tmp, staged)
        return {"epoch": epoch, "staged": staged, "final": f"part-{epoch:08d}{self._tag()}.{self.format}"}

    def commit(self, handle) -> None:
        if handle is None:
            return
        src, dst = os.path.join(self.path, handle["staged"]), os.path.join(self.path, handle["final"])
        if os.path.exists(src):
            os.replace(src, dst)
            _fsync_dir(self.path)
        elif not os.path.exists(dst):
            raise RuntimeError(f"sink {self.name!r}: epoch {handle['epoch']} is neither staged nor committed in "
                               f"{self.path!r}; its output was lost outside pystream")

    def recover(self, handle, epoch: int) -> None:
        os.makedirs(self.path, exist_ok=True)
        self.commit(handle)
        for p in glob.glob(os.path.join(self.path, ".pending-part-*")) + glob.glob(os.path.join(self.path, ".tmp-*")):
            m = re.search(r"part-(\d{8})", p)
            if m is None or int(m.group(1)) > epoch:
                with contextlib.suppress(FileNotFoundError):  # another worker's recovery got there first
                    os.unlink(p)

    def close(self):
        # A run without checkpoints publishes everything at the end.
        self.flush_epoch(0)
        return self.path

    def _publish(self, tmp: str, name: str) -> None:
        """A complete, fsynced temp file under its final name, atomically."""
        try:
            _faults.maybe_crash("publish")
            os.replace(tmp, os.path.join(self.path, name))
            _fsync_dir(self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @staticmethod
    def parts(path: str) -> list[str]:
        """Committed part files in epoch order."""
        names = [n for n in os.listdir(path) if _PART.match(n)]
        return [os.path.join(path, n) for n in sorted(names)]

    @staticmethod
    def read(path: str) -> Batch:
        """Every committed part file in `path`, in epoch order, as one Batch."""
        batches = []
        for p in Files.parts(path):
            if p.endswith(".parquet"):
                import pyarrow.parquet as pq

                batches.append(Batch.from_arrow(pq.read_table(p)))
            else:
                batches.append(_read_csv(p))
        return Batch.concat(batches)


class _PartWriter:
    """One part file written batch by batch under a temp name in `directory` (`.tmp-*`, which
    recovery deletes and readers skip): Parquet with one row group per batch, or CSV with the
    header once. The first batch sets the column types."""

    def __init__(self, directory: str, fmt: str, sink: str):
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f".{fmt}", dir=directory)
        os.close(fd)
        self.fmt, self.sink = fmt, sink
        self.writer = None  # a pyarrow ParquetWriter / CSVWriter once the first batch set the schema
        self.schema = None
        self.columns: list | None = None  # (without pyarrow, CSV) the header
        self.plain = False  # CSV by the standard library (no pyarrow: Parquet needs it, checked up front)
        if fmt == "csv":
            try:
                import pyarrow.csv  # noqa: F401
            except ImportError:
                self.plain = True

    def write(self, batch: Batch) -> None:
        if self.plain:
            self._write_plain_csv(batch)
            return
        import pyarrow as pa

        table = batch.to_arrow()
        if self.schema is None:
            self.schema = table.schema
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(self.tmp, table.schema)
            else:
                import pyarrow.csv as pacsv

                self.writer = pacsv.CSVWriter(self.tmp, table.schema)
        elif table.schema != self.schema:
            try:
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                raise ValueError(f"sink {self.sink!r}: a batch's columns {table.schema.names} with types "
                                 f"{[str(t) for t in table.schema.types]} do not match this epoch's earlier batches' "
                                 f"{[str(t) for t in self.schema.types]} ({e})") from None
        self.writer.write_table(table)

    def _write_plain_csv(self, batch: Batch) -> None:
        import csv

        with open(self.tmp, "a", newline="") as f:
            w = csv.writer(f)
            if self.columns is None:
                self.columns = list(batch.columns)
                w.writerow(self.columns)
            elif list(batch.columns) != self.columns:
                raise ValueError(f"sink {self.sink!r}: a batch's columns {list(batch.columns)} differ from this "
                                 f"epoch's earlier batches' {self.columns}")
            w.writerows(zip(*(batch[c].tolist() for c in self.columns)))

    def close(self) -> str:
        """Closes and fsyncs the file; returns its temp path."""
        if self.writer is not None:
            self.writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        return self.tmp

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self.writer is not None:
                self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _require_pyarrow(what: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{what} needs pyarrow: pip install 'pystream[parquet]'") from e


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_csv(path: str) -> Batch:
    try:
        import pyarrow.csv as pacsv
    except ImportError:
        import csv

        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        return Batch({h: _typed(np.array([r[i] for r in body], dtype=str)) for i, h in enumerate(header)})
    return Batch.from_arrow(pacsv.read_csv(path))


def _typed(text: np.ndarray) -> np.ndarray:
    """A CSV column read without pyarrow: int64, float64 or bool when every value parses as
    one (as pyarrow would infer), else strings."""
    for kind in (np.int64, np.float64):
        try:
            return text.astype(kind)
        except ValueError:
            continue
    if len(text) and np.isin(text, ["True", "False", "true", "false"]).all():
        return np.char.lower(text) == "true"
    return text.astype(object)


__all__ = ["Sink", "BufferedSink", "Spool", "Collect", "Discard", "Print", "Files", "Postgres", "Kafka", "Redis"]


def __getattr__(name: str):
    """Connector sinks load on first use (their client libraries are optional extras)."""
    if name == "Postgres":
        from .connectors_postgres import Postgres

        return Postgres
    if name == "Kafka":
        from .connectors_kafka import KafkaSink

        return KafkaSink
    if name == "Redis":
        from .connectors_redis import Redis

        return Redis
    raise AttributeError(f"module 'pystream.sinks' has no attribute {name!r}")
