"""Command line: `pystream demo` (also `python -m pystream demo`)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pystream demo [--readings N] [--meters N] [--seed N] [--out DIR]\n"
              "       pystream checkpoints list|show DIR [EPOCH]\n\n"
              "commands:\n  demo          run the smart-meter pipeline on synthetic data (embedded defaults)\n"
              "  checkpoints   list a checkpoint directory's epochs, or show one in detail")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if cmd == "checkpoints":
        return checkpoints_cmd(rest)
    print(f"pystream: unknown command {cmd!r}; try 'pystream demo'", file=sys.stderr)
    return 2


def checkpoints_cmd(args) -> int:
    import json

    from .checkpoint import CheckpointStore

    if len(args) < 2 or args[0] not in ("list", "show"):
        print("usage: pystream checkpoints list|show DIR [EPOCH]", file=sys.stderr)
        return 2
    import os

    if "://" not in args[1] and not os.path.isdir(args[1]):
        print(f"pystream: no checkpoint directory {args[1]!r}", file=sys.stderr)
        return 2
    epochs = CheckpointStore(args[1]).describe()
    if not epochs:
        print(f"no checkpoints in {args[1]}")
        return 0
    if args[0] == "list":
        print(f"{'epoch':>8} {'bytes':>12} {'state':<9} {'guarantee':<14} positions")
        for e in epochs:
            state = "corrupt" if not e["ok"] else ("finished" if e["finished"] else "ok")
            print(f"{e['epoch']:>8} {e['bytes']:>12,} {state:<9} {e.get('guarantee') or '-':<14} {e.get('positions', '')}")
        return 0
    want = int(args[2]) if len(args) > 2 else epochs[-1]["epoch"]
    match = [e for e in epochs if e["epoch"] == want]
    if not match:
        print(f"pystream: no epoch {want} in {args[1]} (have {[e['epoch'] for e in epochs]})", file=sys.stderr)
        return 2
    print(json.dumps(match[0], indent=2, default=str))
    return 0 if match[0]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
