"""PostgreSQL sink against the live server on loopback: exactly-once upserts, and a crash test
(SIGKILL at every phase of the two-phase commit, restart with resume) that must leave exactly
the rows of a fault-free run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

import pystream as ps
from conftest import require_service
from pystream.datagen import meter_readings

DSN = os.environ.get("PYSTREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
WORKER = os.path.join(os.path.dirname(__file__), "pg_worker.py")


@pytest.fixture
def table():
    require_service("127.0.0.1", 5432, "PostgreSQL")

    name = f"pystream_test_{uuid.uuid4().hex[:10]}"
    yield name
    drop(name)


def drop(name):
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"DROP TABLE IF EXISTS {name}__pystream_stage")
        conn.execute("CREATE TABLE IF NOT EXISTS pystream_epochs (sink text PRIMARY KEY, epoch bigint NOT NULL)")
        conn.execute("DELETE FROM pystream_epochs WHERE sink = %s", (name,))


def final_rows(batch: ps.Batch):
    last = {}
    for m, s, k, n in zip(*(batch[c].tolist() for c in ("meter_id", "window_start", "kwh", "n"))):
        last[(m, s)] = (k, n)
    return last


@pytest.mark.parametrize("buffer_rows", [65_536, 100])  # 100: epochs spill and stage in chunks
def test_exactly_once_upserts_equal_the_final_window_values(table, tmp_path, buffer_rows):
    data = meter_readings(30_000, 300, seed=5, max_delay_ms=30 * 60_000)
    flow = ps.Flow("pg")
    src = flow.source(ps.sources.Arrays(data, batch_size=2_000), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="5m"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="20m").aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count())
    usage.sink(ps.sinks.Postgres(DSN, table, key=("meter_id", "window_start"), buffer_rows=buffer_rows))
    usage.sink(ps.sinks.Files(str(tmp_path / "files"), name="files", buffer_rows=buffer_rows))
    flow.run(checkpoints=str(tmp_path / "ckpt"), guarantee="exactly_once", checkpoint_every=3)
    files = ps.sinks.Files.read(str(tmp_path / "files"))
    assert int(files["update"].sum()) > 0  # late updates happened and must replace on-time rows
    got = ps.sinks.Postgres.read(DSN, table)
    assert {(m, s): (k, n) for m, s, k, n in zip(*(got[c].tolist() for c in ("meter_id", "window_start", "kwh", "n")))} == \
        final_rows(files)
    assert got.columns[:3] == ["meter_id", "window_start", "window_end"]


def run_worker(table, ckpt, resume=False, crash=None):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    env.pop("PYSTREAM_CRASH_AT", None)
    if crash:
        env["PYSTREAM_CRASH_AT"] = crash
    args = [sys.executable, WORKER, DSN, table, ckpt] + (["--resume"] if resume else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=os.path.dirname(ckpt))


def table_rows(table):
    b = ps.sinks.Postgres.read(DSN, table)
    return sorted(zip(*(b[c].tolist() for c in ("meter_id", "window_start", "kwh", "n", "update"))))


@pytest.mark.parametrize("crash", ["precommit:3", "commit:2", "commit:5", "batch:7", "checkpoint_write:4"])
def test_crash_and_resume_leaves_exactly_the_fault_free_rows(table, tmp_path, crash):
    ref = f"{table}_ref"
    try:
        assert run_worker(ref, str(tmp_path / "ref")).returncode == 0
        want = table_rows(ref)
    finally:
        drop(ref)
    first = run_worker(table, str(tmp_path / "ckpt"), crash=crash)
    assert first.returncode == -9, (first.returncode, first.stderr[-2000:])  # it really crashed
    for _ in range(5):
        again = run_worker(table, str(tmp_path / "ckpt"), resume=True)
        if again.returncode == 0:
            break
    assert again.returncode == 0, again.stderr[-2000:]
    got = table_rows(table)
    assert len(got) == len(want) > 100
    assert got == want  # nothing lost, nothing twice


def test_a_rerun_epoch_is_skipped_by_the_marker(table):
    """An epoch staged and committed twice (a replayed epoch) lands once: the epoch marker is
    checked in the same transaction as the move."""
    sink = ps.sinks.Postgres(DSN, table)
    sink.open()
    sink.recover(None, -1)
    rows = ps.Batch({"meter_id": np.array([1, 2]), "kwh": np.array([0.5, 0.25])})
    for _ in range(2):
        sink.write(rows)
        sink.commit(sink.pre_commit(7))
    sink.write(ps.Batch({"meter_id": np.array([3]), "kwh": np.array([1.0])}))
    sink.commit(sink.pre_commit(8))
    sink.close()
    assert sorted(ps.sinks.Postgres.read(DSN, table)["meter_id"].tolist()) == [1, 2, 3]
