"""Aggregations: `ps.agg.sum("kwh")`, `ps.agg.count()`, ... Each maps to a native policy struct."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Kind codes shared with csrc/agg_column.h (AggKind). Python-defined aggregations ("custom",
# and the time-weighted ones built on the same mechanism) all use the native handle column.
_KINDS = {"count": 0, "sum": 1, "min": 2, "max": 3, "mean": 4, "first": 5, "last": 6, "var": 7, "std": 8,
          "distinct": 9, "quantile": 10, "top_k": 11, "custom": 12, "time_weighted": 12}


@dataclass(frozen=True)
class Agg:
    """One aggregation of a value column (none for count). `iparam`, `iparam2`, `fparam`,
    `fparam2` are the sketch parameters (see csrc/agg_basic.h AggParams); `impl` is the
    Python side of a custom or time-weighted aggregation (pystream/custom.py)."""

    kind: str
    column: str | None = None
    ddof: int = 1
    iparam: int = 0
    iparam2: int = 0
    fparam: float = 0.0
    fparam2: float = 0.0
    impl: object = None

    @property
    def code(self) -> int:
        return _KINDS[self.kind]

    @property
    def keeps_input_dtype(self) -> bool:
        """min/max/first/last return one of the inputs, so integer inputs come back as integers."""
        return self.kind in ("min", "max", "first", "last")

    @property
    def in_python(self) -> bool:
        """Accumulators kept in Python (the engine keeps a handle per state row)."""
        return self.code == _KINDS["custom"]

    def native(self, share: int = -1) -> tuple:
        """The spec tuple the engines take: (kind, ddof, iparam, iparam2, fparam, fparam2, share)."""
        return (self.code, self.ddof, self.iparam, self.iparam2, float(self.fparam), float(self.fparam2), share)

    def output_names(self, name: str) -> list[str]:
        """Columns this aggregation adds to a result: its name, or for top_k the k values and
        their counts (name_1, name_1_count, ...)."""
        if self.kind != "top_k":
            return [name]
        return [c for j in range(1, self.iparam + 1) for c in (f"{name}_{j}", f"{name}_{j}_count")]

    def fingerprint(self) -> tuple:
        """Identifies the aggregation in checkpoints (stable across processes)."""
        impl = None if self.impl is None else self.impl.fingerprint()
        return (self.kind, self.column, self.ddof, self.iparam, self.iparam2, self.fparam, self.fparam2, impl)


def native_specs(aggs, lead: tuple = ()) -> list[tuple]:
    """Engine spec tuples for `aggs` (after the `lead` specs, e.g. a count window's event
    count); quantiles of one column with the same sketch parameters share one sketch."""
    specs = list(lead)
    sketches: dict[tuple, int] = {}
    for a in aggs:
        share = -1
        if a.kind == "quantile":
            share = sketches.setdefault((a.column, a.iparam, a.fparam), len(specs))
            share = -1 if share == len(specs) else share
        specs.append(a.native(share))
    return specs


#: The event count spec count/global windows put first.
COUNT_SPEC = Agg("count").native()


def _column(kind, column):
    if not isinstance(column, str):
        raise TypeError(f"agg.{kind}() needs a column name (str), got {type(column).__name__} {column!r}")
    return Agg(kind, column)


def count() -> Agg:
    """Number of events in the window (int64)."""
    return Agg("count")


def sum(column: str) -> Agg:  # noqa: A001 - the public name is the contract
    """Compensated (Neumaier) sum, float64. NaN in a window makes it NaN."""
    return _column("sum", column)


def min(column: str) -> Agg:  # noqa: A001
    return _column("min", column)


def max(column: str) -> Agg:  # noqa: A001
    return _column("max", column)


def mean(column: str) -> Agg:
    return _column("mean", column)


def first(column: str) -> Agg:
    """Value of the event with the smallest event time (ties: earliest arrival)."""
    return _column("first", column)


def last(column: str) -> Agg:
    """Value of the event with the largest event time (ties: latest arrival)."""
    return _column("last", column)


def var(column: str, ddof: int = 1) -> Agg:
    """Variance from mergeable moments (Welford/Chan); ddof=1 is the sample variance."""
    if not isinstance(ddof, int) or ddof < 0:
        raise ValueError(f"ddof must be an int >= 0, got {ddof!r}")
    return Agg("var", _column("var", column).column, ddof)


def std(column: str, ddof: int = 1) -> Agg:
    if not isinstance(ddof, int) or ddof < 0:
        raise ValueError(f"ddof must be an int >= 0, got {ddof!r}")
    return Agg("std", _column("std", column).column, ddof)


def count_distinct(column: str, precision: int = 12) -> Agg:
    """Approximate number of distinct values (HyperLogLog, 2^precision one-byte registers per
    window state): relative standard error 1.04 / sqrt(2^precision), 1.6% at the default 12
    (4 KiB per key and open slice); near-exact for small counts. Values are compared as
    float64 (integers up to 2^53 exactly); hash strings to integers first."""
    if not isinstance(precision, int) or not 4 <= precision <= 18:
        raise ValueError(f"count_distinct(precision=) must be an int in 4..18, got {precision!r}")
    return Agg("distinct", _column("count_distinct", column).column, iparam=precision)


def quantile(column: str, q: float, relative_accuracy: float = 0.01, bins: int = 256) -> Agg:
    """Approximate q-quantile (DDSketch): the value at rank floor(q * (n - 1)) (NumPy's
    method='lower') within `relative_accuracy`, for every quantile whose value lies within a
    factor ((1 + a) / (1 - a))^(bins - 1) of the window's largest magnitude (about 160x at
    the defaults); smaller values collapse into the lowest bucket. State: 8 * bins + 24 bytes
    per key and open slice; quantiles of one column with equal parameters share one sketch.
    NaN in a window makes it NaN."""
    if not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be a number in [0, 1], got {q!r}")
    if not isinstance(relative_accuracy, (int, float)) or not 0.0 < relative_accuracy < 1.0:
        raise ValueError(f"quantile(relative_accuracy=) must be in (0, 1), got {relative_accuracy!r}")
    if not isinstance(bins, int) or not 2 <= bins <= 65536:
        raise ValueError(f"quantile(bins=) must be an int in 2..65536, got {bins!r}")
    return Agg("quantile", _column("quantile", column).column, iparam=bins, fparam=float(relative_accuracy),
               fparam2=float(q))


def median(column: str, relative_accuracy: float = 0.01, bins: int = 256) -> Agg:
    return quantile(column, 0.5, relative_accuracy, bins)


def top_k(column: str, k: int = 3, capacity: int | None = None) -> Agg:
    """The k most frequent values with their counts (Misra-Gries with `capacity` counters,
    default max(16, 4k)): output columns name_1..name_k (NaN when fewer distinct values) and
    name_j_count. Counts are exact while a window holds at most `capacity` distinct values,
    otherwise low by at most N / (capacity + 1) for a window of N events; every value more
    frequent than that is listed."""
    if not isinstance(k, int) or not 1 <= k <= 1024:
        raise ValueError(f"top_k(k=) must be an int in 1..1024, got {k!r}")
    capacity = (16 if k <= 4 else 4 * k) if capacity is None else capacity
    if not isinstance(capacity, int) or not k <= capacity <= 65536:
        raise ValueError(f"top_k(capacity=) must be an int in k..65536, got {capacity!r} with k={k}")
    return Agg("top_k", _column("top_k", column).column, iparam=k, iparam2=capacity)


def custom(column: str, init, update, merge, finalize, dtype=np.float64) -> Agg:
    """A user-defined aggregation written with NumPy, run vectorized over groups of events,
    never per event. Accumulators are arrays (or tuples of arrays) whose first axis is the
    group:

      init(n)                 -> n empty accumulators
      update(values, starts)  -> one accumulator per group of `values` (events sorted by
                                 group; group g is values[starts[g]:starts[g+1]], in arrival
                                 order), as np.add.reduceat(values, starts) is for a sum
      merge(a, b)             -> a and b combined, element-wise (associative; b is the later)
      finalize(acc)           -> the output column (`dtype`) for accumulators `acc`

    It works in every window kind: sliding windows merge their slices' accumulators, session
    windows merge sessions. `values` keep the column's dtype, so strings work too."""
    from .custom import Custom

    return Agg("custom", _column("custom", column).column, impl=Custom(init, update, merge, finalize, np.dtype(dtype)))


def time_weighted_mean(column: str, boundary: str = "hold") -> Agg:
    """Time-weighted average of samples (e.g. power), linear between samples by event time.
    boundary="hold" (time windows) holds the first sample back to the window start and the
    last one up to the window end, and divides by the window length; "samples" integrates only
    from the first to the last sample (sessions, count and global windows always do)."""
    from .custom import TimeWeighted

    return Agg("time_weighted", _column("time_weighted_mean", column).column, impl=TimeWeighted("mean", boundary, 1))


def energy(column: str, per="1h", boundary: str = "hold") -> Agg:
    """Integral of samples over event time (trapezoid between samples; boundaries as in
    time_weighted_mean), in sample unit x `per`: power in kW with per="1h" gives kWh."""
    from .custom import TimeWeighted
    from ._duration import parse_duration

    return Agg("time_weighted", _column("energy", column).column,
               impl=TimeWeighted("integral", boundary, parse_duration(per, "energy(per=)")))


__all__ = ["Agg", "count", "sum", "min", "max", "mean", "first", "last", "var", "std", "count_distinct", "quantile",
           "median", "top_k", "custom", "time_weighted_mean", "energy"]
