"""One Ray window actor's windowing per row, in process, at parallelism 1, 2, 4, 8, 16.

    python benchmarks/actor_windowing.py --rows 32000000 --parallelism 1 8 16 --repeat 3

The scaling benchmark's flow (ray_scaling.py: readings of 100k meters split by meter into N
sources, unioned, 15-minute tumbling sum/count/max) without Ray: N SourceWorkers route every
read first (`round_rows` rows per source per round, aligned as on Ray), then WindowWorker j
takes all rounds (`round`, as the driver hands them, with the readers' marks) while the clock
runs. Prints ns per row of the actor's share, the median over `--repeat` runs of each timed
actor. This is the cost that grows with parallelism on one core, apart from what a bigger
machine adds (memory contention, waiting for the slowest actor): more, smaller pieces per
round, one key in N of each actor's ids, and the floors of every row. perf on this script
found the key index's hash path at 8 and 16 (csrc/key_index.h).

    python benchmarks/actor_windowing.py --rows 64000000 --parallelism 8 --side-by-side

`--side-by-side` asks where a bigger machine's extra cost per row comes from (on a lent 16-vCPU
machine a Ray window actor's rounds cost 1.45x per row at parallelism 8 against 1, in process
on 2 cores 1.06x): after the rounds are routed, forked processes time actors' windowing in
three settings, every process on its own share: actor 0 alone; all p actors at once (the
machine's cores, caches and memory shared as the window threads share them, nothing else
running); and all p actors beside p processes that route reads in a loop, as the reading
threads do beside the window threads on Ray. If the second costs as much per row as Ray's
rounds, the machine is the limit (hyper-threads, memory); if only the third does, the
routing beside the windowing is; if neither, Ray's own processes, the GIL or the hand-over.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import numpy as np
from ray_scaling import flow, readings, split

import pystream as ps


def routed_rounds(parts: list, parallelism: int, groups: int, round_rows: int) -> list:
    """Every round as a window actor's `round` takes it: (channels, reads, marks)."""
    f = flow(parts)
    items = ps.runtimes.Plan(f).round_items(round_rows)
    sources = [n.id for n in f._nodes if n.kind == "source"]
    readers = [ps.runtimes.SourceWorker(f, sid, parallelism, groups, round_rows=round_rows, items=items)
               for sid in sources]
    rounds = []
    while True:
        chans, reads, ends, top = [], [], [], {}
        for i, reader in enumerate(readers):
            read, (label, _position, done, told) = reader.next()
            if done:
                continue
            reads.append(read)
            if isinstance(label, tuple):  # aligned: a channel per step
                chans.append(tuple(i for _ in label))
                ends.append(told["ends"])
            else:
                chans.append(i)
            for (wid, _other), t in told["max"].items():
                top[(wid, i)] = t
        if not reads:
            return rounds
        marks = {"max": top, "first": {}}
        if ends:
            marks["ends"] = ends
        rounds.append((chans, reads, marks))


def actor_ns_per_row(parts: list, rounds: list, index: int, parallelism: int, groups: int, ready=None) -> float:
    """ns per row of window actor `index`'s rounds; `ready()`, where given, is called once the
    actor is built, just before the clock starts (a barrier of processes started together)."""
    w = ps.runtimes.WindowWorker(flow(parts), index, parallelism, groups)
    w.start({}, None)
    if ready is not None:
        ready()
    t = time.perf_counter()
    for chans, reads, marks in rounds:
        w.round({}, chans, *reads, marks=marks)
    took = time.perf_counter() - t
    w.finish()
    w.close()
    rows = sum(len(rows) for _c, reads, _m in rounds for read in reads for step in read[index]
               for _wid, rows, _g in step)
    return took / rows * 1e9


def _time_actor(parts, rounds, index, parallelism, groups, start, out) -> None:
    # once untimed first: a fresh process's first run writes pages it has not touched yet (a
    # fault each, copied where the parent had them), which a long-running actor, and the
    # in-process timings, reuse
    actor_ns_per_row(parts, rounds, index, parallelism, groups)
    out.put(actor_ns_per_row(parts, rounds, index, parallelism, groups, ready=start.wait))


def _route_loop(parts, index, parallelism, groups, round_rows, stop) -> None:
    """Routes source `index`'s reads over and over (into one reused buffer, as a reading actor
    routes into its segments) until `stop` is set."""
    f = flow(parts)
    items = ps.runtimes.Plan(f).round_items(round_rows)
    sid = [n.id for n in f._nodes if n.kind == "source"][index]
    room = {}
    while not stop.is_set():
        reader = ps.runtimes.SourceWorker(f, sid, parallelism, groups, round_rows=round_rows, items=items)
        reader.out = lambda n: room.setdefault(n, np.ones(n, np.uint8))
        while not stop.is_set() and not reader.next()[1][2]:
            pass


def side_by_side(parts: list, rounds: list, parallelism: int, groups: int, round_rows: int,
                 actors: int, routers: int) -> list:
    """ns per row of actors 0..actors-1 timed at once in forked processes, beside `routers`
    processes routing reads in a loop."""
    ctx = multiprocessing.get_context("fork")
    start, out, stop = ctx.Barrier(actors), ctx.Queue(), ctx.Event()
    loops = [ctx.Process(target=_route_loop, args=(parts, i % parallelism, parallelism, groups, round_rows, stop))
             for i in range(routers)]
    for q in loops:
        q.start()
    if loops:
        time.sleep(1.0)  # the loops past their first reads
    procs = [ctx.Process(target=_time_actor, args=(parts, rounds, j, parallelism, groups, start, out))
             for j in range(actors)]
    for q in procs:
        q.start()
    ns = [out.get() for _ in procs]
    stop.set()
    for q in procs + loops:
        q.join()
    return ns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16_000_000)
    ap.add_argument("--meters", type=int, default=100_000)
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--key-groups", type=int, default=128)
    ap.add_argument("--round-rows", type=int, default=524_288)
    ap.add_argument("--actors", type=int, default=2, help="window actors timed per parallelism (0, 1, ...)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--side-by-side", action="store_true",
                    help="also time actors in forked processes: one alone, all at once, all beside routing loops")
    args = ap.parse_args()
    data = readings(args.rows, args.meters)
    for p in args.parallelism:
        parts = split(data, p)
        t = time.perf_counter()
        rounds = routed_rounds(parts, p, args.key_groups, args.round_rows)
        routing = time.perf_counter() - t
        ns = [actor_ns_per_row(parts, rounds, j, p, args.key_groups)
              for _ in range(args.repeat) for j in range(min(args.actors, p))]
        print(f"parallelism {p:>2}: {statistics.median(ns):5.1f} ns/row per actor (median of {len(ns)}: "
              f"{min(ns):.1f}-{max(ns):.1f}); {len(rounds)} rounds, routed in {routing:.1f} s", flush=True)
        if args.side_by_side:
            for label, actors, routers in [("alone", 1, 0), (f"{p} at once", p, 0),
                                           (f"{p} at once + {p} routing loops", p, p)]:
                ns = [x for _ in range(args.repeat)
                      for x in side_by_side(parts, rounds, p, args.key_groups, args.round_rows, actors, routers)]
                print(f"parallelism {p:>2}, side by side, {label}: {statistics.median(ns):5.1f} ns/row per actor "
                      f"(median of {len(ns)}: {min(ns):.1f}-{max(ns):.1f})", flush=True)
        del rounds


if __name__ == "__main__":
    main()
