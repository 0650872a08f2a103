"""The README's example runs as written, and its set-up commands are the ones CI runs."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(capsys):
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result["usage"]) > 0 and len(result["load"]) > 0
    assert result["usage"]["n"].sum() + len(result["late"]) + len(result["invalid"]) == 1_000_000
    assert "meter_id" in capsys.readouterr().out


def test_readme_has_the_two_setup_commands_first():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = [line for line in blocks[0].splitlines() if line and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && pystream demo",
        "python3 -m venv .venv && . .venv/bin/activate && pip install '.[test]' && pytest",
    ]
    assert "pip install '\\.\\[test\\]' && pytest" in (README.parent / ".ci" / "run").read_text()
