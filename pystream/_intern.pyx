# cython: language_level=3, boundscheck=False, wraparound=False
"""Interning of string/object keys into dense int64 ids (first-seen order).

This is the one loop that must touch Python objects one by one, so it is Cython, not Python:
a dict probe per row, no Python bytecode per row. Ids are never reassigned, so window state
keyed by them stays valid and a checkpoint stores the id -> value table once.
"""
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_Append
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t

import numpy as np


cdef class ObjectInterner:
    """Maps hashable key values to int64 ids 0, 1, 2, ... in order of first appearance."""

    cdef dict _ids
    cdef list _values
    cdef object _type
    cdef public str column

    def __init__(self, str column="key"):
        self._ids = {}
        self._values = []
        self._type = None
        self.column = column

    def __len__(self):
        return len(self._values)

    def intern(self, values):
        """ids for a 1-D array (object or unicode/bytes dtype) of key values.

        Raises ValueError (and interns nothing) on a missing key (None or NaN) or on a value
        whose type differs from the column's earlier values (1 and "1" would silently be
        different keys; 1 and 1.0 and True would silently be the same one).
        """
        cdef object arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"key column {self.column!r} must be 1-D, got {arr.ndim} dimensions")
        if arr.dtype != object:
            arr = arr.astype(object)
        cdef object[:] objs = arr
        cdef Py_ssize_t n = objs.shape[0]
        cdef Py_ssize_t i
        cdef object out = np.empty(n, dtype=np.int64)
        cdef int64_t[:] ids = out
        cdef object v
        cdef object t = self._type
        cdef PyObject* found
        cdef Py_ssize_t start = len(self._values)
        cdef list fresh = []
        cdef dict pending = {}
        for i in range(n):
            v = objs[i]
            if t is None:
                if v is None or (isinstance(v, float) and v != v):
                    raise ValueError(f"key column {self.column!r} has a missing value ({v!r}) at row {i}; keys must not be None or NaN")
                t = type(v)
            elif type(v) is not t:
                if v is None or (isinstance(v, float) and v != v):
                    raise ValueError(f"key column {self.column!r} has a missing value ({v!r}) at row {i}; keys must not be None or NaN")
                raise ValueError(
                    f"key column {self.column!r} mixes types: row {i} holds {type(v).__name__} {v!r}, "
                    f"earlier keys are {t.__name__}; convert the column to one type")
            elif t is float and v != v:
                raise ValueError(f"key column {self.column!r} has a missing value ({v!r}) at row {i}; keys must not be None or NaN")
            found = PyDict_GetItem(self._ids, v)
            if found is NULL:
                found = PyDict_GetItem(pending, v)
                if found is NULL:
                    PyDict_SetItem(pending, v, start + len(fresh))
                    PyList_Append(fresh, v)
                    found = PyDict_GetItem(pending, v)
            ids[i] = <int64_t>(<object>found)
        # Commit only after the whole batch validated: a rejected batch interns nothing.
        self._ids.update(pending)
        self._values.extend(fresh)
        self._type = t
        return out

    def lookup(self, ids):
        """Key values for an array of ids, as an object array."""
        table = np.empty(len(self._values), dtype=object)
        table[:] = self._values
        return table[np.asarray(ids, dtype=np.int64)]

    def values(self):
        return list(self._values)

    def find(self, value):
        """The id of `value`, or -1 when it was never interned (never adds: for queries)."""
        return self._ids.get(value, -1)

    def snapshot(self):
        return {"column": self.column, "values": list(self._values)}

    @classmethod
    def restore(cls, state):
        cdef ObjectInterner self = cls(state["column"])
        for i, v in enumerate(state["values"]):
            self._ids[v] = i
            self._values.append(v)
        if self._values:
            self._type = type(self._values[0])
        return self
