"""The session engine's timer queue (csrc/timer_queue.h: a sorted current bucket, a side heap,
a ring of unsorted buckets and an overflow heap) against heapq, with Hypothesis: any mix of
pushes (behind, in and far beyond the current bucket, equal times, jumps of the watermark)
and pops gives the same minimum every time."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pystream import _core

NEAR = st.tuples(st.just("push"), st.integers(-8, 24), st.integers(0, 2), st.integers(0, 2))  # around the minimum
OPS = st.lists(st.one_of(
    NEAR, NEAR, NEAR,
    st.tuples(st.just("push"), st.integers(-10**6, 10**6), st.integers(0, 3), st.integers(0, 5)),  # anywhere
    st.tuples(st.just("push"), st.sampled_from([2**40, 2**60]), st.integers(0, 3), st.integers(0, 5)),  # end of time
    st.tuples(st.just("pop"), st.integers(1, 4)),
    st.tuples(st.just("top"),),  # moves the queue on to the next bucket, as the engine's top() does
    st.tuples(st.just("clear"),)), max_size=80)


def test_a_push_behind_the_bucket_being_popped_comes_out_first():
    q = _core._TimerQueue(0)
    for t, slot in ((10, 0), (20, 0), (20, 1)):
        q.push(t, slot, 0)
    assert q.top() == (10, 0, 0)
    q.pop()
    assert q.top() == (20, 0, 0)  # bucket 20 is now the sorted current one
    q.push(15, 0, 0)  # behind it
    assert q.top() == (15, 0, 0)
    q.pop()
    assert [q.top(), q.pop(), q.top()][::2] == [(20, 0, 0), (20, 1, 0)]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shift=st.sampled_from([0, 1, 3, 8, 20]), ops=OPS)
def test_timer_queue_pops_in_order_like_a_heap(shift, ops):
    q, ref = _core._TimerQueue(shift), []
    last = None
    for op in ops:
        if op[0] == "push":
            _, dt, slot, ident = op
            # Near the current minimum (or the last popped time): behind it too, into the bucket
            # being popped, which must still give the smallest first.
            base = ref[0][0] if ref else (last or 0)
            t = dt if dt >= 2**40 else base + dt
            q.push(t, slot, ident)
            heapq.heappush(ref, (t, slot, ident))
        elif op[0] == "pop":
            for _ in range(op[1]):
                if not ref:
                    break
                assert q.top() == ref[0]
                last = heapq.heappop(ref)[0]
                q.pop()
        elif op[0] == "top":
            if ref:
                assert q.top() == ref[0]
        else:
            q.clear()
            ref.clear()
        assert len(q) == len(ref)
    while ref:  # the rest, in order
        assert q.top() == heapq.heappop(ref)
        q.pop()
    with pytest.raises(IndexError, match="empty timer queue"):
        q.top()
