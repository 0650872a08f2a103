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


cdef extern from *:
    """
    #include <algorithm>
    #include <cstdint>
    #include <cstring>
    #include <string>
    #include <vector>

    // Fixed-width string keys (NumPy 'U'/'S' elements) -> interner ids, by their raw bytes with
    // trailing NULs stripped (NumPy's own equality), so no Python str is made for a known key.
    struct FixedKeyTable {
      // A slot holds all a lookup needs but the key's bytes (in the arena): one random access
      // to the table and one to the arena per row, both prefetched ahead (probe).
      struct Slot { uint64_t hash; int64_t id, off, len; };  // id -1: empty
      std::vector<Slot> slots;
      std::string arena;
      int64_t count = 0;
      std::vector<uint64_t> hashes;  // scratch: per row of a batch
      std::vector<int64_t> lens;
      uint64_t mask = 0;

      FixedKeyTable() { slots.assign(1024, Slot{0, -1, 0, 0}); mask = 1023; }

      static uint64_t mix(uint64_t x) {
        x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL; x ^= x >> 27; x *= 0x94d049bb133111ebULL; x ^= x >> 31;
        return x;
      }
      // The key's bytes, 8 at a time, each folded in with one multiply (h = (h ^ w) * K, then its
      // high half folded down), then mixed once: half the latency of a full mix per word. The
      // tail is read with fixed-size loads (a memcpy of a variable size was a libc call per
      // row). Only this process sees these hashes (the table is rebuilt on use, never stored).
      static uint64_t hash_of(const char* p, int64_t n) {
        constexpr uint64_t K = 0x9e3779b97f4a7c15ULL;
        uint64_t h = K ^ static_cast<uint64_t>(n);
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
          uint64_t w;
          std::memcpy(&w, p + i, 8);
          h = (h ^ w) * K;
          h ^= h >> 32;
        }
        if (i < n) h = (h ^ tail_word(p + i, n - i)) * K;
        return mix(h);
      }
      // Length of the key without trailing NUL units of `unit` bytes (4 for 'U', 1 for 'S').
      static int64_t stripped(const char* p, int64_t width, int64_t unit) {
        int64_t n = width;
        if (unit == 4) {
          for (; n >= 4; n -= 4) {
            uint32_t x;
            std::memcpy(&x, p + n - 4, 4);
            if (x != 0) break;
          }
          return n;
        }
        while (n > 0 && p[n - 1] == 0) --n;
        return n;
      }
      // The tail of a key after its whole words (r < 8 bytes), as one word: fixed-size loads.
      static uint64_t tail_word(const char* q, int64_t r) {
        uint64_t w = 0;
        int shift = 0;
        if (r & 4) { uint32_t x; std::memcpy(&x, q, 4); w = x; q += 4; shift = 32; }
        if (r & 2) { uint16_t x; std::memcpy(&x, q, 2); w |= static_cast<uint64_t>(x) << shift; q += 2; shift += 16; }
        if (r & 1) w |= static_cast<uint64_t>(static_cast<unsigned char>(*q)) << shift;
        return w;
      }
      int64_t find(const char* p, int64_t n, uint64_t h) const {
        for (uint64_t b = h & mask;; b = (b + 1) & mask) {
          const Slot& s = slots[b];
          if (s.id < 0) return -1;
          if (s.hash == h && s.len == n && std::memcmp(arena.data() + s.off, p, static_cast<size_t>(n)) == 0) return s.id;
        }
      }
      void hash_row(const char* base, int64_t i, int64_t width, int64_t unit) {
        const char* p = base + i * width;
        lens[i] = stripped(p, width, unit);
        hashes[i] = hash_of(p, lens[i]);
      }
      // ids[i] = the id of row i, or -1 when unknown, in one pass: row i + kAhead is hashed
      // and its slot prefetched, the key bytes of row i + kHalf prefetched (its home slot is
      // in cache by then), and row i probed (its bytes still in cache from its hashing). Random
      // access, not hashing, is what costs: the slots and the arena outgrow the caches at 100k
      // keys.
      void probe(const char* base, int64_t n, int64_t width, int64_t unit, int64_t* ids) {
        hashes.resize(static_cast<size_t>(n));
        lens.resize(static_cast<size_t>(n));
        constexpr int64_t kAhead = 16, kHalf = kAhead / 2;
        for (int64_t i = 0; i < std::min(n, kAhead); ++i) {
          hash_row(base, i, width, unit);
          __builtin_prefetch(&slots[hashes[i] & mask]);
        }
        for (int64_t i = 0; i < n; ++i) {
          if (i + kAhead < n) {
            hash_row(base, i + kAhead, width, unit);
            __builtin_prefetch(&slots[hashes[i + kAhead] & mask]);
          }
          if (i + kHalf < n) {
            const Slot& s = slots[hashes[i + kHalf] & mask];
            if (s.id >= 0) __builtin_prefetch(arena.data() + s.off);
          }
          ids[i] = find(base + i * width, lens[i], hashes[i]);
        }
      }
      int64_t row_len(int64_t i) const { return lens[static_cast<size_t>(i)]; }
      uint64_t row_hash(int64_t i) const { return hashes[static_cast<size_t>(i)]; }
      void insert(const char* p, int64_t n, uint64_t h, int64_t key_id) {
        const int64_t off = static_cast<int64_t>(arena.size());
        arena.append(p, static_cast<size_t>(n));
        ++count;
        if (2 * static_cast<uint64_t>(count) > mask + 1) {
          mask = 2 * (mask + 1) - 1;
          std::vector<Slot> grown(mask + 1, Slot{0, -1, 0, 0});
          for (const Slot& s : slots) {
            if (s.id < 0) continue;
            uint64_t b = s.hash & mask;
            while (grown[b].id >= 0) b = (b + 1) & mask;
            grown[b] = s;
          }
          slots.swap(grown);
        }
        uint64_t b = h & mask;
        while (slots[b].id >= 0) b = (b + 1) & mask;
        slots[b] = Slot{h, key_id, off, n};
      }
    };
    """
    cdef cppclass FixedKeyTable:
        FixedKeyTable() except +
        void probe(const char* base, int64_t n, int64_t width, int64_t unit, int64_t* ids) except +
        int64_t row_len(int64_t i)
        unsigned long long row_hash(int64_t i)
        int64_t find(const char* p, int64_t n, unsigned long long h)
        void insert(const char* p, int64_t n, unsigned long long h, int64_t key_id) except +


