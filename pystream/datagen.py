"""Synthetic smart-meter readings for benchmarks, tests and the demo (NumPy, vectorized).

Commercial meters report every 5 minutes, residential every 15; each reading is delayed by
a random transmission lag of up to `max_delay`, so readings arrive in bounded disorder
(arrival order = send time order). Energy per interval follows a daily load curve.
"""

from __future__ import annotations

import numpy as np

MS_PER_MIN = 60_000


def meter_readings(n_readings: int = 1_000_000, n_meters: int = 10_000, *, commercial_share: float = 0.2,
                   start_ms: int = 1_735_689_600_000, max_delay_ms: int = 60_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns meter_id (int64), ts (int64 ms, event time), kwh (float64), in arrival order."""
    rng = np.random.default_rng(seed)
    n_com = int(n_meters * commercial_share)
    per_quarter = n_com * 3 + (n_meters - n_com)  # readings per 15 minutes
    quarters = -(-n_readings // per_quarter)
    # One 15-minute block: commercial meters at 0, 5, 10 min; residential at a per-meter phase.
    com = np.arange(n_com, dtype=np.int64)
    res = np.arange(n_com, n_meters, dtype=np.int64)
    block_ids = np.concatenate([com, com, com, res])
    block_off = np.concatenate([np.zeros(n_com), np.full(n_com, 5.0), np.full(n_com, 10.0),
                                rng.integers(0, 15, len(res)).astype(float)]) * MS_PER_MIN
    block_off = block_off.astype(np.int64) + rng.integers(0, MS_PER_MIN, len(block_ids))  # seconds jitter
    ids = np.tile(block_ids, quarters)[:n_readings]
    q = np.repeat(np.arange(quarters, dtype=np.int64), len(block_ids))[:n_readings]
    ts = start_ms + q * 15 * MS_PER_MIN + np.tile(block_off, quarters)[:n_readings]
    hour = (ts // (60 * MS_PER_MIN)) % 24
    load = 0.3 + 0.7 * np.exp(-((hour - 19) ** 2) / 8.0) + 0.3 * np.exp(-((hour - 8) ** 2) / 4.0)
    scale = np.where(ids < n_com, 5.0 / 12, 1.0 / 4)
    kwh = np.round(load * scale * rng.gamma(4.0, 0.25, n_readings), 4)
    arrival = ts + rng.integers(0, max_delay_ms + 1, n_readings)
    order = np.argsort(arrival, kind="stable")
    return {"meter_id": ids[order], "ts": ts[order], "kwh": kwh[order]}
