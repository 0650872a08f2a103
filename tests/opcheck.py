"""Operator-level check: snapshot -> pickle -> restore into a fresh operator -> continue equals
never stopping."""

from __future__ import annotations

import pickle


def rows(batch):
    return list(zip(*(batch[c].tolist() for c in batch.columns)))


def run_resumed(make_op, batch, step, cut=None):
    """Rows of `batch` fed in slices of `step` through one operator, or (cut given) through one
    operator up to `cut` and a restored copy of its snapshot after it."""
    out, op = [], make_op()
    for lo in range(0, len(batch), step):
        if cut is not None and lo == cut:
            fresh = make_op()
            fresh.restore(pickle.loads(pickle.dumps(op.snapshot())))
            op = fresh
        out += rows(op.process(batch.slice(lo, lo + step))[0])
    return out + rows(op.finish())


def assert_resume_equals_whole(make_op, batch, step, cut, min_rows=10):
    assert cut % step == 0
    whole = run_resumed(make_op, batch, step)
    assert run_resumed(make_op, batch, step, cut) == whole
    assert len(whole) >= min_rows
