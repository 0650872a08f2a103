"""Aggregations whose accumulators live in Python: `ps.agg.custom` and the time-weighted ones.

The engine keeps, in each state row, an int64 handle naming an accumulator held here
(csrc/agg_sketch.h HandleColumn). The value column it sees for such an aggregation is each
event's sequence number, which is also the handle of the accumulator the event creates. After
every engine call, the column's log says what happened, in order: events went into handles,
handles merged (session merges), output rows combined handles (window firings, in slice
order). `PythonAggs.resolve` replays the log with NumPy, one vectorized step per run of equal
operations — never a step per event — and fills in the output columns. Handles of purged
state are dropped by a scan of the engine's live handles once the store doubles.
"""

from __future__ import annotations

import numpy as np

from ._order import stable_argsort, stable_order

# -- accumulators: an ndarray or a tuple of ndarrays whose first axis is the group ------------


def _take(acc, idx):
    return tuple(a[idx] for a in acc) if isinstance(acc, tuple) else acc[idx]


def _assign(acc, idx, val) -> None:
    if isinstance(acc, tuple):
        for a, v in zip(acc, val):
            a[idx] = v
    else:
        acc[idx] = val


def _concat(a, b):
    if a is None:
        return b
    return tuple(np.concatenate([x, y]) for x, y in zip(a, b)) if isinstance(a, tuple) else np.concatenate([a, b])


def _length(acc) -> int:
    return len(acc[0]) if isinstance(acc, tuple) else len(acc)


def _as_acc(acc, n: int, what: str):
    """The user's accumulator as arrays, checked to hold n groups."""
    acc = tuple(np.asarray(a) for a in acc) if isinstance(acc, (tuple, list)) else np.asarray(acc)
    got = _length(acc) if (not isinstance(acc, np.ndarray) or acc.ndim) else -1
    if got != n:
        raise ValueError(f"custom aggregation: {what} returned {got} accumulators for {n} groups; accumulators are "
                         f"arrays (or tuples of arrays) whose first axis is the group")
    return acc


def _find(handles: np.ndarray, wanted: np.ndarray):
    """Positions of `wanted` in the sorted `handles`, and whether each is there. Searched in
    sorted order (NumPy's binary search starts from the previous key's place, so a sorted query
    walks the table once instead of jumping around it)."""
    if len(wanted) > 1 and not (wanted[1:] >= wanted[:-1]).all():
        by = stable_argsort(wanted)
        pos = np.empty(len(wanted), dtype=np.intp)
        pos[by] = np.searchsorted(handles, wanted[by])
    else:
        pos = np.searchsorted(handles, wanted)
    if not len(handles):
        return pos, np.zeros(len(wanted), dtype=bool)
    clipped = np.minimum(pos, len(handles) - 1)
    return clipped, handles[clipped] == wanted


def _groups(rows: np.ndarray):
    """Stable grouping of equal `rows`: (order, unique rows, group starts, group sizes)."""
    order = stable_argsort(rows)
    uniq, starts, counts = np.unique(rows[order], return_index=True, return_counts=True)
    return order, uniq, starts, counts


def _fn_name(f) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


class Custom:
    """The four functions of a `ps.agg.custom` aggregation (see its docstring)."""

    needs_time = False

    def __init__(self, init, update, merge, finalize, dtype: np.dtype):
        for name, f in (("init", init), ("update", update), ("merge", merge), ("finalize", finalize)):
            if not callable(f):
                raise TypeError(f"custom aggregation: {name} must be callable, got {f!r}")
        self.init, self.update, self.merge, self.finalize, self.dtype = init, update, merge, finalize, dtype

    def fingerprint(self) -> tuple:
        return tuple(_fn_name(f) for f in (self.init, self.update, self.merge, self.finalize)) + (self.dtype.str,)

    def store(self) -> AccumulatorStore:
        return AccumulatorStore(self)


