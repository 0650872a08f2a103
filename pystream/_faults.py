"""Fault injection for crash tests: PYSTREAM_CRASH_AT="phase:n" SIGKILLs this process the
n-th time it reaches `phase` (1-based). Phases: batch (a batch was processed, its outputs not
yet published), checkpoint_write (an epoch file is written but not yet renamed), precommit
(sinks pre-committed, checkpoint not yet written), commit (checkpoint durable, sinks not yet
committed), publish (at-least/at-most-once output being published). Unset: a no-op check."""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("PYSTREAM_CRASH_AT", "")
_phase, _, _count = _spec.partition(":")
_left = int(_count) if _count.isdigit() else 0


def maybe_crash(phase: str) -> None:
    global _left
    if _left and phase == _phase:
        _left -= 1
        if _left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
