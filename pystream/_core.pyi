"""Type stub of the native engine (csrc/bindings.cpp). Native types in comments."""

from typing import Optional, Sequence, TypedDict

import numpy as np

MAX_ABS_TIME: int  # 2**62 ns: timestamps must lie in [-MAX_ABS_TIME, MAX_ABS_TIME]
ROUTE_ALIGN: int  # bytes: route_rows / route_chunks start each array laid out in `out` on a multiple of this
MAX_DURATION: int  # 2**60 ns: the largest window size, lateness, out-of-orderness

def route_rows(words: Sequence[np.ndarray], n_groups: int, parallelism: int, columns: Sequence[np.ndarray] = (),
               with_order: bool = True, out: Optional[np.ndarray] = None
               ) -> tuple[Optional[np.ndarray], np.ndarray, np.ndarray, list[np.ndarray]]:
    """Key groups of rows (h = mix64(h * C + word) over the key columns' uint64 words, high 32
    bits scaled to [0, n_groups)) and a stable counting sort by owner (group * parallelism // n_groups):
    (order int64, or None without with_order; groups uint16 in that order; bounds int64 of
    parallelism + 1; `columns` in that order: fixed-width dtypes only). With `out` (a writable
    uint8 array), groups and columns are views of it: groups at 0, then each column, each
    starting on a multiple of ROUTE_ALIGN bytes (ValueError naming the sizes where it is short)."""

def route_chunks(words: Sequence[Sequence[np.ndarray]], n_groups: int, parallelism: int,
                 columns: Sequence[Sequence[np.ndarray]], with_order: bool = True, out: Optional[np.ndarray] = None,
                 chunk_bounds: bool = False) -> tuple:
    """route_rows over rows that come as chunks (words[c], columns[c]: chunk c's key words and
    columns, the same columns and dtypes in every chunk), routed as one batch, chunk after chunk:
    equal to route_rows over the joined chunks, without joining them (no copy of the rows).
    With chunk_bounds, a fifth result: int64 (chunks + 1, parallelism), row c the routed
    position where chunk c's rows of each actor begin (row `chunks`: where each actor's end),
    so actor j's rows of chunk c are [cb[c, j], cb[c + 1, j])."""

NO_WATERMARK: int  # a floor (watermark_floors) where no event came before

def watermark_floors(ts: np.ndarray, unit_ns: int, ooo: int, max_future: int, carry: Optional[int] = None,
                     cap: Optional[int] = None, wm: Optional[int] = None
                     ) -> tuple[np.ndarray, Optional[int], Optional[int]]:
    """Per event of one partition (ts in units of unit_ns), the largest event time (ns) of the
    events before it that an engine accepts (max_future < 0: no guard; judged against the
    watermark max(wm, min(max - ooo - 1, cap)), `cap` being what the engine's other partitions
    allow: None, none holds it back; NO_WATERMARK, one has no data), or NO_WATERMARK: the
    `floor` of an engine that holds some of the partition's keys; that time after the batch
    (None: none), the next batch's `carry`; the watermark after it, the next batch's `wm`."""

def regrowth_bytes() -> int:
    """Bytes that engines' output columns have copied, process-wide, because they outgrew their
    buffer (output sized up front copies none)."""

def routed_bytes(rows: int, itemsizes: Sequence[int]) -> int:
    """Bytes the routed groups and columns (of these item sizes) of `rows` rows take laid out in
    route_rows' / route_chunks' `out`."""

class Emitted(TypedDict):
    key: Optional[np.ndarray]  # int64[rows], None for a non-keyed operator
    start: np.ndarray  # int64[rows], window start in ns / out_div
    end: np.ndarray  # int64[rows]
    update: np.ndarray  # bool[rows]: a late re-firing
    cols: list  # one per aggregation: int64 (count, distinct) or float64; (values, counts) for top_k
    handles: Optional[list]  # per aggregation, the (n, 3) log of a handle column (custom ones), else None
    late: np.ndarray  # int64: batch row indices late for all their windows
    invalid: np.ndarray  # int64: batch row indices refused by the max_future guard
    invalid_reason: Optional[np.ndarray]  # uint8 per invalid row (CalendarEngine: 0 future, 1 zone), else None