class AccumulatorStore:
    """Accumulators by handle: `handles` sorted, `acc` aligned with it."""

    def __init__(self, spec: Custom):
        self.spec = spec
        self.handles = np.empty(0, dtype=np.int64)
        self.acc = None

    def __len__(self) -> int:
        return len(self.handles)

    def _insert(self, handles, acc) -> None:
        tail_sorted = not len(self.handles) or handles[0] > self.handles[-1]
        self.handles = np.concatenate([self.handles, handles])
        self.acc = _concat(self.acc, acc)
        if not tail_sorted:
            order = stable_argsort(self.handles)
            self.handles = self.handles[order]
            self.acc = _take(self.acc, order)

    def _keep(self, mask) -> None:
        self.handles = self.handles[mask]
        self.acc = None if self.acc is None else _take(self.acc, mask)

    def update(self, handles, values, ts) -> None:
        order, uniq, starts, _ = _groups(handles)
        part = _as_acc(self.spec.update(values[order], starts), len(uniq), "update(values, starts)")
        pos, found = _find(self.handles, uniq)
        old = np.flatnonzero(found)
        if len(old):
            merged = self.spec.merge(_take(self.acc, pos[old]), _take(part, old))
            _assign(self.acc, pos[old], _as_acc(merged, len(old), "merge(a, b)"))
        new = np.flatnonzero(~found)
        if len(new):
            self._insert(uniq[new], _take(part, new))

    def merge(self, dst, src) -> None:
        # Merges chain (b into a, then a into c): rounds in which no handle repeats, in order.
        # One Python step per merge here (merges are session merges, not events).
        rounds, cur, used = [], [], set()
        for d, s in zip(dst.tolist(), src.tolist()):
            if d in used or s in used:
                rounds.append(cur)
                cur, used = [], set()
            cur.append((d, s))
            used.update((d, s))
        rounds.append(cur)
        for r in rounds:
            d, s = (np.array(x, dtype=np.int64) for x in zip(*r))
            pd, _ = _find(self.handles, d)
            ps, _ = _find(self.handles, s)
            merged = self.spec.merge(_take(self.acc, pd), _take(self.acc, ps))
            _assign(self.acc, pd, _as_acc(merged, len(r), "merge(a, b)"))
            self._keep(~np.isin(self.handles, s))

    def emit(self, rows, handles, bounds):
        """(rows, values): each row's handles merged in order, finalized."""
        pos, _ = _find(self.handles, handles)
        order, uniq, starts, counts = _groups(rows)
        p = pos[order]
        acc = _take(self.acc, p[starts])
        for j in range(1, int(counts.max())):
            sel = np.flatnonzero(counts > j)
            merged = self.spec.merge(_take(acc, sel), _take(self.acc, p[starts[sel] + j]))
            _assign(acc, sel, _as_acc(merged, len(sel), "merge(a, b)"))
        return uniq, np.asarray(self.spec.finalize(acc), dtype=self.spec.dtype)

    def empty_value(self):
        return np.asarray(self.spec.finalize(_as_acc(self.spec.init(1), 1, "init(n)")), dtype=self.spec.dtype)[0]

    def gc(self, live) -> None:
        self._keep(np.isin(self.handles, live))

    def snapshot(self) -> dict:
        acc = self.acc
        return {"handles": self.handles.copy(),
                "acc": None if acc is None else (tuple(a.copy() for a in acc) if isinstance(acc, tuple) else acc.copy())}

    def restore(self, state: dict) -> None:
        self.handles = np.asarray(state["handles"], dtype=np.int64).copy()
        acc = state["acc"]  # copied: a snapshot's arrays may be read-only (zero-copy deserialised)
        self.acc = None if acc is None else (tuple(np.array(a) for a in acc) if isinstance(acc, tuple) else np.array(acc))


class TimeWeighted:
    """Time-weighted mean or integral of samples, linear between samples (see ps.agg.energy)."""

    needs_time = True
    dtype = np.dtype(np.float64)

    def __init__(self, what: str, boundary: str, per_ns: int):
        if boundary not in ("hold", "samples"):
            raise ValueError(f"boundary must be 'hold' or 'samples', got {boundary!r}")
        self.what, self.boundary, self.per_ns = what, boundary, per_ns

    def fingerprint(self) -> tuple:
        return (self.what, self.boundary, self.per_ns)

    def store(self) -> SampleStore:
        return SampleStore(self)


class SampleStore:
    """The samples (handle, time ns, value) of open windows, unsorted."""

    def __init__(self, spec: TimeWeighted):
        self.spec = spec
        self.h = np.empty(0, dtype=np.int64)
        self.t = np.empty(0, dtype=np.int64)
        self.v = np.empty(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.h)

    def update(self, handles, values, ts) -> None:
        self.h = np.concatenate([self.h, handles])
        self.t = np.concatenate([self.t, ts])
        self.v = np.concatenate([self.v, values.astype(np.float64, copy=False)])

    def merge(self, dst, src) -> None:
        # Each handle is merged away at most once, so following src -> dst chains is exact.
        order = np.argsort(src)
        s_sorted, d_sorted = src[order], dst[order]
        target = d_sorted.copy()
        while True:
            pos, found = _find(s_sorted, target)
            if not found.any():
                break
            target = np.where(found, d_sorted[pos], target)
        pos, found = _find(s_sorted, self.h)
        self.h = np.where(found, target[pos], self.h)

    def emit(self, rows, handles, bounds):
        order = stable_argsort(self.h)  # the samples by handle, each handle's in arrival order
        hs = self.h[order]
        # Each (row, handle) pair's samples: searched with the handles in order (NumPy's binary
        # search starts from the previous key's place), then put back in the pairs' order.
        by_h = stable_argsort(handles)
        lo, cnt = np.empty(len(handles), dtype=np.int64), np.empty(len(handles), dtype=np.int64)
        found_lo = np.searchsorted(hs, handles[by_h], "left")
        lo[by_h] = found_lo
        cnt[by_h] = np.searchsorted(hs, handles[by_h], "right") - found_lo
        total = int(cnt.sum())
        row_of = np.repeat(rows, cnt)
        idx = order[np.repeat(lo, cnt) + np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)]
        o = stable_order(row_of, self.t[idx])  # by row, then time; ties keep arrival order
        r, t, v = row_of[o], self.t[idx][o], self.v[idx][o]
        uniq, starts, counts = np.unique(r, return_index=True, return_counts=True)
        last = starts + counts - 1
        same = r[1:] == r[:-1]
        area = np.where(same, 0.5 * (v[1:] + v[:-1]) * np.diff(t).astype(np.float64), 0.0)
        cs = np.concatenate([[0.0], np.cumsum(area)])
        integral = cs[last] - cs[starts]
        if bounds is not None and self.spec.boundary == "hold":
            start, end = bounds[0][uniq], bounds[1][uniq]
            integral = integral + v[starts] * (t[starts] - start) + v[last] * (end - t[last])
            span = (end - start).astype(np.float64)
        else:
            span = (t[last] - t[starts]).astype(np.float64)
        if self.spec.what == "integral":
            return uniq, integral / self.spec.per_ns
        with np.errstate(invalid="ignore", divide="ignore"):
            instant = np.add.reduceat(v, starts) / counts  # all samples at one instant: their mean
            return uniq, np.where(span > 0, integral / np.where(span > 0, span, 1.0), instant)

    def empty_value(self):
        return np.nan

    def gc(self, live) -> None:
        keep = np.isin(self.h, live)
        self.h, self.t, self.v = self.h[keep], self.t[keep], self.v[keep]

    def snapshot(self) -> dict:
        return {"h": self.h.copy(), "t": self.t.copy(), "v": self.v.copy()}

    def restore(self, state: dict) -> None:
        self.h, self.t, self.v = (np.asarray(state[k]).copy() for k in ("h", "t", "v"))


