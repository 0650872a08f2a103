"""File sources: CSV, JSON lines and Parquet, one file or a directory of them (optionally
following new files), read through pyarrow's native readers in whole batches.

Replayable: a position is (file name, rows already read from it); files of a directory are
read in name order, so a replay from a checkpoint resumes exactly where the epoch ended.
"""

from __future__ import annotations

import glob
import os
import time as _time
from typing import Iterator

from .batch import Batch
from .sources import Source

FORMATS = ("csv", "jsonl", "parquet")


class Files(Source):
    """`ps.sources.Files(path, format=None, batch_size=65536, schema=None, follow=False)`.

    path: a file, a directory (every file with the format's extension, in name order) or a glob.
    format: "csv", "jsonl" or "parquet" (default: from the extension).
    schema: optional {column: dtype} (NumPy names: "int64", "float64", "str", "datetime64[ms]"...)
        applied to every batch, so types do not depend on what a file happens to contain.
    follow: keep polling the directory for new files (an unbounded source); files must be
        complete when they appear (write to a temporary name, then rename).
    Needs pyarrow: pip install 'pystream[parquet]'.
    """

    replayable = True

    def __init__(self, path: str, format: str | None = None, batch_size: int = 65_536, schema: dict | None = None,
                 follow: bool = False, poll: float = 0.5, name: str | None = None):
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError("ps.sources.Files needs pyarrow: pip install 'pystream[parquet]'") from e
        self.path = str(path)
        fmt = format or _format_of(self.path)
        if fmt not in FORMATS:
            raise ValueError(f"file format must be one of {FORMATS}, got {fmt!r} (give format= for {self.path!r})")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.format, self.batch_size, self.follow, self.poll = fmt, batch_size, follow, poll
        self.schema = dict(schema or {})
        self.name = name or os.path.basename(os.path.normpath(self.path)) or "files"
        if not follow and not self.files():
            raise FileNotFoundError(f"no {fmt} files at {self.path!r}")

    def fingerprint(self) -> str:
        return f"Files:{self.name}:{self.format}:{self.batch_size}"

    def files(self) -> list[str]:
        if os.path.isdir(self.path):
            ext = {"csv": ".csv", "jsonl": (".jsonl", ".json", ".ndjson"), "parquet": ".parquet"}[self.format]
            return sorted(os.path.join(self.path, n) for n in os.listdir(self.path)
                          if n.endswith(ext) and not n.startswith("."))
        if any(c in self.path for c in "*?["):
            return sorted(glob.glob(self.path))
        return [self.path] if os.path.exists(self.path) else []

    def read(self, position=None) -> Iterator[tuple]:
        done_file, done_rows = (None, 0) if position is None else (position[0], int(position[1]))
        seen: set[str] = set()
        while True:
            progressed = False
            for f in self.files():
                name = os.path.basename(f)
                if name in seen or (done_file is not None and name < done_file):
                    continue
                skip = done_rows if name == done_file else 0
                rows = skip
                for batch in self._batches(f, skip):
                    rows += len(batch)
                    yield batch, (name, rows), None
                seen.add(name)
                done_file, done_rows = name, rows
                progressed = True
            if not self.follow:
                return
            if not progressed:
                _time.sleep(self.poll)
                yield None, (done_file, done_rows), None

    def _batches(self, path: str, skip: int) -> Iterator[Batch]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            reader = pq.ParquetFile(path).iter_batches(batch_size=self.batch_size)
        else:
            reader = self._text_reader(path)
        skipped = 0
        for rb in _checked(reader, path):
            if skipped + rb.num_rows <= skip:
                skipped += rb.num_rows
                continue
            if skipped < skip:
                rb = rb.slice(skip - skipped)
                skipped = skip
            for start in range(0, rb.num_rows, self.batch_size):
                yield self._typed(Batch.from_arrow(rb.slice(start, self.batch_size)), path)

    def _text_reader(self, path: str):
        import pyarrow as pa

        try:
            if self.format == "csv":
                import pyarrow.csv as pacsv

                return pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 22))
            import pyarrow.json as pajson

            with open(path, "rb") as f:
                head = f.read(4096).lstrip()
            # Every line must be an object; pyarrow 26's reader crashes the process on a leading null.
            if head and not head.startswith(b"{"):
                raise ValueError(f"{path}: cannot read it as jsonl: the first line is not a JSON object: {head[:40]!r}")
            table = pajson.read_json(path, read_options=pajson.ReadOptions(block_size=1 << 22))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read it as {self.format}: {e}") from None
        return iter(table.to_batches(max_chunksize=self.batch_size)) if table.num_rows else iter(
            [pa.RecordBatch.from_pydict({})])

    def _typed(self, batch: Batch, path: str) -> Batch:
        if not self.schema:
            return batch
        cols = {}
        for name in batch.columns:
            arr = batch[name]
            want = self.schema.get(name)
            if want is not None:
                try:
                    arr = arr.astype(want)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{path}: column {name!r} cannot be read as {want}: {e}") from None
            cols[name] = arr
        missing = [c for c in self.schema if c not in cols]
        if missing:
            raise KeyError(f"{path}: schema columns {missing} are not in the file (it has {batch.columns})")
        return Batch(cols)

    def __repr__(self):
        return f"Files({self.path!r}, format={self.format!r})"


def _checked(batches, path: str):
    """pyarrow's parse errors, with the file they come from."""
    import pyarrow as pa

    it = iter(batches)
    while True:
        try:
            rb = next(it)
        except StopIteration:
            return
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read it as {os.path.splitext(path)[1].lstrip('.') or 'this format'}: {e}") from None
        yield rb


def _format_of(path: str) -> str | None:
    if os.path.isdir(path):
        kinds = {_format_of(n) for n in os.listdir(path)} - {None}
        return kinds.pop() if len(kinds) == 1 else None
    for ext, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"),
                     (".parquet", "parquet")):
        if path.endswith(ext):
            return fmt
    return None
