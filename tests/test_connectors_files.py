"""File sources (CSV, JSON lines, Parquet): contents, types, positions and replay, directories,
following new files, and a windowed query from files to files."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import pystream as ps
from pystream.datagen import meter_readings


def write(path, data, fmt):
    table = pa.table(data)
    if fmt == "csv":
        pacsv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    else:
        with open(path, "w") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_directory_reads_every_row_in_order_and_replays_from_any_position(tmp_path, fmt):
    data = meter_readings(30_000, 300, seed=4)
    parts = [{k: v[i::3] for k, v in data.items()} for i in range(3)]
    for i, part in enumerate(parts):
        write(tmp_path / f"part-{i}.{fmt}", part, fmt)
    src = ps.sources.Files(str(tmp_path), batch_size=4_096, schema={"meter_id": "int64", "ts": "int64", "kwh": "float64"})
    items = list(src.read())
    got = ps.Batch.concat([b for b, _, _ in items])
    want = {k: np.concatenate([p[k] for p in parts]) for k in data}
    assert len(got) == 30_000 and all(np.array_equal(got[k], want[k]) for k in data)
    assert all(len(b) <= 4_096 for b, _, _ in items)
    for cut in (1, len(items) // 2, len(items) - 1):
        rest = ps.Batch.concat([b for b, _, _ in src.read(items[cut - 1][1])])
        assert all(np.array_equal(rest[k], want[k][sum(len(b) for b, _, _ in items[:cut]):]) for k in data)


def test_schema_errors_name_the_file_and_column(tmp_path):
    write(tmp_path / "a.csv", {"meter_id": ["x", "y"], "ts": [1, 2]}, "csv")
    src = ps.sources.Files(str(tmp_path / "a.csv"), schema={"meter_id": "int64"})
    with pytest.raises(ValueError, match=r"a.csv: column 'meter_id' cannot be read as int64"):
        list(src.read())
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        ps.sources.Files(str(tmp_path / "missing"), format="parquet")
    with pytest.raises(ValueError, match="file format must be one of"):
        ps.sources.Files(str(tmp_path / "a.csv"), format="xml")


def test_follow_picks_up_new_files(tmp_path):
    write(tmp_path / "0001.parquet", {"m": [1, 2], "t": [0, 1]}, "parquet")
    src = ps.sources.Files(str(tmp_path), follow=True, poll=0.01)
    seen, it = [], src.read()

    def later():
        time.sleep(0.1)
        write(tmp_path / ".0002.tmp", {"m": [3], "t": [2]}, "parquet")
        os.replace(tmp_path / ".0002.tmp", tmp_path / "0002.parquet")

    threading.Thread(target=later).start()
    deadline = time.time() + 5
    while sum(len(b) for b in seen) < 3 and time.time() < deadline:
        batch, pos, _ = next(it)
        if batch is not None:
            seen.append(batch)
    assert ps.Batch.concat(seen)["m"].tolist() == [1, 2, 3] and pos == ("0002.parquet", 1)


def test_parquet_to_window_to_parquet_exactly_once(tmp_path):
    data = meter_readings(50_000, 500, seed=8)
    os.makedirs(tmp_path / "in")
    write(tmp_path / "in" / "readings.parquet", data, "parquet")
    flow = ps.Flow("files")
    src = flow.source(ps.sources.Files(str(tmp_path / "in"), batch_size=5_000),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
    src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh")).sink(
        ps.sinks.Files(str(tmp_path / "out"), format="parquet", name="usage"))
    flow.run(checkpoints=str(tmp_path / "ckpt"), guarantee="exactly_once", checkpoint_every=3)
    out = ps.sinks.Files.read(str(tmp_path / "out"))
    assert abs(float(out["kwh"].sum()) - float(data["kwh"].sum())) < 1e-6
