"""`ps.Batch`: equal-length 1-D NumPy columns, the unit of work everywhere."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np


class Batch:
    """An ordered set of named, equal-length 1-D NumPy columns.

    Works like a read-only mapping from column name to ndarray (iteration gives names),
    while ``len(batch)`` and ``batch.num_rows`` give the number of rows, as with a DataFrame.
    Constructing from arrays does not copy them.
    """

    __slots__ = ("_cols", "_n", "ts")

    def __init__(self, columns: Mapping[str, object] | None = None, *, ts: np.ndarray | None = None):
        cols: dict[str, np.ndarray] = {}
        n = None
        for name, values in (columns or {}).items():
            if not isinstance(name, str):
                raise TypeError(f"column names must be str, got {type(name).__name__} {name!r}")
            arr = np.asarray(values)
            if arr.ndim != 1:
                raise ValueError(f"column {name!r} must be 1-D, got shape {arr.shape}")
            if n is None:
                n = len(arr)
            elif len(arr) != n:
                raise ValueError(
                    f"columns must have equal lengths: {name!r} has {len(arr)} rows, "
                    f"{next(iter(cols))!r} has {n}")
            cols[name] = arr
        self._cols = cols
        self._n = 0 if n is None else n
        if ts is not None and len(ts) != self._n and cols:
            raise ValueError(f"timestamp column has {len(ts)} rows, batch has {self._n}")
        if not cols and ts is not None:
            self._n = len(ts)
        #: int64 ns event times, once a time notion has been assigned (else None).
        self.ts = ts

    # -- mapping protocol ------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._cols[name]
        except KeyError:
            raise KeyError(f"unknown column {name!r}; the batch has {list(self._cols)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._cols

    def __iter__(self) -> Iterator[str]:
        return iter(self._cols)

    def keys(self):
        return self._cols.keys()

    def values(self):
        return self._cols.values()

    def items(self):
        return self._cols.items()

    def get(self, name, default=None):
        return self._cols.get(name, default)

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    @property
    def num_rows(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    def __eq__(self, other):
        if not isinstance(other, Batch):
            return NotImplemented
        return self.columns == other.columns and all(
            np.array_equal(self[c], other[c], equal_nan=self[c].dtype.kind == "f") for c in self.columns)

    __hash__ = None

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}: {v.dtype}" for k, v in self._cols.items())
        return f"Batch({self._n} rows; {cols})"

    # -- row selection ------------------------------------------------------------------------
    @classmethod
    def _trusted(cls, cols: dict, ts: np.ndarray | None) -> "Batch":
        """A batch of columns known to be 1-D arrays of one length, as `ts` (rows of a batch:
        slice, take, without_column): no checks. A window actor builds one per piece of every
        read it takes, so the checks cost per piece, not per row."""
        b = object.__new__(cls)
        b._cols = cols
        b._n = len(next(iter(cols.values()))) if cols else (0 if ts is None else len(ts))
        b.ts = ts
        return b

    def take(self, indices) -> "Batch":
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise ValueError(f"take needs 1-D indices, got shape {idx.shape}")
        return Batch._trusted({k: v[idx] for k, v in self._cols.items()}, None if self.ts is None else self.ts[idx])

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows [start, stop) as views (no copy)."""
        return Batch._trusted({k: v[start:stop] for k, v in self._cols.items()},
                              None if self.ts is None else self.ts[start:stop])

    def without_column(self, name: str) -> "Batch":
        """The batch less column `name` (the same arrays; `name` need not be there)."""
        return Batch._trusted({k: v for k, v in self._cols.items() if k != name}, self.ts)

    def filter(self, mask) -> "Batch":
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self._n,):
            raise ValueError(f"filter mask must have shape ({self._n},), got {mask.shape}")
        return self.take(np.flatnonzero(mask))

    def with_columns(self, **columns) -> "Batch":
        merged = dict(self._cols)
        merged.update(columns)
        return Batch(merged, ts=self.ts)

    def select(self, names: Iterable[str]) -> "Batch":
        return Batch({n: self[n] for n in names}, ts=self.ts)

    @staticmethod
    def concat(batches: Iterable["Batch"]) -> "Batch":
        batches = [b for b in batches]
        if not batches:
            return Batch()
        names = batches[0].columns
        for b in batches[1:]:
            if b.columns != names:
                raise ValueError(f"cannot concatenate batches with different columns: {names} vs {b.columns}")
        has_ts = all(b.ts is not None for b in batches)
        return Batch(
            {n: np.concatenate([b[n] for b in batches]) for n in names},
            ts=np.concatenate([b.ts for b in batches]) if has_ts else None)

    # -- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self._cols)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self._cols)

    def to_arrow(self):
        import pyarrow as pa

        return pa.table(self._cols)

    @classmethod
    def from_pandas(cls, df) -> "Batch":
        return cls({str(c): df[c].to_numpy() for c in df.columns})

    @classmethod
    def from_arrow(cls, table) -> "Batch":
        """A Batch from a pyarrow Table or RecordBatch (strings become object arrays)."""
        return cls({name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names})

    @classmethod
    def from_any(cls, data) -> "Batch":
        """A Batch from a Batch, a mapping of arrays, a pandas DataFrame or a pyarrow Table."""
        if isinstance(data, Batch):
            return data
        if isinstance(data, Mapping):
            return cls(data)
        mod = type(data).__module__
        if mod.startswith("pandas"):
            return cls.from_pandas(data)
        if mod.startswith("pyarrow"):
            return cls.from_arrow(data)
        raise TypeError(f"cannot make a Batch from {type(data).__name__}; give a dict of arrays, a pandas DataFrame or a pyarrow Table")