class WindowEngine:
    def __init__(
        self,
        size: int,  # ns
        slide: int,  # ns, 0 < slide <= size
        offset: int,  # ns, any sign
        ooo: int,  # max out-of-orderness, ns
        lateness: int,  # allowed lateness, ns
        max_future: int,  # ns; < 0 disables the guard
        keyed: bool,
        aggs: Sequence[tuple],  # (AggKind code, ddof, iparam, iparam2, fparam, fparam2, share); trailing ones optional
        out_div: int = 1,  # window bounds are output as ns // out_div
    ) -> None: ...
    def process(
        self,
        keys: Optional[np.ndarray],  # const int64_t[n]
        ts: np.ndarray,  # const int64_t[n], in units of unit_ns
        values: Sequence[Optional[np.ndarray]],  # const double[n] per aggregation (None for count)
        unit_ns: int = 1,
        partition: int = 0,
        floor: Optional[np.ndarray] = None,  # int64 ns per row (watermark_floors), or None
    ) -> Emitted: ...
    def flush(self) -> Emitted: ...
    def advance_watermark(self, watermark: int) -> Emitted: ...
    def peek(self, key: Optional[int] = None) -> Emitted: ...  # partial rows of windows not fired yet (one key or all)
    def set_partition_idle(self, partition: int, idle: bool) -> Emitted: ...
    def raise_partition(self, partition: int, max_ts: int) -> Emitted: ...  # others took its rows up to max_ts (ns)
    @property
    def partitions(self) -> list[dict]: ...
    def live_handles(self, spec: int) -> np.ndarray: ...  # nonzero handles of a custom aggregation's column
    def snapshot(self) -> dict: ...
    def restore(self, state: dict) -> None: ...
    @property
    def watermark(self) -> Optional[int]: ...
    @property
    def num_keys(self) -> int: ...
    @property
    def state_bytes(self) -> int: ...
    @property
    def row_bytes(self) -> int: ...
    @property
    def ring_capacity(self) -> int: ...
    @property
    def live_slices(self) -> int: ...
    @property
    def slice_width(self) -> int: ...
    @property
    def flushed(self) -> bool: ...

class CalendarEngine:
    """Tumbling windows with per-zone bounds (local days, weeks, months); one zone per key."""

    def __init__(
        self,
        ooo: int,
        lateness: int,
        max_future: int,
        keyed: bool,
        aggs: Sequence[tuple[int, int]],
        out_div: int = 1,
        early_every: int = 0,
    ) -> None: ...
    def add_zone(self, bounds: np.ndarray) -> int: ...  # int64 UTC ns, increasing by > 2**45
    def process(
        self,
        keys: Optional[np.ndarray],
        ts: np.ndarray,
        values: Sequence[Optional[np.ndarray]],
        zones: Optional[np.ndarray] = None,  # int32 zone id per row; None: all in zone 0
        unit_ns: int = 1,
        partition: int = 0,
        floor: Optional[np.ndarray] = None,  # int64 ns per row (watermark_floors), or None
    ) -> Emitted: ...
    def flush(self) -> Emitted: ...
    def advance_watermark(self, watermark: int) -> Emitted: ...
    def peek(self, key: Optional[int] = None) -> Emitted: ...  # partial rows of windows not fired yet (one key or all)
    def set_partition_idle(self, partition: int, idle: bool) -> Emitted: ...
    def raise_partition(self, partition: int, max_ts: int) -> Emitted: ...  # others took its rows up to max_ts (ns)
    @property
    def partitions(self) -> list[dict]: ...
    def live_handles(self, spec: int) -> np.ndarray: ...  # nonzero handles of a custom aggregation's column
    def snapshot(self) -> dict: ...
    def restore(self, state: dict) -> None: ...
    @property
    def watermark(self) -> Optional[int]: ...
    @property
    def num_keys(self) -> int: ...
    @property
    def num_zones(self) -> int: ...
    @property
    def state_bytes(self) -> int: ...
    @property
    def ring_capacity(self) -> int: ...

class GlobalEngine:
    """One window per key fired by a trigger: 0 count, 1 event-time interval, 2 processing time."""

    def __init__(self, trigger: int, count: int, interval: int, purge: bool, ooo: int, max_future: int, keyed: bool,
                 aggs: Sequence[tuple[int, int]]) -> None: ...
    def process(self, keys: Optional[np.ndarray], ts: np.ndarray, values: Sequence[Optional[np.ndarray]], unit_ns: int = 1,
                partition: int = 0, floor: Optional[np.ndarray] = None) -> Emitted: ...
    def fire(self) -> Emitted: ...  # the processing-time trigger is due
    def flush(self) -> Emitted: ...
    def advance_watermark(self, watermark: int) -> Emitted: ...
    def peek(self, key: Optional[int] = None) -> Emitted: ...  # partial rows of windows not fired yet (one key or all)
    def set_partition_idle(self, partition: int, idle: bool) -> Emitted: ...
    def raise_partition(self, partition: int, max_ts: int) -> Emitted: ...  # others took its rows up to max_ts (ns)
    @property
    def partitions(self) -> list[dict]: ...
    def live_handles(self, spec: int) -> np.ndarray: ...  # nonzero handles of a custom aggregation's column
    def snapshot(self) -> dict: ...
    def restore(self, state: dict) -> None: ...
    @property
    def watermark(self) -> Optional[int]: ...
    @property
    def num_keys(self) -> int: ...

class KeyIndex:
    """int64 key -> dense int32 slot, first-seen order (csrc/key_index.h)."""
    def __init__(self) -> None: ...
    def intern(self, keys: np.ndarray) -> np.ndarray: ...  # int32 slots
    def keys(self) -> np.ndarray: ...  # slot -> key
    def assign(self, keys: np.ndarray) -> None: ...
    def __len__(self) -> int: ...

class TupleInterner:
    def __init__(self, width: int) -> None: ...
    def intern(self, cols: Sequence[np.ndarray]) -> np.ndarray: ...  # int64 ids
    def column(self, ids: np.ndarray, c: int) -> np.ndarray: ...
    def rows(self) -> np.ndarray: ...
    def assign(self, rows: np.ndarray) -> None: ...
    def __len__(self) -> int: ...
