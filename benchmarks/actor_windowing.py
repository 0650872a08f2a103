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
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def actor_ns_per_row(parts: list, rounds: list, index: int, parallelism: int, groups: int) -> float:
    w = ps.runtimes.WindowWorker(flow(parts), index, parallelism, groups)
    w.start({}, None)
    t = time.perf_counter()
    for chans, reads, marks in rounds:
        w.round({}, chans, *reads, marks=marks)
    took = time.perf_counter() - t
    w.finish()
    w.close()
    rows = sum(len(rows) for _c, reads, _m in rounds for read in reads for step in read[index]
               for _wid, rows, _g in step)
    return took / rows * 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16_000_000)
    ap.add_argument("--meters", type=int, default=100_000)
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--key-groups", type=int, default=128)
    ap.add_argument("--round-rows", type=int, default=524_288)
    ap.add_argument("--actors", type=int, default=2, help="window actors timed per parallelism (0, 1, ...)")
    ap.add_argument("--repeat", type=int, default=3)
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
        del rounds


if __name__ == "__main__":
    main()
