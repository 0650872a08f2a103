"""Key columns -> one int64 key per row, and back.

Integer columns pass through as int64 (no copy when already int64). String/object columns
are interned to dense ids by the Cython ObjectInterner. Several key columns become one id
through the native TupleInterner. Ids are stable for the life of the operator, so they can
live in window state and checkpoints.
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._intern import ObjectInterner


class _IntColumn:
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype

    def encode(self, arr):
        if arr.dtype != self.dtype:
            if arr.dtype.kind in "iub" and np.can_cast(arr.dtype, self.dtype):
                return arr.astype(np.int64)
            raise TypeError(f"key column {self.name!r} changed dtype from {self.dtype} to {arr.dtype} between batches")
        if arr.dtype == np.uint64 and len(arr) and int(arr.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"key column {self.name!r} holds {int(arr.max())}, above the int64 range of keys")
        return np.ascontiguousarray(arr, dtype=np.int64)

    def decode(self, ids):
        return ids if self.dtype == np.int64 else ids.astype(self.dtype)

    def snapshot(self):
        return {"kind": "int", "name": self.name, "dtype": self.dtype.str}


class _ObjectColumn:
    def __init__(self, name, dtype, interner=None):
        self.name, self.dtype = name, dtype
        self.interner = interner or ObjectInterner(name)

    def encode(self, arr):
        if arr.dtype.kind not in "OUS":
            raise TypeError(f"key column {self.name!r} changed dtype from {self.dtype} to {arr.dtype} between batches")
        return self.interner.intern(arr)

    def decode(self, ids):
        if self.dtype.kind in "US":
            return self.interner.lookup(ids, self.dtype.kind) if len(ids) else np.empty(0, dtype=self.dtype)
        return self.interner.lookup(ids)

    def snapshot(self):
        return {"kind": "object", "name": self.name, "dtype": self.dtype.str, "interner": self.interner.snapshot()}


def _column_codec(name, arr):
    kind = arr.dtype.kind
    if kind in "iub":
        return _IntColumn(name, arr.dtype)
    if kind in "OUS":
        return _ObjectColumn(name, arr.dtype)
    if kind == "f":
        raise TypeError(f"key column {name!r} is {arr.dtype}; float keys are not supported (equality on floats is "
                        f"fragile): round or cast the column to an integer or string first")
    raise TypeError(f"key column {name!r} has unsupported dtype {arr.dtype}; use integers or strings")


class KeyEncoder:
    """Encodes the key columns of a batch into int64 keys and decodes them back."""

    def __init__(self, columns: tuple[str, ...]):
        self.columns = columns
        self._codecs = None
        self._tuples = _core.TupleInterner(len(columns)) if len(columns) > 1 else None

    def encode(self, batch) -> np.ndarray:
        for c in self.columns:
            if c not in batch:
                raise KeyError(f"unknown key column {c!r}; the batch has {batch.columns}")
        if self._codecs is None:
            self._codecs = [_column_codec(c, batch[c]) for c in self.columns]
        parts = [codec.encode(batch[codec.name]) for codec in self._codecs]
        if self._tuples is None:
            return parts[0]
        return self._tuples.intern(parts)

    def lookup(self, key) -> int | None:
        """The int64 key of one key value (a tuple for several key columns), or None when the
        operator has never seen it. Never adds keys: for queries."""
        values = key if isinstance(key, tuple) else (key,)
        if len(values) != len(self.columns):
            raise ValueError(f"a key of {self.columns} needs {len(self.columns)} value(s), got {key!r}")
        if self._codecs is None:
            return None
        parts = []
        for codec, v in zip(self._codecs, values):
            if isinstance(codec, _IntColumn):
                try:
                    parts.append(int(v))
                except (TypeError, ValueError):
                    raise ValueError(f"key column {codec.name!r} holds integers; {v!r} is not one") from None
            else:
                found = codec.interner.find(v)
                if found < 0:
                    return None
                parts.append(found)
        if self._tuples is None:
            return parts[0]
        found = self._tuples.find(parts)
        return None if found < 0 else found

    def decode(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        if self._codecs is None:
            return {c: np.empty(0, dtype=np.int64) for c in self.columns}
        if self._tuples is None:
            return {self.columns[0]: self._codecs[0].decode(keys)}
        return {codec.name: codec.decode(self._tuples.column(keys, i)) for i, codec in enumerate(self._codecs)}

    def snapshot(self):
        return {
            "columns": list(self.columns),
            "codecs": None if self._codecs is None else [c.snapshot() for c in self._codecs],
            "tuples": None if self._tuples is None else self._tuples.rows(),
        }

    def restore(self, state):
        if list(state["columns"]) != list(self.columns):
            raise ValueError(f"snapshot keys {state['columns']} do not match this operator's keys {list(self.columns)}")
        if state["codecs"] is None:
            self._codecs = None
        else:
            codecs = []
            for c in state["codecs"]:
                dtype = np.dtype(c["dtype"])
                if c["kind"] == "int":
                    codecs.append(_IntColumn(c["name"], dtype))
                else:
                    codecs.append(_ObjectColumn(c["name"], dtype, ObjectInterner.restore(c["interner"])))
            self._codecs = codecs
        if self._tuples is not None and state["tuples"] is not None:
            self._tuples.assign(np.asarray(state["tuples"], dtype=np.int64))