class PythonAggs:
    """The Python-held aggregations of one window operator: their stores, the sequence
    numbers the engine sees as their value column, and the replay of the engine's log."""

    GC_SLACK = 4096

    def __init__(self, aggs: list, lead: int, bounded: bool):
        self.lead = lead  # engine specs before the operator's own (a count window's event count)
        self.bounded = bounded  # output rows have window bounds (time windows)
        self.index = [i for i, a in enumerate(aggs) if a.in_python]
        self.columns = [aggs[i].column for i in self.index]
        self.stores = [aggs[i].impl.store() for i in self.index]
        self.gc_at = [self.GC_SLACK] * len(self.index)
        self.seq = 1  # the next event's sequence number (0 means "no handle" in the engine)
        self._ctx = None

    def begin(self, batch, ts_ns) -> None:
        """The batch about to enter the engine: its values and event times, for the replay."""
        values = []
        for st, col in zip(self.stores, self.columns):
            arr = batch[col]
            if st.spec.needs_time and arr.dtype.kind not in "iufb":
                raise TypeError(f"time-weighted aggregation of {col!r} needs a numeric column, got dtype {arr.dtype}")
            values.append(arr)
        self._ctx = (self.seq, values, ts_ns)
        self.seq += len(batch)

    def sequence(self, n: int) -> np.ndarray:
        """The value column the engine gets for a Python-held aggregation."""
        return np.arange(self._ctx[0], self._ctx[0] + n, dtype=np.float64)

    def resolve(self, out: dict, cols: list, engine, bounds) -> list:
        """Replays the engine's log; returns `cols` with the Python-held aggregations filled in."""
        logs = out.get("handles")
        if logs is None:
            return cols
        cols = list(cols)
        for k, (i, st) in enumerate(zip(self.index, self.stores)):
            log = logs[self.lead + i]
            result = np.full(len(cols[i]), st.empty_value(), dtype=st.spec.dtype)
            if len(log):
                self._replay(k, log, result, bounds)
            cols[i] = result
            if len(st) > self.gc_at[k]:
                live = engine.live_handles(self.lead + i)
                st.gc(live)
                self.gc_at[k] = 2 * len(st) + self.GC_SLACK
        return cols

    def _replay(self, k: int, log, result, bounds) -> None:
        st = self.stores[k]
        ops = log[:, 0]
        cuts = np.flatnonzero(ops[1:] != ops[:-1]) + 1
        for run in np.split(log, cuts):
            op, a, b = run[0, 0], run[:, 1], run[:, 2]
            if op == 0:
                base, values, ts = self._ctx
                ev = b - base
                st.update(a, values[k][ev], ts[ev])
            elif op == 1:
                st.merge(a, b)
            else:
                rows, vals = st.emit(a, b, bounds if self.bounded else None)
                result[rows] = vals

    def retain(self, engine) -> None:
        """Drops the accumulators no state row of `engine` refers to any more (after its
        state lost keys: a rescale)."""
        for i, st in zip(self.index, self.stores):
            st.gc(engine.live_handles(self.lead + i))

    def snapshot(self) -> dict:
        return {"seq": self.seq, "stores": [st.snapshot() for st in self.stores]}

    def restore(self, state: dict) -> None:
        self.seq = int(state["seq"])
        for st, s in zip(self.stores, state["stores"]):
            st.restore(s)
