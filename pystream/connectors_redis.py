"""Redis (redis-py): a Redis Streams source and a sink writing window results into hashes and
sorted sets for dashboards.

Source: XREAD from a stream in batches; replayable, the position is the last entry id read
(kept in checkpoints). Entry fields become columns (numeric text parsed with NumPy, or by a
`schema`); `redis_id` and `redis_ts` (the id's millisecond part: the time Redis appended the
entry, usable as ingestion time) are added.

Sink: each row sets `HSET <key> <field> <value>` (e.g. key "usage:{meter_id}", field the
window start) and, optionally, `ZADD <zset> <score> <member>` (e.g. the top meters of each
window). Exactly-once by an epoch fence: the epoch's rows are kept in the checkpoint at
pre-commit and applied at commit by a Lua script that skips an epoch at or below the fence
and moves the fence; the writes are idempotent, so a commit interrupted half-way is simply
applied again. Needs redis-py: pip install 'pystream[redis]'.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from .batch import Batch
from .sinks import BufferedSink
from .sources import Source


def _client(url: str):
    try:
        import redis
    except ImportError as e:
        raise ImportError("the Redis connectors need redis-py: pip install 'pystream[redis]'") from e
    return redis.Redis.from_url(url)


def _parse(values: list[bytes], dtype=None) -> np.ndarray:
    raw = np.array(values, dtype=object)
    if dtype is not None:
        return np.array(values).astype(dtype) if np.dtype(dtype).kind != "U" else raw.astype(str)
    text = np.array(values)
    for kind in (np.int64, np.float64):
        try:
            return text.astype(kind)
        except ValueError:
            continue
    return np.array([v.decode() for v in values], dtype=object)


class RedisStream(Source):
    """`ps.sources.RedisStream(stream, url="redis://127.0.0.1:6379/0", batch_size=10000,
    stop_at_end=False, schema=None)`."""

    replayable = True

    def __init__(self, stream: str, url: str = "redis://127.0.0.1:6379/0", batch_size: int = 10_000,
                 block_ms: int = 200, stop_at_end: bool = False, schema: dict | None = None, name: str | None = None):
        self.stream, self.url, self.batch_size, self.block_ms = stream, url, batch_size, block_ms
        self.stop_at_end, self.schema = stop_at_end, dict(schema or {})
        self.name = name or stream
        _client(url)  # the client library is there

    def fingerprint(self) -> str:
        return f"RedisStream:{self.name}:{self.stream}"

    def read(self, position=None) -> Iterator[tuple]:
        r = _client(self.url)
        last = position or "0-0"
        end = None
        if self.stop_at_end:
            info = r.xinfo_stream(self.stream) if r.exists(self.stream) else None
            end = None if info is None else info["last-generated-id"].decode()
            if end is None or end == "0-0":
                return
        while True:
            got = r.xread({self.stream: last}, count=self.batch_size, block=None if self.stop_at_end else self.block_ms)
            entries = got[0][1] if got else []
            if not entries:
                if self.stop_at_end:
                    return
                yield None, last, None
                continue
            ids = [e[0].decode() for e in entries]
            fields = entries[0][1].keys()
            cols = {f.decode(): _parse([e[1].get(f, b"") for e in entries], self.schema.get(f.decode())) for f in fields}
            cols["redis_id"] = np.array(ids, dtype=object)
            cols["redis_ts"] = np.array([int(i.split("-")[0]) for i in ids], dtype=np.int64)
            last = ids[-1]
            yield Batch(cols), last, None
            if end is not None and _id_key(last) >= _id_key(end):
                return


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


_APPLY = """
local fence = tonumber(redis.call('GET', KEYS[1]) or '-1')
local epoch = tonumber(ARGV[1])
if epoch <= fence then return 0 end
local n = tonumber(ARGV[2])
local i = 3
for r = 1, n do
  redis.call('HSET', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if ARGV[i + 3] ~= '' then redis.call('ZADD', ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]) end
  i = i + 6
end
if ARGV[#ARGV] == 'last' then redis.call('SET', KEYS[1], epoch) end
return n
"""


def _template(text: str, batch: Batch) -> np.ndarray:
    """'usage:{meter_id}' -> one string per row (column values substituted, vectorized)."""
    parts = re.split(r"(\{[^}]+\})", text)
    out = np.full(len(batch), "", dtype=object)
    for p in parts:
        if p.startswith("{") and p.endswith("}"):
            col = p[1:-1]
            if col not in batch:
                raise KeyError(f"Redis sink template {text!r}: unknown column {col!r}; the rows have {batch.columns}")
            out = out + batch[col].astype(str).astype(object)
        elif p:
            out = out + p
    return out


class Redis(BufferedSink):
    """`ps.sinks.Redis(url, key="usage:{meter_id}", field="{window_start}", value="kwh",
    zset=None, member="{meter_id}", score=None, name=None)`; see the module note."""

    transactional = True
    durable = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", key: str = "usage:{meter_id}", field: str = "{window_start}",
                 value: str = "kwh", zset: str | None = None, member: str = "{meter_id}", score: str | None = None,
                 name: str | None = None, chunk: int = 5_000):
        self.url, self.key, self.field, self.value = url, key, field, value
        self.zset, self.member, self.score = zset, member, score or value
        self.name = name or f"redis:{key}"
        self.fence = f"pystream:epoch:{self.name}"
        self.chunk = chunk
        self._r = None
        self._pending: list[Batch] = []
        _client(url)

    def fingerprint(self) -> str:
        return f"Redis:{self.name}"

    def open(self) -> None:
        self._r = _client(self.url)
        self._apply = self._r.register_script(_APPLY)
        self._pending = []

    def _args(self, batch: Batch) -> list:
        if self.value not in batch:
            raise KeyError(f"Redis sink {self.name!r}: unknown value column {self.value!r}; the rows have {batch.columns}")
        cols = [_template(self.key, batch), _template(self.field, batch), batch[self.value].astype(str).astype(object)]
        if self.zset is None:
            blank = np.full(len(batch), "", dtype=object)
            cols += [blank, blank, blank]
        else:
            cols += [_template(self.zset, batch), batch[self.score].astype(str).astype(object), _template(self.member, batch)]
        return np.stack(cols, axis=1).ravel().tolist()

    def _write(self, batch: Batch | None, epoch: int) -> None:
        rows = 0 if batch is None else len(batch)
        starts = list(range(0, rows, self.chunk)) or [0]
        for k, a in enumerate(starts):
            part = None if batch is None else batch.slice(a, a + self.chunk)
            args = [] if part is None else self._args(part)
            last = "last" if k == len(starts) - 1 else "more"
            self._apply(keys=[self.fence], args=[epoch, 0 if part is None else len(part), *args, last])

    def pre_commit(self, epoch: int):
        batch = self._take()
        return {"epoch": epoch, "rows": None if batch is None else batch.to_dict()}

    def commit(self, handle) -> None:
        if handle is not None:
            self._write(None if handle["rows"] is None else Batch(handle["rows"]), handle["epoch"])

    def recover(self, handle, epoch: int) -> None:
        if self._r is None:
            self.open()
        if handle is None and epoch < 0:
            self._r.delete(self.fence)  # a fresh run counts epochs from 0 again
        self.commit(handle)

    def flush_epoch(self, epoch: int) -> None:
        batch = self._take()
        if batch is not None:
            self._write(batch, epoch)

    def close(self):
        batch = self._take()
        if batch is not None:
            fence = self._r.get(self.fence)
            self._write(batch, (int(fence) if fence is not None else -1) + 1)
        return self.name
