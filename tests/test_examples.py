"""Every example in examples/ runs through `pystream run`, and the CLI options work."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import pystream as ps

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
