"""Console progress for long runs: events/s, watermark, late and invalid counts, checkpoint age.

Uses rich (pip install 'pystream[progress]') for a live panel on a terminal, else prints a
line every few seconds. Reads the flow's live snapshot from a background thread (flow.live.snapshot(), which
waits for a batch boundary), so it adds no work per batch.
"""

from __future__ import annotations

import sys
import threading
import time


def _fmt_wm(ns) -> str:
    if ns is None:
        return "-"
    if abs(ns) >= 2**62:
        return "end of input"
    import numpy as np

    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")) + "Z"


def summary(snap: dict, prev: dict | None, dt: float) -> dict:
    """What the progress line shows, from two consecutive snapshots."""
    ops = snap["operators"]
    events = max((o["events_in"] for o in ops), default=0)
    prev_events = max((o["events_in"] for o in prev["operators"]), default=0) if prev else 0
    wms = [o["watermark"] for o in ops if o.get("watermark") is not None]
    return {
        "events": events,
        "rate": (events - prev_events) / dt if prev and dt > 0 else 0.0,
        "watermark": _fmt_wm(min(wms)) if wms else "-",
        "late": sum(o["late"] for o in ops),
        "invalid": sum(o["invalid"] for o in ops),
        "checkpoints": snap["checkpoints"],
        "checkpoint_age": snap.get("checkpoint_age"),
    }


class Progress:
    """A background reporter for one flow run; `close()` prints the final state."""

    def __init__(self, flow, every: float = 0.5, stream=None):
        self.flow, self.every = flow, every
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._prev, self._prev_t = None, None
        self._last_ckpt_count, self._last_ckpt_t = 0, None
        self._live = None
        if getattr(self.stream, "isatty", lambda: False)():  # a log file gets plain lines instead
            try:
                from rich.console import Console
                from rich.live import Live

                self._live = Live(console=Console(file=self.stream), refresh_per_second=4, transient=False)
                self._live.start()
            except ImportError:
                pass
        self._thread = threading.Thread(target=self._loop, name="pystream-progress", daemon=True)
        self._thread.start()

    def _line(self) -> str | None:
        snap = self.flow.live.snapshot()
        now = time.monotonic()
        if snap["checkpoints"] != self._last_ckpt_count:
            self._last_ckpt_count, self._last_ckpt_t = snap["checkpoints"], now
        snap["checkpoint_age"] = None if self._last_ckpt_t is None else now - self._last_ckpt_t
        s = summary(snap, self._prev, 0.0 if self._prev_t is None else now - self._prev_t)
        self._prev, self._prev_t = snap, now
        age = "-" if s["checkpoint_age"] is None else f"{s['checkpoint_age']:.1f} s ago"
        return (f"{self.flow.name}: {s['events']:,} events  {s['rate'] / 1e6:.2f} M/s  watermark {s['watermark']}  "
                f"late {s['late']:,}  invalid {s['invalid']:,}  checkpoints {s['checkpoints']} (last {age})")

    def _show(self, line: str) -> None:
        if self._live is not None:
            self._live.update(line)
        else:
            print(line, file=self.stream, flush=True)

    def _loop(self) -> None:
        plain_every = max(self.every, 2.0)
        last_plain = 0.0
        while not self._stop.wait(self.every):
            line = self._line()
            if self._live is not None or time.monotonic() - last_plain >= plain_every:
                self._show(line)
                last_plain = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._show(self._line())
        if self._live is not None:
            self._live.stop()
