"""Shared data and the events/s summary table for the throughput benchmarks."""

from __future__ import annotations

import os

import pytest

from pystream.datagen import meter_readings

ROWS = int(os.environ.get("PYSTREAM_BENCH_ROWS", "10000000"))
RESULTS: dict[str, float] = {}  # name -> events/s (best round)

_cache: dict[int, dict] = {}


def readings(meters: int) -> dict:
    if meters not in _cache:
        _cache.clear()  # one data set in memory at a time (10M rows ~ 240 MB)
        _cache[meters] = meter_readings(ROWS, meters, seed=42)
    return _cache[meters]


def record(benchmark, name: str, events: int) -> float:
    rate = events / benchmark.stats.stats.min
    benchmark.extra_info["events_per_s"] = rate
    RESULTS[name] = rate
    return rate


#: Result names ending in one of these are not event rates: (scale, format, unit) of their line.
UNITS = {", s": (1e3, ".3f", "ms"), ", x": (1, ".2f", "x"), ", B/s": (1e-6, ".1f", "MB/s"), ", B": (1, ".1f", "bytes"),
         ", %": (1, ".2f", "%")}


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"pystream throughput ({ROWS:,} events, best of rounds)")
    for name, rate in RESULTS.items():
        unit = next((u for u in UNITS if name.endswith(u)), None)
        if unit is not None:
            scale, fmt, label = UNITS[unit]
            tr.write_line(f"{name[:-len(unit)]:52s} {rate * scale:8{fmt}} {label}")
            continue
        ratios = []
        for key, other in RESULTS.items():
            kind, _, query = key.partition(" ")
            if kind in ("numpy", "numpy+ids") and query == name.partition(" ")[2] and key != name:
                ratios.append(f"{rate / other:.2f}x {kind}")
        tr.write_line(f"{name:52s} {rate / 1e6:8.1f} M events/s" + (f"  ({', '.join(ratios)})" if ratios else ""))


@pytest.fixture
def rows() -> int:
    return ROWS
