"""Type stub of the native engine (csrc/bindings.cpp). Native types in comments."""

from typing import Optional, Sequence, TypedDict

import numpy as np

MAX_ABS_TIME: int  # 2**62 ns: timestamps must lie in [-MAX_ABS_TIME, MAX_ABS_TIME]
MAX_DURATION: int  # 2**60 ns: the largest window size, lateness, out-of-orderness

class Emitted(TypedDict):
    key: Optional[np.ndarray]  # int64[rows], None for a non-keyed operator
    start: np.ndarray  # int64[rows], window start in ns / out_div
    end: np.ndarray  # int64[rows]
    update: np.ndarray  # bool[rows]: a late re-firing
    cols: list[np.ndarray]  # one per aggregation: int64 (count) or float64
    late: np.ndarray  # int64: batch row indices late for all their windows
    invalid: np.ndarray  # int64: batch row indices refused by the max_future guard

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
        aggs: Sequence[tuple[int, int]],  # (AggKind code, ddof)
        out_div: int = 1,  # window bounds are output as ns // out_div
    ) -> None: ...
    def process(
        self,
        keys: Optional[np.ndarray],  # const int64_t[n]
        ts: np.ndarray,  # const int64_t[n], in units of unit_ns
        values: Sequence[Optional[np.ndarray]],  # const double[n] per aggregation (None for count)
        unit_ns: int = 1,
    ) -> Emitted: ...
    def flush(self) -> Emitted: ...
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

class TupleInterner:
    def __init__(self, width: int) -> None: ...
    def intern(self, cols: Sequence[np.ndarray]) -> np.ndarray: ...  # int64 ids
    def column(self, ids: np.ndarray, c: int) -> np.ndarray: ...
    def rows(self) -> np.ndarray: ...
    def assign(self, rows: np.ndarray) -> None: ...
    def __len__(self) -> int: ...
