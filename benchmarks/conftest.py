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


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"pystream throughput ({ROWS:,} events, best of rounds)")
    for name, rate in RESULTS.items():
        if name.endswith(", s"):
            tr.write_line(f"{name[:-3]:52s} {rate * 1e3:8.3f} ms")
            continue
        if name.endswith(", x"):
            tr.write_line(f"{name[:-3]:52s} {rate:8.2f} x")
            continue
        if name.endswith(", B/s"):
            tr.write_line(f"{name[:-5]:52s} {rate / 1e6:8.1f} MB/s")
            continue
        if name.endswith(", B"):
            tr.write_line(f"{name[:-3]:52s} {rate:8.1f} bytes")
            continue
        if name.endswith(", %"):
            tr.write_line(f"{name[:-3]:52s} {rate:8.2f} %")
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
