"""Every example in examples/ runs through `pystream run`, and the CLI options work."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import pystream as ps
from pystream.datagen import meter_readings

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def pystream_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pystream", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example, tmp_path):
    args = ["run", example]
    if example.name == "kafka_to_postgres.py":
        pytest.importorskip("confluent_kafka")
        from conftest import require_service

        require_service("127.0.0.1", 5432, "PostgreSQL")
        args += ["--checkpoints", "state", "--guarantee", "exactly_once", "--checkpoint-every", "3"]
    if "exactly_once" in example.name:
        args += ["--checkpoints", "state", "--guarantee", "exactly_once", "--checkpoint-every", "5"]
    r = pystream_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "finished in" in r.stdout and "events in" in r.stdout


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"tumbling_usage.py", "late_data.py", "exactly_once_parquet.py", "system_load.py",
                                          "daily_bills.py", "appliance_sessions.py", "kafka_to_postgres.py"}


def test_run_serves_and_reports_progress(tmp_path):
    example = next(p for p in EXAMPLES if p.name == "tumbling_usage.py")
    r = pystream_cli("run", example, "--serve", "127.0.0.1:0", "--progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "events" in r.stderr and "watermark end of input" in r.stderr
    # where the server listened (port 0: the system picked one)
    assert re.search(r"serving http://127\.0\.0\.1:[1-9][0-9]*/ \(dashboard\)", r.stderr), r.stderr


def test_run_resume_keeps_exactly_once_output(tmp_path):
    example = next(p for p in EXAMPLES if p.name == "exactly_once_parquet.py")
    first = pystream_cli("run", example, "--checkpoints", "state", "--guarantee", "exactly_once",
                         "--checkpoint-every", "5", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = ps.sinks.Files.read(str(tmp_path / "out" / "hourly"))
    again = pystream_cli("run", example, "--checkpoints", "state", "--guarantee", "exactly_once", "--resume",
                         cwd=tmp_path)
    assert again.returncode == 0 and "resumed from epoch" in again.stdout
    assert ps.sinks.Files.read(str(tmp_path / "out" / "hourly")) == before


def test_run_refuses_a_file_without_a_flow(tmp_path):
    (tmp_path / "empty.py").write_text("x = 1\n")
    r = pystream_cli("run", "empty.py", cwd=tmp_path)
    assert r.returncode == 2 and "defines neither" in r.stderr


def test_run_on_ray_writes_what_the_local_runtime_writes(tmp_path):
    pytest.importorskip("ray")
    example = next(p for p in EXAMPLES if p.name == "tumbling_usage.py")
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = pystream_cli("run", example, cwd=tmp_path / "local")
    dist = pystream_cli("run", example, "--ray", "2", "--key-groups", "16", cwd=tmp_path / "ray")
    assert local.returncode == 0 and dist.returncode == 0, dist.stderr
    assert "ray: 2 window actors" in dist.stdout and "0 recoveries" in dist.stdout

    def rows(where):
        b = ps.sinks.Files.read(str(where / "out" / "usage_15m"))
        return sorted(zip(*(b[c].tolist() for c in sorted(b.columns))))

    want = rows(tmp_path / "local")
    assert len(want) == 142_400 and rows(tmp_path / "ray") == want
    for bad, says in [(["--ray", "2", "--progress"], "--progress follows the local runtime"),
                      (["--ray", "0"], "parallelism must be an int >= 1, got 0"),
                      (["--key-groups=16"], "--key-groups and --ray-address go with --ray N")]:
        r = pystream_cli("run", example, *bad, cwd=tmp_path)
        assert r.returncode == 2 and says in r.stderr, (bad, r.stderr)


APP = '''
import pystream as ps
from pystream.datagen import meter_readings
from pystream.datagen import meter_readings
from helpers import Doubled, positive  # a module beside this file

flow = ps.Flow("app")
s = flow.source(Doubled(meter_readings(50_000, n_meters=500, seed=3), batch_size=5_000),
                time=ps.EventTime("ts", unit="ms", max_out_of_orderness="60s"))
s.filter(positive).map(lambda b: b.with_columns(wh=b["kwh"] * 1000)).key_by("meter_id") \\
    .window(ps.windows.Tumbling("1h")).aggregate(wh=ps.agg.sum("wh")).sink(ps.sinks.Files("out/hourly", name="hourly"))
'''

HELPERS = '''
import pystream as ps
from pystream.datagen import meter_readings


class Doubled(ps.sources.Arrays):
    def read(self, position=None):
        for b, pos, part in super().read(position):
            yield b.with_columns(kwh=b["kwh"] * 2), pos, part


def positive(b):
    return b["kwh"] > 0
'''


@pytest.mark.parametrize("ray", [False, True])
def test_run_imports_modules_beside_the_app_as_python_would(tmp_path, ray):
    # The app lives in its own directory and imports a module there (a source class and a
    # filter); pystream runs it from elsewhere, locally and in Ray's actors, which unpickle
    # the flow's functions and classes from that module.
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "job.py").write_text(APP)
    (tmp_path / "app" / "helpers.py").write_text(HELPERS)
    if ray:
        pytest.importorskip("ray")
    r = pystream_cli("run", "app/job.py", *(["--ray", "2", "--key-groups", "16"] if ray else []), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = ps.sinks.Files.read(str(tmp_path / "out" / "hourly"))
    assert len(got) == 9_000 and np.isclose(got["wh"].sum(), 2_000 * meter_readings(
        50_000, n_meters=500, seed=3)["kwh"].sum())
