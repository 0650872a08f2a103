"""Command line: `pystream demo` (also `python -m pystream demo`)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pystream demo [--readings N] [--meters N] [--seed N] [--out DIR]\n\n"
              "commands:\n  demo    run the smart-meter pipeline on synthetic data (embedded defaults)")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    print(f"pystream: unknown command {cmd!r}; try 'pystream demo'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
