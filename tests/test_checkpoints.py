"""Checkpoint storage, recovery in process, guarantee checks and the checkpoints CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pystream as ps
from pystream.checkpoint import CheckpointError, CheckpointStore
from pystream.datagen import meter_readings


class Flaky(ps.sources.Arrays):
    """An Arrays source that raises after `fail_after` batches (a crash inside the process)."""

    def __init__(self, data, fail_after=None, **kw):
        super().__init__(data, **kw)
        self.fail_after = fail_after

    def read(self, position=None):
        for i, item in enumerate(super().read(position)):
            if self.fail_after is not None and i == self.fail_after:
                raise ConnectionError("source went away")
            yield item


def meter_flow(out, source, window=None):
    flow = ps.Flow("ckpt")
    src = flow.source(source, time=ps.EventTime("ts", unit="ms", max_out_of_orderness="2m"))
    res = src.key_by("meter_id").window(window or ps.windows.Sliding("30m", "15m"), allowed_lateness="5m").aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count(), last=ps.agg.last("kwh"))
    res.sink(ps.sinks.Files(os.path.join(out, "usage"), name="usage"))
    res.late().sink(ps.sinks.Files(os.path.join(out, "late"), name="late"))
    return flow


DATA = meter_readings(30_000, 200, seed=4, max_delay_ms=10 * 60_000)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once", "at_most_once"])
@pytest.mark.parametrize("fail_after", [1, 7, 13])
def test_resume_after_failure_equals_uninterrupted(tmp_path, guarantee, fail_after):
    ref = meter_flow(str(tmp_path / "ref"), ps.sources.Arrays(DATA, batch_size=1000)).run(
        checkpoints=str(tmp_path / "ref-ckpt"), guarantee=guarantee, checkpoint_every=2)
    assert ref.resumed_from is None and len(ref.checkpoints) >= 10
    out, ckpt = str(tmp_path / "out"), str(tmp_path / "ckpt")
    with pytest.raises(ConnectionError):
        meter_flow(out, Flaky(DATA, fail_after=fail_after, batch_size=1000)).run(
            checkpoints=ckpt, guarantee=guarantee, checkpoint_every=2)
    res = meter_flow(out, Flaky(DATA, batch_size=1000)).run(checkpoints=ckpt, resume=True, guarantee=guarantee,
                                                            checkpoint_every=2)
    expected_epoch = fail_after // 2 - 1 if fail_after >= 2 else None  # checkpoints every 2 batches
    assert res.resumed_from == expected_epoch
    for sink in ("usage", "late"):
        got = ps.sinks.Files.read(os.path.join(out, sink))
        want = ps.sinks.Files.read(os.path.join(str(tmp_path / "ref"), sink))
        # An exception (unlike a kill) loses only unpublished output, and the replay re-creates it.
        assert got == want


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    flow = meter_flow(str(tmp_path / "o"), ps.sources.Arrays(DATA, batch_size=5000))
    flow.run(checkpoints=str(tmp_path / "c"), guarantee="exactly_once")
    before = sorted(os.listdir(tmp_path / "o" / "usage"))
    again = meter_flow(str(tmp_path / "o"), ps.sources.Arrays(DATA, batch_size=5000)).run(
        checkpoints=str(tmp_path / "c"), resume=True, guarantee="exactly_once")
    assert again.checkpoints == [] and sorted(os.listdir(tmp_path / "o" / "usage")) == before


def test_store_keeps_the_last_n_and_writes_a_manifest(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    for e in range(5):
        store.write(e, {"x": e}, "f" * 64)
    assert store.epochs() == [3, 4]
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest == {"format": 1, "flow": "f" * 64, "epochs": [3, 4]}
    assert store.read(4, "f" * 64) == {"x": 4}
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "garbage"])
def test_corrupt_checkpoint_is_detected_and_never_loaded(tmp_path, damage):
    store = CheckpointStore(str(tmp_path))
    store.write(0, {"state": list(range(1000))}, "f" * 64)
    path = tmp_path / store.name_of(0)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-100]
    elif damage == "bitflip":
        raw[-50] ^= 0x04
    else:
        raw = bytearray(b"not a checkpoint")
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        store.read(0)


def test_checkpoint_from_a_different_flow_is_refused(tmp_path):
    meter_flow(str(tmp_path / "o"), ps.sources.Arrays(DATA, batch_size=5000)).run(checkpoints=str(tmp_path / "c"))
    changed = meter_flow(str(tmp_path / "o2"), ps.sources.Arrays(DATA, batch_size=5000), window=ps.windows.Tumbling("1h"))
    with pytest.raises(CheckpointError, match="written by a different flow"):
        changed.run(checkpoints=str(tmp_path / "c"), resume=True)


def test_guarantee_is_checked_when_the_run_starts():
    flow = ps.Flow("g")
    src = flow.source(ps.sources.Arrays({"t": np.arange(3)}), time=ps.EventTime("t", unit="s"))
    src.window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("mem"))
    with pytest.raises(ValueError, match=r"exactly_once needs transactional sinks, but sink 'mem' \(Collect\) cannot "
                                         r"take part in a two-phase commit"):
        flow.run(checkpoints="unused", guarantee="exactly_once")
    with pytest.raises(ValueError, match=r"guarantee='exactly_once' needs checkpoints"):
        flow.run(guarantee="exactly_once")
    with pytest.raises(ValueError, match=r"guarantee must be one of"):
        flow.run(checkpoints="unused", guarantee="twice")


def test_exactly_once_refuses_a_source_that_cannot_replay(tmp_path):
    class Live(ps.sources.Source):
        name = "live-feed"

        def read(self, position=None):
            yield ps.Batch({"t": np.arange(3)}), None

    flow = ps.Flow("g")
    src = flow.source(Live(), time=ps.EventTime("t", unit="s"))
    src.window(ps.windows.Tumbling("1m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Files(str(tmp_path / "x")))
    with pytest.raises(ValueError, match=r"exactly_once needs replayable sources, but source 'live-feed' \(Live\)"):
        flow.run(checkpoints=str(tmp_path / "c"), guarantee="exactly_once")


def test_checkpoints_cli_list_and_show(tmp_path):
    meter_flow(str(tmp_path / "o"), ps.sources.Arrays(DATA, batch_size=2000)).run(
        checkpoints=str(tmp_path / "c"), guarantee="exactly_once", checkpoint_every=3)
    listing = subprocess.run([sys.executable, "-m", "pystream", "checkpoints", "list", str(tmp_path / "c")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["epoch", "bytes", "state"] and "finished" in lines[-1] and "exactly_once" in lines[-1]
    show = subprocess.run([sys.executable, "-m", "pystream", "checkpoints", "show", str(tmp_path / "c")],
                          capture_output=True, text=True, cwd=tmp_path)
    info = json.loads(show.stdout)
    assert info["ok"] and info["finished"] and info["operators"]["window1"]["keys"] == 200
    assert info["operators"]["window1"]["watermark"] > 1_735_689_600_000 * 10**6


def test_files_sink_parquet_round_trip(tmp_path):
    def flow_into(sink):
        flow = ps.Flow("pq")
        src = flow.source(ps.sources.Arrays(DATA, batch_size=4000),
                          time=ps.EventTime("ts", unit="ms", max_out_of_orderness="2m"))
        src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh")).sink(sink)
        return flow

    flow_into(ps.sinks.Files(str(tmp_path / "pq"), format="parquet")).run(
        checkpoints=str(tmp_path / "c"), guarantee="exactly_once", checkpoint_every=2)
    got = ps.sinks.Files.read(str(tmp_path / "pq"))
    want = flow_into(ps.sinks.Collect("mem")).run()["mem"]
    assert got == want
    assert got["window_start"].dtype == np.int64 and len(got) > 10_000
    assert all(p.endswith(".parquet") for p in ps.sinks.Files.parts(str(tmp_path / "pq")))


def test_checkpoint_every_duration(tmp_path):
    import time

    flow = ps.Flow("slow")
    src = flow.source(ps.sources.Arrays(DATA, batch_size=3000), time=ps.EventTime("ts", unit="ms", max_out_of_orderness="2m"))

    def slow(batch):
        time.sleep(0.003)  # each round takes longer than the 1 ms checkpoint interval
        return batch

    src.map(slow).window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Files(str(tmp_path / "o")))
    res = flow.run(checkpoints=str(tmp_path / "c"), guarantee="exactly_once", checkpoint_every="1ms")
    # 10 rounds with a batch, each followed by a checkpoint (the source's end is only seen in
    # an 11th round), then the final checkpoint after the windows are flushed.
    assert res.checkpoints == list(range(11))


def test_checkpoints_on_an_fsspec_url(tmp_path):
    pytest.importorskip("fsspec")
    url = f"memory://pystream-test-{os.getpid()}"
    flow = meter_flow(str(tmp_path / "o"), ps.sources.Arrays(DATA, batch_size=5000))
    res = flow.run(checkpoints=url, guarantee="exactly_once", checkpoint_every=2)
    store = CheckpointStore(url)
    assert store.epochs() == res.checkpoints[-3:] and store.read(store.epochs()[-1])["finished"]
    again = meter_flow(str(tmp_path / "o"), ps.sources.Arrays(DATA, batch_size=5000)).run(
        checkpoints=url, resume=True, guarantee="exactly_once")
    assert again.resumed_from == res.checkpoints[-1]


def test_csv_part_files_read_back_typed_without_pyarrow(tmp_path, monkeypatch):
    """The README's first command installs only NumPy: part files then are CSV written and read
    by the standard library, and must come back as numbers, not strings."""
    import sys

    import numpy as np

    import pystream as ps

    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)  # "import pyarrow.csv" raises ImportError
    sink = ps.sinks.Files(str(tmp_path / "o"), name="o")
    sink.open()
    sink.write(ps.Batch({"m": np.array([1, 2]), "kwh": np.array([0.5, 1.25]), "update": np.array([True, False]),
                         "tz": np.array(["UTC", "Europe/Berlin"], dtype=object)}))
    sink.close()
    back = ps.sinks.Files.read(str(tmp_path / "o"))
    assert back["m"].dtype == np.int64 and back["kwh"].dtype == np.float64 and back["update"].dtype == bool
    assert back["m"].tolist() == [1, 2] and back["update"].tolist() == [True, False]
    assert back["tz"].tolist() == ["UTC", "Europe/Berlin"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_files_sink_streams_an_epoch_to_disk_holding_at_most_buffer_rows(tmp_path, fmt):
    import glob

    import numpy as np

    out = str(tmp_path / "o")
    sink = ps.sinks.Files(out, format=fmt, name="o", buffer_rows=1_000)
    sink.open()
    rng = np.random.default_rng(1)
    batches = [ps.Batch({"m": np.arange(i * 300, (i + 1) * 300), "kwh": rng.random(300),
                         "update": np.zeros(300, dtype=bool)}) for i in range(20)]
    for b in batches:
        sink.write(b)
        assert sum(len(x) for x in sink._pending) < 1_000  # the rest went to the epoch's file
    in_progress = glob.glob(os.path.join(out, ".tmp-*"))
    assert len(in_progress) == 1 and os.path.getsize(in_progress[0]) > 0
    assert ps.sinks.Files.parts(out) == []  # nothing visible before the epoch commits
    handle = sink.pre_commit(0)
    assert glob.glob(os.path.join(out, ".tmp-*")) == [] and os.path.exists(os.path.join(out, handle["staged"]))
    sink.commit(handle)
    back = ps.sinks.Files.read(out)
    want = ps.Batch.concat(batches)
    assert back["m"].tolist() == want["m"].tolist() and np.allclose(back["kwh"], want["kwh"])
    # The next epoch starts a file of its own; a batch whose types do not fit it is refused,
    # naming the sink, and what was written before stays.
    sink.write(ps.Batch({"m": np.array([1]), "kwh": np.array([0.5]), "update": np.array([False])}))
    sink._spill()
    with pytest.raises(ValueError, match=r"sink 'o': a batch's columns \['m', 'kwh', 'update'\] with types"):
        sink.write(ps.Batch({"m": np.array(["x"], dtype=object), "kwh": np.array([0.5]),
                             "update": np.array([False])}))
        sink._spill()
    sink.flush_epoch(1)
    assert len(ps.sinks.Files.read(out)) == len(want) + 1
    # A reopened sink (a restart) drops the half-written epoch: the runtime replays it.
    sink.write(ps.Batch({"m": np.array([2]), "kwh": np.array([0.5]), "update": np.array([False])}))
    sink._spill()
    assert len(glob.glob(os.path.join(out, ".tmp-*"))) == 1
    sink.open()
    assert glob.glob(os.path.join(out, ".tmp-*")) == []


def test_a_spool_keeps_at_most_buffer_rows_in_memory_and_hands_batches_back_in_order():
    import numpy as np

    spool = ps.sinks.Spool(buffer_rows=250)
    batches = [ps.Batch({"i": np.arange(k * 100, (k + 1) * 100), "s": np.array([f"r{k}"] * 100, dtype=object)})
               for k in range(10)]
    for b in batches:
        spool.add(b)
        assert sum(len(x) for x in spool._mem) < 250  # the rest went to the temp file
    assert spool.rows == 1_000
    chunks = list(spool.drain())
    assert len(chunks) > 1 and all(len(c) <= 350 for c in chunks)
    back = ps.Batch.concat(chunks)
    assert back["i"].tolist() == list(range(1_000)) and back["s"].tolist() == [f"r{k}" for k in range(10) for _ in range(100)]
    assert spool.rows == 0 and list(spool.drain()) == []  # drained: empty, and reusable
    spool.add(batches[0])
    spool.discard()
    assert list(spool.drain()) == []
    with pytest.raises(ValueError, match="buffer_rows must be an int >= 1, got 0"):
        ps.sinks.Spool(0)
