"""A read's parts between actors on one machine, through shared-memory segments that the
reading actor reuses (the Ray runtime's transport where all its actors share a node).

Ray's object store hands every object fresh pages: the reader that puts a read and each
actor that maps its part fault every page in anew (2,811 faults per 512k-row read at
parallelism 8), which costs more than the copy itself and grows with the actors. A source
here writes each read into one of its own segments (files in /dev/shm) and sends only a
small `Shared` layout; receivers map a segment once and view their part in place. A segment
is written again only after every actor has finished the round that read it: the driver
says so (`SegmentPool.release`), so no receiver ever sees a part change under it. Reads the
layout cannot hold (object columns) go through the object store as before. A pool makes the
segments its source's reads will hold at a time up front (`provision`), so the rounds do not
pay the first write of every page (a fault and zeroing in the kernel).
"""

from __future__ import annotations

import mmap
import os
import pickle
import threading

import numpy as np

from .batch import Batch

ALIGN = 64  # each array starts on a cache line
DIRECTORY = "/dev/shm"
#: Testing: fill a segment with 0xFF bytes when it is released, so that rows read after their
#: release (a segment reused too early) show as wrong results, not as a race that rarely hits.
POISON = os.environ.get("PYSTREAM_SEGMENT_POISON") == "1"


def available(directory: str = DIRECTORY) -> bool:
    """Whether segments can be made here (a RAM file system: Linux's /dev/shm)."""
    return os.path.isdir(directory) and os.access(directory, os.W_OK)


class Shared:
    """Where a read's parts lie in its segments (`names`): `parts[j]` is window actor j's
    part, each array as (segment index, offset, dtype, length), pickled (bytes), or the
    reading actor's source id in its own slot (it keeps its part); `parts` is a list, or a dict
    of one actor's part. The reading actor pickles each part's nested tuples once, with the
    C pickler: the driver then hands on and takes back one bytes object per part, where Ray's
    serializer visited every tuple and string in Python, p * p parts a round. With the driver's
    message pickled likewise (WindowWorker.round_packed), the driver's CPU per round on 2 cores
    (64k-row reads) went 5.1-6.7 -> 2.4-3.1 ms at parallelism 8, 9.5-18.1 -> 5.0-7.6 ms at 16."""

    __slots__ = ("names", "parts")

    def __init__(self, names: list, parts: list):
        self.names, self.parts = names, parts

    def __reduce__(self):
        return Shared, (self.names, self.parts)

    def only(self, j: int) -> Shared:
        """The layout of window actor j's part alone: what the driver hands actor j (all p
        parts to each of p actors would be p*p parts a read, 400 KB of pickles a round at 16)."""
        return Shared(self.names, {j: self.parts[j]})

    def part(self, j: int, views: SegmentViews):
        """Window actor j's part as in `SourceWorker.next`: steps of (window id, rows, groups),
        the arrays read-only views of the segments (valid until the round ends)."""
        enc = self.parts[j]
        if isinstance(enc, int):
            return enc
        enc = pickle.loads(enc)
        if not enc:
            return []
        bufs = [views.buffer(name) for name in self.names]
        return [[(wid, None, groups) if cols is None else  # a control message (SourceWorker._pass_watermark)
                 (wid, Batch({c: _view(bufs, a) for c, a in cols}, ts=None if ts is None else _view(bufs, ts)),
                  None if groups is None else _view(bufs, groups)) for wid, cols, ts, groups in step] for step in enc]


def _view(bufs: list, spec) -> np.ndarray:
    k, offset, dtype, n = spec
    return np.frombuffer(b"" if k < 0 else bufs[k], dtype=np.dtype(dtype), count=n, offset=offset)


