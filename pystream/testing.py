"""Test helpers: a clock the test advances, a source that follows a script, and one that
paces its batches like a live feed.

>>> clock = ManualClock("2025-01-01T00:00")
>>> src = Script(clock, [("a", batch1), Advance("25m"), ("b", batch2)])   # doctest: +SKIP
>>> flow.run(clock=clock)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import time

import numpy as np

from ._duration import parse_duration
from .batch import Batch
from .sources import Arrays, Source


class ManualClock:
    """A wall clock that only moves when told to."""

    def __init__(self, start="2025-01-01T00:00:00"):
        self._ns = int(np.datetime64(start, "ns").astype(np.int64)) if isinstance(start, str) else int(start)

    def now_ns(self) -> int:
        return self._ns

    def advance(self, duration) -> None:
        self._ns += parse_duration(duration, "advance")

    def set(self, ns: int) -> None:
        if ns < self._ns:
            raise ValueError(f"a clock does not go back: {ns} < {self._ns}")
        self._ns = ns


class Advance:
    """A script step: move the clock forward; the source then reports "no data right now"."""

    def __init__(self, duration):
        self.ns = parse_duration(duration, "Advance")

    def __repr__(self):
        return f"Advance({self.ns}ns)"


class Script(Source):
    """An unbounded-looking source driven by a script of steps:
    (partition, batch-or-dict) delivers a batch from a partition; Advance(d) moves the clock by d
    and yields no data, so the runtime runs its idle and quiet-stream checks. Replayable by step
    index."""

    replayable = True

    def __init__(self, clock: ManualClock, steps, name: str = "script"):
        self.clock = clock
        self.steps = [s if isinstance(s, Advance) else (s[0], Batch.from_any(s[1])) for s in steps]
        self.name = name

    def read(self, position=None):
        for i in range(0 if position is None else int(position), len(self.steps)):
            step = self.steps[i]
            if isinstance(step, Advance):
                self.clock.advance(f"{step.ns}ns")
                yield None, i + 1, None
            else:
                yield step[1], i + 1, step[0]

    def partitions(self) -> list:
        return list(dict.fromkeys(s[0] for s in self.steps if not isinstance(s, Advance)))

    def fingerprint(self) -> str:
        return f"Script:{self.name}:{len(self.steps)}"


class Paced(Arrays):
    """An Arrays source that waits `pause` seconds before each batch: a live feed at a steady
    rate (what happens while a flow runs, e.g. queries against its state), wherever it is read
    (a Ray actor too)."""

    def __init__(self, data, pause: float = 0.0, **kw):
        super().__init__(data, **kw)
        if not pause >= 0:
            raise ValueError(f"pause must be >= 0 seconds, got {pause!r}")
        self.pause = pause

    def read(self, position=None):
        for item in super().read(position):
            time.sleep(self.pause)
            yield item


__all__ = ["ManualClock", "Advance", "Script", "Paced"]
