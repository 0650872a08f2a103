"""`ps.sources.MeterSimulator`: a smart-meter fleet as a replayable source.

Event time advances in blocks (15 minutes by default); each block yields the readings that
*arrive* in it, in arrival order: the block's own readings delayed by up to `max_delay`, the
backlog of meters that were offline and send late (up to `max_backlog`), re-sent duplicates,
and readings from clocks far in the future. Readings of block b come from a generator seeded
with (seed, b), so any block can be regenerated and a replay from a position reproduces the
same batches exactly.
"""

from __future__ import annotations

import time as _time
from typing import Iterator

import numpy as np

from ._duration import parse_duration
from .batch import Batch
from .sources import Source

_MS = 1_000_000  # ns per ms


class MeterSimulator(Source):
    """A fleet of `meters` smart meters.

    Args:
        meters: number of meters; the first `commercial_share` of ids are commercial
            (a reading every 5 minutes), the rest residential (every 15 minutes).
        start: first event time (ISO string); `duration`: how much event time to simulate
            (None: unbounded).
        time_zones: IANA zones assigned to meters round-robin (a `tz` column).
        max_delay: transmission delay of normal readings (uniform up to it).
        offline_share / max_backlog: share of meter-hours in which a meter is offline: it holds
            that hour's readings and sends them as one late burst after the hour, at most
            `max_backlog` after the first of them (so outages are real: no reading for an hour).
        duplicate_share: share of readings sent twice. future_share: share stamped by a clock
            about 75 years ahead (poison timestamps).
        pace: None runs as fast as possible; a number replays that many times faster than real
            time against the runtime clock (1.0 = real time), reporting "no data yet" between blocks.
    Columns: meter_id (int64), ts (int64 ms, event time), kwh (float64 energy in the interval),
    register (float64: the meter's cumulative kWh register at ts, starting from a random
    reading and wrapping at `register_modulus`), tz (str), sent_ts (int64 ms, when sent).
    """

    replayable = True

    def __init__(self, meters: int = 10_000, *, commercial_share: float = 0.2, start: str = "2025-01-01T00:00",
                 duration="1d", block="15m", time_zones=("Europe/Berlin", "Europe/London", "America/New_York"),
                 max_delay="60s", offline_share: float = 0.005, max_backlog="3h", duplicate_share: float = 0.001,
                 future_share: float = 0.00005, seed: int = 0, pace: float | None = None, name: str = "meters",
                 register_modulus: float = 100_000.0):
        if not isinstance(meters, int) or meters <= 0:
            raise ValueError(f"meters must be a positive int, got {meters!r}")
        for share_name, share in (("commercial_share", commercial_share), ("offline_share", offline_share),
                                  ("duplicate_share", duplicate_share), ("future_share", future_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{share_name} must be between 0 and 1, got {share!r}")
        if pace is not None and pace <= 0:
            raise ValueError(f"pace must be > 0 (times faster than real time) or None, got {pace!r}")
        self.meters, self.commercial_share, self.seed, self.pace, self.name = meters, commercial_share, seed, pace, name
        self.start_ms = int(np.datetime64(start, "ms").astype(np.int64))
        self.block_ms = parse_duration(block, "block") // _MS
        if self.block_ms <= 0 or self.block_ms % (5 * 60_000):
            raise ValueError(f"block must be a positive multiple of 5 minutes, got {block!r}")
        self.blocks = None if duration is None else -(-parse_duration(duration, "duration") // _MS // self.block_ms)
        self.max_delay_ms = parse_duration(max_delay, "max_delay") // _MS
        self.max_backlog_ms = parse_duration(max_backlog, "max_backlog") // _MS
        self.offline_share, self.duplicate_share, self.future_share = offline_share, duplicate_share, future_share
        self.time_zones = np.array(time_zones, dtype=str)
        if not register_modulus > 0:
            raise ValueError(f"register_modulus must be > 0, got {register_modulus!r}")
        self.register_modulus = float(register_modulus)
        self._lookback = 1 + (self.max_delay_ms + self.max_backlog_ms) // self.block_ms

    def fingerprint(self) -> str:
        return (f"MeterSimulator:{self.name}:{self.meters}:{self.commercial_share}:{self.start_ms}:{self.block_ms}:"
                f"{self.seed}:{self.blocks}")

    def _generated(self, b: int) -> dict[str, np.ndarray]:
        """The readings whose event time falls in block b, with their send times (cached for
        the look-back window: each block is needed by the next `lookback` blocks too)."""
        cache = self.__dict__.setdefault("_cache", {})
        if b not in cache:
            cache[b] = self._generate(b)
            for old in [k for k in cache if k < b - self._lookback]:
                del cache[old]
        return cache[b]

    def _generate(self, b: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, b])
        n_com = int(self.meters * self.commercial_share)
        t0 = self.start_ms + b * self.block_ms
        per_block = self.block_ms // 60_000
        com = np.arange(n_com, dtype=np.int64)
        res = np.arange(n_com, self.meters, dtype=np.int64)
        ids, ts = [], []
        for q in range(per_block // 15):  # each 15-minute slot of the block
            base = t0 + q * 15 * 60_000
            ids += [com, com, com, res]
            ts += [np.full(n_com, base, dtype=np.int64), np.full(n_com, base + 5 * 60_000, dtype=np.int64),
                   np.full(n_com, base + 10 * 60_000, dtype=np.int64), base + (res % 15) * 60_000]
        ids = np.concatenate(ids)
        ts = np.concatenate(ts) + rng.integers(0, 60_000, len(ids))  # the meter's second within its minute
        hour = ((ts // 3_600_000) % 24).astype(float)
        load = 0.3 + 0.7 * np.exp(-((hour - 19) ** 2) / 8.0) + 0.3 * np.exp(-((hour - 8) ** 2) / 4.0)
        kwh = np.round(load * np.where(ids < n_com, 5 / 12, 1 / 4) * rng.gamma(4.0, 0.25, len(ids)), 4)
        register = self._registers(b, ids, ts, kwh)
        sent = ts + rng.integers(0, self.max_delay_ms + 1, len(ids))
        # Offline meter-hours: decided per (seed, hour) so every block agrees; the hour's readings
        # go out together after it ends, within max_backlog of the hour's start.
        hour = (ts - self.start_ms) // 3_600_000
        held = np.zeros(len(ids), dtype=bool)
        for h in np.unique(hour):
            offline = np.random.default_rng([self.seed, 1_000_003, int(h)]).random(self.meters) < self.offline_share
            held |= (hour == h) & offline[ids]
        if held.any():
            hour_end = self.start_ms + (hour[held] + 1) * 3_600_000
            slack = max(0, self.max_backlog_ms - 3_600_000)
            burst = np.random.default_rng([self.seed, 2_000_003, b]).integers(0, slack + 1, int(held.sum()))
            sent[held] = hour_end + burst
        poison = rng.random(len(ids)) < self.future_share
        ts = np.where(poison, ts + 75 * 365 * 86_400_000, ts)
        dup = rng.random(len(ids)) < self.duplicate_share
        cols = {"meter_id": ids, "ts": ts, "kwh": kwh, "register": register, "sent_ts": sent}
        if dup.any():  # a re-send: the same reading again, a few minutes later
            again = {k: v[dup] for k, v in cols.items()}
            again["sent_ts"] = again["sent_ts"] + rng.integers(60_000, 600_000, int(dup.sum()))
            cols = {k: np.concatenate([v, again[k]]) for k, v in cols.items()}
        return cols

    def _registers(self, b: int, ids, ts, kwh) -> np.ndarray:
        """Each reading's register: the meter's total before block b plus its energy in this
        block up to and including the reading (in event-time order), modulo the register size.
        Totals at block boundaries are kept, so a replay from block b regenerates 0..b-1 once."""
        bases = self.__dict__.setdefault("_bases", {})
        energy = self.__dict__.setdefault("_energy", {})
        if 0 not in bases:
            start = np.random.default_rng([self.seed, 3_000_017]).uniform(0, 0.9, self.meters)
            bases[0] = np.round(start * self.register_modulus, 1)
        k = max(x for x in bases if x <= b)
        while k < b:
            if k not in energy:
                self._generate(k)
            bases[k + 1] = bases[k] + energy[k]
            k += 1
        energy[b] = np.bincount(ids, kwh, minlength=self.meters)
        for old in [x for x in bases if 0 < x < b - 1]:
            del bases[old]
        for old in [x for x in energy if x < b - 1]:
            del energy[old]
        order = np.lexsort((ts, ids))
        sid, e = ids[order], kwh[order]
        run = np.cumsum(e)
        start = np.ones(len(sid), dtype=bool)
        start[1:] = sid[1:] != sid[:-1]
        within = run - np.maximum.accumulate(np.where(start, run - e, 0.0))
        reg = np.empty(len(ids))
        reg[order] = np.round((bases[b][sid] + within) % self.register_modulus, 4)
        return reg

    def block(self, b: int) -> Batch:
        """The readings that arrive (are sent) during block b, in arrival order (the last block
        of a bounded run also takes the backlog that would arrive after it)."""
        lo, hi = self.start_ms + b * self.block_ms, self.start_ms + (b + 1) * self.block_ms
        if self.blocks is not None and b == self.blocks - 1:
            hi = np.iinfo(np.int64).max  # a bounded run ends with everything still in flight
        parts = []
        for g in range(max(0, b - self._lookback), b + 1):
            cols = self._generated(g)
            arrive = (cols["sent_ts"] >= lo) & (cols["sent_ts"] < hi)
            parts.append({k: v[arrive] for k, v in cols.items()})
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.lexsort((cols["meter_id"], cols["sent_ts"]))
        cols = {k: v[order] for k, v in cols.items()}
        tz = self.time_zones[cols["meter_id"] % len(self.time_zones)]
        return Batch({"meter_id": cols["meter_id"], "ts": cols["ts"], "kwh": cols["kwh"], "register": cols["register"],
                      "tz": tz, "sent_ts": cols["sent_ts"]})

    def read(self, position=None) -> Iterator[tuple]:
        from . import clock

        b = 0 if position is None else int(position)
        began_wall, began_block = None, b
        while self.blocks is None or b < self.blocks:
            if self.pace is not None:
                now = clock.current().now_ns()
                began_wall = now if began_wall is None else began_wall
                due = began_wall + int((b + 1 - began_block) * self.block_ms * _MS / self.pace)
                if now < due:  # the block's sends have not all happened yet
                    if isinstance(clock.current(), clock.SystemClock):
                        _time.sleep(min((due - now) / 1e9, 0.2))
                    yield None, b, None
                    continue
            yield self.block(b), b + 1, None
            b += 1
