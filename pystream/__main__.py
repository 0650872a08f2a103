"""Command line: `pystream demo` (also `python -m pystream demo`)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pystream demo [--readings N] [--meters N] [--seed N] [--out DIR] [--serve HOST:PORT]\n"
              "       pystream run APP.py [--checkpoints DIR] [--guarantee G] [--resume] [--checkpoint-every N]\n"
              "                           [--serve HOST:PORT] [--token T] [--progress]\n"
              "                           [--ray N [--key-groups G] [--ray-address ADDR]]\n"
              "       pystream serve [--address HOST:PORT] [--meters N] [--hours H] [--pace X] [--token T]\n"
              "       pystream checkpoints list|show DIR [EPOCH]\n\n"
              "commands:\n  demo          run the smart-meter pipeline on synthetic data (embedded defaults)\n"
              "  run           run the flow defined in a Python file (a `flow` variable or a `build()` function)\n"
              "  serve         run the smart-meter pipeline live with queryable state, /metrics and a dashboard\n"
              "  checkpoints   list a checkpoint directory's epochs, or show one in detail")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if cmd == "checkpoints":
        return checkpoints_cmd(rest)
    if cmd == "serve":
        from .demo import serve_main

        return serve_main(rest)
    if cmd == "run":
        return run_cmd(rest)
    print(f"pystream: unknown command {cmd!r}; try 'pystream demo'", file=sys.stderr)
    return 2


def run_cmd(args) -> int:
    import argparse
    import os
    import runpy
    import time

    import pystream as ps

    p = argparse.ArgumentParser(prog="pystream run", description="Run the flow defined in a Python file.")
    p.add_argument("app", help="a .py file that defines `flow` (a ps.Flow) or `build()` returning one")
    p.add_argument("--checkpoints", default=None, help="checkpoint directory or fsspec URL")
    p.add_argument("--guarantee", default=None, choices=["at_most_once", "at_least_once", "exactly_once"])
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--checkpoint-every", default="64", help="batches (an int) or a duration such as 10s")
    p.add_argument("--serve", default=None, metavar="HOST:PORT", help="serve queryable state, /metrics and the "
                   "dashboard while it runs (e.g. 127.0.0.1:8080)")
    p.add_argument("--token", default=None, help="bearer token the server requires")
    p.add_argument("--progress", action="store_true", help="events/s, watermark and late counts on stderr")
    p.add_argument("--ray", type=int, default=None, metavar="N", help="run on the Ray runtime with N window "
                   "actors (pip install 'pystream[ray]')")
    p.add_argument("--key-groups", type=int, default=None, metavar="G", help="with --ray: key groups (default "
                   "128; keep them across runs that share checkpoints; at most G actors can restore them)")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="with --ray: a Ray cluster to join "
                   "('auto' for a running one; default: start a local one)")
    a = p.parse_args(args)
    # Modules beside the app import as they would under `python app.py` (its directory first
    # on the path), in the Ray runtime's actors too.
    app_dir = os.path.dirname(os.path.abspath(a.app))
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    if app_dir not in ps.runtimes.CODE_PATHS:
        ps.runtimes.CODE_PATHS.append(app_dir)
    runtime = None
    if a.ray is not None:
        if a.progress:
            p.error("--progress follows the local runtime; with --ray, the run's metrics are printed at the end")
        groups = 128 if a.key_groups is None else a.key_groups
        try:
            runtime = ps.runtimes.Ray(parallelism=a.ray, key_groups=groups, address=a.ray_address)
        except ValueError as e:
            p.error(f"--ray {a.ray} --key-groups {groups}: {e}")
    elif a.ray_address is not None or a.key_groups is not None:
        p.error("--key-groups and --ray-address go with --ray N")
    namespace = runpy.run_path(a.app, run_name="__pystream_app__")
    flow = namespace.get("flow")
    if flow is None and callable(namespace.get("build")):
        flow = namespace["build"]()
    if not isinstance(flow, ps.Flow):
        print(f"pystream run: {a.app} defines neither `flow = ps.Flow(...)` nor `def build(): return flow`",
              file=sys.stderr)
        return 2
    every = int(a.checkpoint_every) if a.checkpoint_every.isdigit() else a.checkpoint_every
    # The server is started here (as flow.run(serve=...) would) to say where it listens:
    # with port 0 the system picks it.
    server = flow.serve(a.serve, token=a.token) if a.serve is not None else None
    if server is not None:
        print(f"serving {server.url}/ (dashboard), {server.url}/api (queryable states), {server.url}/metrics",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        result = flow.run(checkpoints=a.checkpoints, resume=a.resume, guarantee=a.guarantee, checkpoint_every=every,
                          progress=a.progress, runtime=runtime)
    finally:
        if server is not None:
            server.close()
    elapsed = time.perf_counter() - t0
    print(f"flow {flow.name!r} finished in {elapsed:.2f} s"
          + (f", resumed from epoch {result.resumed_from}" if result.resumed_from is not None else "")
          + (f", {len(result.checkpoints)} checkpoints" if result.checkpoints else ""))
    for name, value in result.items():
        desc = f"{len(value):,} rows {value.columns}" if isinstance(value, ps.Batch) else str(value)
        print(f"  sink {name}: {desc}")
    ray = result.metrics.get("ray") if runtime is not None else None
    if ray is not None:
        print(f"  ray: {ray['parallelism']} window actors ({ray['transport'].replace('_', ' ')}), {ray['rounds']:,} "
              f"rounds in {ray['run_s']:.2f} s after a {ray['start_s']:.2f} s start, {ray['recoveries']} recoveries")
    else:
        for m in result.metrics.values():
            print(f"  {m['name']}: {m['events_in']:,} events in, {m['rows_out']:,} rows out, "
                  f"{m['late']:,} late, {m['invalid']:,} invalid")
    return 0


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