cdef class ObjectInterner:
    """Maps hashable key values to int64 ids 0, 1, 2, ... in order of first appearance."""

    cdef dict _ids
    cdef list _values
    cdef object _type
    cdef public str column
    cdef FixedKeyTable* _fixed  # raw-bytes cache for 'U'/'S' arrays of one kind
    cdef str _fixed_kind
    cdef object _tables  # kind -> (number of values, ndarray of them) for lookup

    def __cinit__(self):
        self._fixed = new FixedKeyTable()
        self._fixed_kind = None
        self._tables = {}

    def __dealloc__(self):
        del self._fixed

    def __reduce__(self):  # (the C++ cache is rebuilt on use)
        return _restore_interner, (self.snapshot(),)

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
        kind = arr.dtype.kind
        if kind in "US" and arr.dtype.itemsize > 0 and len(arr) > 0 and (self._fixed_kind is None or self._fixed_kind == kind):
            if self._type is None or self._type is (str if kind == "U" else bytes):
                return self._intern_fixed(np.ascontiguousarray(arr), kind)
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

    def _intern_fixed(self, arr, str kind):
        """intern() for a contiguous 'U' or 'S' array: a known key costs a hash of its bytes and a
        table probe; a new one is made into a str/bytes once, through the dict as intern() does
        (the cache only ever holds keys whose id the dict gave). Nothing here can fail midway."""
        cdef Py_ssize_t n = arr.shape[0], i
        cdef int64_t width = arr.dtype.itemsize
        cdef int64_t unit = 4 if kind == "U" else 1
        cdef const unsigned char[:] raw = arr.view(np.uint8).reshape(-1)
        cdef const char* base = <const char*>&raw[0]
        cdef const char* p
        cdef int64_t m, key_id
        cdef unsigned long long h
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[:] ids = out
        cdef FixedKeyTable* table = self._fixed
        cdef PyObject* found
        self._fixed_kind = kind
        self._type = str if kind == "U" else bytes
        table.probe(base, n, width, unit, &ids[0])
        for i in range(n):
            if ids[i] >= 0:
                continue
            # New to the cache (in row order, so ids stay in order of first appearance).
            p = base + i * width
            m = table.row_len(i)
            h = table.row_hash(i)
            key_id = table.find(p, m, h)
            if key_id < 0:
                v = arr[i].item() if kind == "S" else str(arr[i])
                found = PyDict_GetItem(self._ids, v)
                if found is NULL:
                    key_id = len(self._values)
                    PyDict_SetItem(self._ids, v, key_id)
                    PyList_Append(self._values, v)
                else:
                    key_id = <int64_t>(<object>found)
                table.insert(p, m, h, key_id)
            ids[i] = key_id
        return out

    def lookup(self, ids, kind=None):
        """Key values for an array of ids: an object array, or a NumPy 'U'/'S' array with `kind`
        (the table of values is kept and rebuilt only when keys were added)."""
        kind = kind or "O"
        have = self._tables.get(kind)
        if have is None or have[0] != len(self._values):
            table = np.empty(len(self._values), dtype=object)
            table[:] = self._values
            if kind != "O":
                table = table.astype(kind) if len(table) else np.empty(0, dtype=kind)
            have = self._tables[kind] = (len(self._values), table)
        return have[1][np.asarray(ids, dtype=np.int64)]

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


def _restore_interner(state):
    return ObjectInterner.restore(state)