def _layout(parts: list, skip: int, segs: list):
    """(encoded parts, bytes to copy, the arrays to copy with their offsets), or None where a
    part holds an array that has no fixed width (object columns). An array that lies in one of
    `segs` (routed straight into it) is referred to where it lies; the others are to be copied
    into one more segment (index len(segs))."""
    arrays, size = [], 0

    def place(a: np.ndarray):
        nonlocal size
        if a.dtype.hasobject or a.ndim != 1:
            raise _NotFlat
        if not len(a):
            return (-1, 0, a.dtype.str, 0)
        if a.flags.c_contiguous:
            at = a.ctypes.data
            for k, seg in enumerate(segs):
                if seg[3] <= at and at + a.nbytes <= seg[3] + seg[0]:
                    return (k, at - seg[3], a.dtype.str, len(a))
        spec = (len(segs), size, a.dtype.str, len(a))
        arrays.append((size, a))
        size += -(-a.nbytes // ALIGN) * ALIGN
        return spec

    try:
        enc = [None if j == skip else
               [[(wid, None, None, groups) if rows is None else
                 (wid, [(c, place(rows[c])) for c in rows.columns], None if rows.ts is None else place(rows.ts),
                  None if groups is None else place(groups)) for wid, rows, groups in step] for step in part]
               for j, part in enumerate(parts)]
    except _NotFlat:
        return None
    return enc, size, arrays


class _NotFlat(Exception):
    pass


class SegmentPool:
    """One source's segments on the reading actor: a read goes into a free segment (a new one
    when none is free or big enough) and stays there until `release` says every actor is done
    with it. Reads are numbered from 0 in the order `write` sees them (every read the driver
    takes, with or without a segment)."""

    def __init__(self, prefix: str, directory: str = DIRECTORY):
        self.prefix, self.directory = prefix, directory
        self.free: list = []  # (size, name, mmap, address)
        self.used: dict[int, list] = {}  # read number -> its segments
        self.current: list = []  # segments taken for the read being made (rows routed into them)
        self.count = 0  # reads numbered so far
        self.made = 0
        self.largest = 0  # the most room a read has asked for (what `provision` makes segments of)
        self.lock = threading.Lock()  # reads are written on the reading thread, released from rounds

    def take(self, nbytes: int) -> np.ndarray | None:
        """Room for `nbytes` of the read being made (a segment's first bytes, uint8), for rows
        routed straight into it; None where the file system has no room left."""
        self.largest = max(self.largest, nbytes)
        with self.lock:
            seg = self._segment(nbytes)
        if seg is None:
            return None
        self.current.append(seg)
        return np.frombuffer(seg[2], dtype=np.uint8, count=nbytes)

    def write(self, parts: list, skip: int) -> Shared | None:
        """One read's parts (every window actor's but `skip`'s, whose slot holds None): their
        layout in the segments taken for it, rows that lie elsewhere copied into one more; or
        None where they cannot go there (object columns, or no room left on the file system:
        the read goes through the object store). Either way the read is numbered, and the
        segments it was routed into stay its own until released (its own part views them)."""
        seq, self.count = self.count, self.count + 1
        laid = _layout(parts, skip, self.current)
        if laid is not None and laid[1]:  # rows from elsewhere: copied into one more segment
            room = self.take(laid[1])
            if room is None:
                laid = None
            else:
                for offset, a in laid[2]:
                    np.frombuffer(room, dtype=a.dtype, count=len(a), offset=offset)[:] = a
        segs, self.current = self.current, []
        if segs:
            with self.lock:
                self.used[seq] = segs
        if laid is None:
            return None
        return Shared([s[1] for s in segs], [None if enc is None else pickle.dumps(enc, pickle.HIGHEST_PROTOCOL)
                                             for enc in laid[0]])

    def release(self, upto: int) -> None:
        """Reads numbered below `upto` are done with: their segments may be written again."""
        with self.lock:
            for seq in [s for s in self.used if s < upto]:
                for seg in self.used.pop(seq):
                    if POISON:
                        np.frombuffer(seg[2], dtype=np.uint8)[:] = 0xFF
                    self.free.append(seg)

    def provision(self, count: int) -> int:
        """Makes segments the size of the largest room asked for so far until the pool holds
        `count` (free or in use), and writes a byte of every page of that room: a page's first
        write costs a page fault and zeroing in the kernel (3,328 of them for a 512k-row read's
        13.6 MB), paid here, before the rounds, instead of in the first rounds that use each
        segment. Returns how many it made (fewer where the file system has no room left)."""
        nbytes = self.largest
        with self.lock:
            held = len(self.free) + len(self.current) + sum(len(segs) for segs in self.used.values())
            made = []
            for _ in range(count - held if nbytes else 0):
                seg = self._new(nbytes)
                if seg is None:
                    break
                made.append(seg)
        for seg in made:  # outside the lock: rounds release other segments meanwhile
            np.frombuffer(seg[2], dtype=np.uint8, count=nbytes)[::mmap.PAGESIZE] = 0
        with self.lock:
            self.free += made
        return len(made)

    def _segment(self, size: int):
        fits = [s for s in self.free if s[0] >= size]
        if fits:
            best = min(fits, key=lambda s: s[0])
            self.free.remove(best)
            return best
        return self._new(size)

    def _new(self, size: int):
        size = -(-size * 5 // 4 // mmap.PAGESIZE) * mmap.PAGESIZE  # room for reads a little larger
        name = f"{self.prefix}-{self.made}"
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)  # a full file system says so here, not with SIGBUS on a write
            except OSError:
                os.unlink(path)
                return None
            self.made += 1
            buf = mmap.mmap(fd, size)
            return size, name, buf, np.frombuffer(buf, dtype=np.uint8, count=1).ctypes.data
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unmaps and removes every segment (receivers' maps stay valid until they close)."""
        with self.lock:
            for _size, name, buf, _at in self.free + self.current + [s for segs in self.used.values() for s in segs]:
                try:
                    buf.close()
                except BufferError:  # rows of it still held here: unmapped with them
                    pass
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass
            self.free, self.used, self.current = [], {}, []


class SegmentViews:
    """A receiving actor's maps of other actors' segments, each mapped (read-only) once."""

    def __init__(self, directory: str = DIRECTORY):
        self.directory = directory
        self.maps: dict[str, mmap.mmap] = {}

    def buffer(self, name: str) -> mmap.mmap:
        buf = self.maps.get(name)
        if buf is None:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
            try:
                buf = self.maps[name] = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        return buf

    def close(self) -> None:
        for buf in self.maps.values():
            try:
                buf.close()
            except BufferError:  # a view still exported (a caller kept rows): the map goes with it
                pass
        self.maps = {}


def remove_all(prefix: str, directory: str = DIRECTORY) -> None:
    """Removes the segments named `prefix`* (what actors that died before they closed left).
    A map of a removed segment stays valid."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
