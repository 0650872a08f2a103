"""Stable orderings for the Python-level operators, through the native radix argsort
(csrc/radix_sort.h) where the keys fit in an int64."""

from __future__ import annotations

import numpy as np

from . import _core


def stable_order(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """The stable order of rows by (major, minor) (ties keep their order): one native radix
    argsort of major * span + (minor - min) where that fits in an int64 (a release of rows
    covers minutes of event time over the keys' slots, so it does), else np.lexsort's two
    sorts. Both are int arrays; major is >= 0 for the packed path."""
    if not len(major):
        return np.empty(0, dtype=np.int64)
    lo, hi = int(minor.min()), int(minor.max())
    span, top = hi - lo + 1, int(major.max())
    if top >= 0 and int(major.min()) >= 0 and (top + 1) * span < 2**62:
        return _core.stable_argsort(major.astype(np.int64) * span + (minor.astype(np.int64) - lo))
    return np.lexsort((minor, major))


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """np.argsort(keys, kind="stable"), natively for keys that int64 holds in order (signed
    ints, unsigned ones narrower than 64 bits, datetimes)."""
    kind, size = keys.dtype.kind, keys.dtype.itemsize
    if kind == "M" and size == 8:
        return _core.stable_argsort(keys.view(np.int64))
    if kind == "i" or (kind == "u" and size < 8):
        return _core.stable_argsort(keys.astype(np.int64, copy=False))
    return np.argsort(keys, kind="stable")
