"""Aggregations: `ps.agg.sum("kwh")`, `ps.agg.count()`, ... Each maps to a native policy struct."""

from __future__ import annotations

from dataclasses import dataclass

# Kind codes shared with csrc/agg_column.h (AggKind).
_KINDS = {"count": 0, "sum": 1, "min": 2, "max": 3, "mean": 4, "first": 5, "last": 6, "var": 7, "std": 8}


@dataclass(frozen=True)
class Agg:
    """One aggregation of a value column (none for count)."""

    kind: str
    column: str | None = None
    ddof: int = 1

    @property
    def code(self) -> int:
        return _KINDS[self.kind]

    @property
    def keeps_input_dtype(self) -> bool:
        """min/max/first/last return one of the inputs, so integer inputs come back as integers."""
        return self.kind in ("min", "max", "first", "last")


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


__all__ = ["Agg", "count", "sum", "min", "max", "mean", "first", "last", "var", "std"]
