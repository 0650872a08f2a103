"""Queryable live state: `.aggregate(...).queryable("usage")` and `flow.query("usage", key=...)`.

A queryable window operator answers, while the flow runs:
  - `partial(key)`: the windows that have not fired yet, with their values so far (native peek);
  - `last(key, n)`: the key's last n fired rows (on-time, early and late updates), from a
    bounded history of fired result batches (`history_rows`, oldest batches dropped first);
  - `top(by, k)`: the k keys with the largest `by` in the current window (the open window that
    fires next), or in the last fired window (`window="fired"`);
  - `watermark`.
Consistency: the runtime holds the flow's lock while a batch goes through the graph; every
query takes the same lock (flow.live.reading()), so it sees the state between two batches,
never half of one; the runtime lets waiting queries in after each batch, so they are not
starved. A
query costs microseconds for one key and one pass over the keys for `top`, so ingestion waits
at most that long (measured in benchmarks/test_query.py). No per-row Python: histories are
searched with NumPy over int64 key ids.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from .batch import Batch

DEFAULT_HISTORY_ROWS = 1_000_000


class QueryError(LookupError):
    """A query names something that does not exist (an HTTP 404)."""


class NotStarted(QueryError):
    """The queryable state exists once the flow has started (an HTTP 503)."""


class History:
    """The most recent fired result batches of one operator, with their int64 key ids and the
    `stamp` current when each came (the Ray runtime's round: it orders several operators'
    rows; locally it stays 0)."""

    def __init__(self, max_rows: int = DEFAULT_HISTORY_ROWS):
        if max_rows < 1:
            raise ValueError(f"history_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self.parts: deque[tuple[np.ndarray | None, Batch, int]] = deque()
        self.rows = 0
        self.stamp = 0

    def add(self, key_ids, batch: Batch) -> None:
        self.parts.append((key_ids, batch, self.stamp))
        self.rows += len(batch)
        while self.rows - len(self.parts[0][1]) >= self.max_rows:
            self.rows -= len(self.parts.popleft()[1])

    def last(self, key_id: int | None, n: int, stamps: bool = False):
        """The last n rows of one key (all rows when key_id is None), oldest first (None if
        there are none); with `stamps`, (rows, each row's stamp)."""
        picked: list[Batch] = []
        marks: list[np.ndarray] = []
        need = n
        for ids, batch, stamp in reversed(self.parts):
            if need <= 0:
                break
            idx = np.arange(len(batch)) if key_id is None else np.flatnonzero(ids == key_id)
            if len(idx):
                picked.append(batch.take(idx[-need:]))
                marks.append(np.full(len(picked[-1]), stamp, dtype=np.int64))
                need -= min(need, len(idx))
        rows = Batch.concat(picked[::-1]) if picked else None
        if not stamps:
            return rows
        return rows, (np.concatenate(marks[::-1]) if marks else np.empty(0, dtype=np.int64))

    @staticmethod
    def _on_time(batch: Batch) -> np.ndarray:
        on_time = ~batch["update"] if "update" in batch else np.ones(len(batch), dtype=bool)
        if "final" in batch:
            on_time &= batch["final"]
        return on_time

    def last_firing(self) -> Batch | None:
        """The rows of the newest on-time firing (one window end; firings of a window's keys
        come out in one batch)."""
        for _, batch, _ in reversed(self.parts):
            on_time = self._on_time(batch)
            if on_time.any():
                rows = batch.filter(on_time)
                return rows.filter(rows["window_end"] == rows["window_end"].max())
        return None

    def last_per_key(self) -> Batch | None:
        """Each key's newest on-time fired row, oldest first (for windows whose bounds differ
        per key: sessions, count and global windows)."""
        ids, parts = [], []
        for kid, batch, _ in self.parts:
            on_time = self._on_time(batch)
            if on_time.any():
                parts.append(batch.filter(on_time))
                ids.append(np.zeros(int(on_time.sum()), dtype=np.int64) if kid is None else kid[on_time])
        if not parts:
            return None
        every = np.concatenate(ids)
        _, newest = np.unique(every[::-1], return_index=True)
        return Batch.concat(parts).take(np.sort(len(every) - 1 - newest))


def answer(op, what: str, *args):
    """One window operator's answer to a query (`QueryableState` combines the answers of the
    operators that hold a state's keys: one locally, one per key-group range on Ray):
      - ("partial", key) -> its partial rows (of every key when key is None), None where it
        does not hold the key;
      - ("last", key, n) -> its last n fired rows (of the key) and their history stamps, None
        where it does not hold the key;
      - ("top", by, k, window) -> (the window end the rows belong to, or None where each key
        has its own window; its k rows with the largest `by`), (None, None) when it has none;
      - ("view", key, n) -> the answers to "partial" and "last", and its watermark;
      - ("stats",) -> op.stats() and the rows its history holds;
      - ("watermark",) -> its watermark (None before its first)."""
    if what == "partial":
        try:
            return op.peek(args[0])
        except KeyError:
            return None
    if what == "last":
        key, n = args
        try:
            kid = None if key is None else op.key_id(key)
        except KeyError:
            return None
        rows, stamps = op.history.last(kid, n, stamps=True)
        return (rows if rows is not None else op.empty_result()), stamps
    if what == "view":  # partial and last of one key (or all), and the watermark, from one look
        key, n = args
        return answer(op, "partial", key), answer(op, "last", key, n), op.watermark
    if what == "top":
        return _top_of(op, *args)
    if what == "stats":
        return {**op.stats(), "history_rows": op.history.rows}
    if what == "watermark":
        return op.watermark
    raise ValueError(f"unknown query {what!r}")


def _largest(rows: Batch, by: str, k: int) -> Batch:
    values = np.asarray(rows[by], dtype=np.float64)
    return rows.take(np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")[:k])


def _top_of(op, by: str, k: int, window: str):
    aligned = op.window.aligned
    if window == "open":
        ids, rows = op.peek(with_key_ids=True)
    else:
        rows = op.history.last_firing() if aligned else op.history.last_per_key()
    if rows is None or not len(rows):
        return None, None
    end = None
    if aligned:
        end = rows["window_end"].min() if window == "open" else rows["window_end"].max()
        rows = rows.filter(rows["window_end"] == end)
    elif window == "open":
        ids = np.zeros(len(rows), dtype=np.int64) if ids is None else np.asarray(ids)
        by_key = np.lexsort((rows["window_end"], ids))  # each key's rows, the soonest-ending first
        _, first = np.unique(ids[by_key], return_index=True)
        rows = rows.take(by_key[first])
    return end, _largest(rows, by, k)


class QueryableState:
    """One named, queryable window operator of a running (or finished) flow. Queries go to the
    operators that hold its keys (`_ask`): here the one operator of the local runtime; the Ray
    runtime's state asks one per key-group range, in the actors (pystream/_ray_driver.py)."""

    def __init__(self, name: str, op, live, history_rows: int = DEFAULT_HISTORY_ROWS):
        self.name, self.op, self.live = name, op, live
        op.history = History(history_rows)

    def _ask(self, what: str, *args) -> list:
        """The answers of the operators that hold this state's keys (see `answer`)."""
        return [answer(self.op, what, *args)]

    @property
    def keys(self) -> tuple[str, ...]:
        return self.op.keys

    @property
    def watermark(self) -> int | None:
        with self.live.reading():
            return self.op.watermark

    def _one_key(self, key, answers: list):
        got = [a for a in answers if a is not None]
        if not got:
            raise QueryError(f"{self.name!r} has no key {key!r} (no event of it has arrived yet)")
        return got[0]  # key groups do not overlap: one operator holds the key

    def partial(self, key=None) -> Batch:
        with self.live.reading():
            return self._partial(key, self._ask("partial", key))

    def last(self, key=None, n: int = 10) -> Batch:
        with self.live.reading():
            return self._last(key, n, self._ask("last", key, n))

    def view(self, key=None, n: int = 10) -> tuple[Batch, Batch, int | None]:
        """(partial(key), last(key, n), watermark) from one look at the operators that answered
        (the watermark: the lowest of theirs, the one their open windows are open against; for
        one key on the Ray runtime, that of the actor that holds it). On the Ray runtime one
        Ray call to each actor asked, instead of three."""
        with self.live.reading():
            answers = self._ask("view", key, n)
            marks = [a[2] for a in answers if a[2] is not None]
            return (self._partial(key, [a[0] for a in answers]), self._last(key, n, [a[1] for a in answers]),
                    min(marks) if marks else None)

    def _partial(self, key, answers: list) -> Batch:
        if key is not None:
            return self._one_key(key, answers)
        return _concat(answers, self.op)

    def _last(self, key, n: int, answers: list) -> Batch:
        if key is not None:
            return self._one_key(key, answers)[0]
        found = [(rows, stamps) for rows, stamps in answers if len(rows)]
        if len(found) <= 1:
            return found[0][0] if found else self.op.empty_result()
        # Several operators' rows: the newest n by stamp (on Ray, the round they fired in),
        # then window end.
        every, stamps = Batch.concat([r for r, _ in found]), np.concatenate([s for _, s in found])
        return every.take(np.lexsort((every["window_end"], stamps))[-n:])

    def top(self, by: str, k: int = 10, window: str = "open") -> Batch:
        """The k keys with the largest `by` in the current open window, or the last fired one.
        Where bounds differ per key (sessions, count and global windows, zones per key) each
        key takes part with its own window: the open one that fires next, or its last fired."""
        if by not in self.op.aggs:
            raise QueryError(f"{self.name!r} has no aggregate {by!r}; it has {list(self.op.aggs)}")
        if window not in ("open", "fired"):
            raise ValueError(f"window must be 'open' or 'fired', got {window!r}")
        with self.live.reading():
            found = [(end, rows) for end, rows in self._ask("top", by, k, window) if rows is not None]
        if not found:
            return self.op.empty_result()
        if self.op.window.aligned:  # one window for all keys: the soonest open, or the newest fired
            ends = [end for end, _ in found]
            pick = min(ends) if window == "open" else max(ends)
            found = [(end, rows) for end, rows in found if end == pick]
        return _largest(_concat([rows for _, rows in found], self.op), by, k)

    def describe(self) -> dict:
        with self.live.reading():
            stats = self._ask("stats")
        summed = {name: sum(s[name] for s in stats) for name in ("num_keys", "state_bytes", "open_windows", "history_rows")}
        return {"name": self.name, "keys": list(self.op.keys), "aggregates": list(self.op.aggs),
                "window": repr(self.op.window), "watermark": self.watermark, **summed}


def _concat(parts: list, op) -> Batch:
    parts = [p for p in parts if p is not None]
    rows = [p for p in parts if len(p)]
    if len(rows) == 1:
        return rows[0]
    if rows:
        return Batch.concat(rows)
    return parts[0] if parts else op.empty_result()


def to_records(batch: Batch) -> list[dict]:
    """Rows as JSON-ready dicts: datetime64 -> ISO 8601 strings, NaN -> None, NumPy scalars ->
    Python (column by column, so the per-row work is the dict building only)."""
    cols = {}
    for name in batch.columns:
        arr = batch[name]
        if arr.dtype.kind == "M":
            vals = np.datetime_as_string(arr, unit="ms").tolist()
        elif arr.dtype.kind == "f":
            vals = [v if math.isfinite(v) else None for v in arr.tolist()]
        else:
            vals = arr.tolist()
        cols[name] = vals
    names = list(cols)
    return [dict(zip(names, row)) for row in zip(*cols.values())] if names else []


def to_arrow_ipc(batch: Batch) -> bytes:
    """The batch as an Arrow IPC stream (needs pyarrow: pip install 'pystream[arrow]')."""
    import pyarrow as pa

    table = pa.table({name: batch[name] for name in batch.columns})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
