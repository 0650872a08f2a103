import os
import sys

# The reference model and the crash worker live beside the tests and are imported as plain modules.
sys.path.insert(0, os.path.dirname(__file__))

#: Filled by test_crash.py: (guarantee, seed) -> {"crashes": n, "duplicates": n, "lost": n}.
CRASH_REPORT: dict = {}


def pytest_terminal_summary(terminalreporter):
    if not CRASH_REPORT:
        return
    tr = terminalreporter
    tr.section("crash tests: SIGKILL, restart with resume, compare with a fault-free run")
    for g in ("exactly_once", "at_least_once", "at_most_once"):
        runs = [v for (gg, _), v in CRASH_REPORT.items() if gg == g]
        if runs:
            tr.write_line(f"{g:14s} runs={len(runs):3d} crashes={sum(r['crashes'] for r in runs):3d} "
                          f"duplicate rows={sum(r['duplicates'] for r in runs):5d} lost rows={sum(r['lost'] for r in runs):5d}")


def require_service(host: str, port: int, what: str) -> None:
    """Skips a test whose service is unreachable, except in CI (CI=true), where that fails."""
    import socket

    import pytest

    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as e:
        msg = f"{what} is not reachable at {host}:{port} ({e})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs {msg}")
        pytest.skip(msg)
