"""Smart-meter operators (issue 5) on 10M readings of 100k meters, beside the tumbling sum in
the same run: de-duplication, cumulative register -> interval usage, gap detection."""

from __future__ import annotations

import numpy as np
import pytest

import pystream as ps
from pystream.meters import Dedupe, Gaps, RegisterDeltas

from conftest import readings, record
from test_throughput import BATCH

TIME = ps.EventTime("ts", unit="ms", max_out_of_orderness="60s")


def with_registers(d):
    """Each meter's cumulative register (kWh) at each reading, in event-time order."""
    order = np.lexsort((d["ts"], d["meter_id"]))
    kwh = d["kwh"][order]
    total = np.cumsum(kwh)
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = d["meter_id"][order][1:] != d["meter_id"][order][:-1]
    offset = np.maximum.accumulate(np.where(starts, total - kwh, 0.0))
    reg = np.empty(len(order))
    reg[order] = total - offset
    return {**d, "register": reg}


def drive(make, batch):
    op, rows = make(), 0
    for a in range(0, len(batch), BATCH):
        rows += sum(len(v) for k, v in op.process(batch.slice(a, a + BATCH)).items() if k == "out")
    return rows + sum(len(v) for k, v in op.finish().items() if k == "out")


@pytest.mark.parametrize("kind", ["dedupe", "register_deltas", "gaps"])
def test_meter_operators(benchmark, kind):
    d = with_registers(readings(100_000))
    batch = ps.Batch(d)
    make = {"dedupe": lambda: Dedupe(("meter_id",), TIME, "2h"),
            "register_deltas": lambda: RegisterDeltas(("meter_id",), TIME, "register", out="kwh_delta"),
            "gaps": lambda: Gaps(("meter_id",), TIME, "15m", tolerance="2m")}[kind]
    rows = drive(make, batch)
    if kind == "dedupe":
        assert rows == len(batch)  # the synthetic readings have no duplicates
    if kind == "register_deltas":
        assert rows == len(batch) - 100_000  # every reading but each meter's first gives usage
    benchmark.pedantic(drive, args=(make, batch), rounds=3, iterations=1)
    record(benchmark, f"meters {kind} keys=100000", len(batch))
