"""Which CPUs share a physical core, measured rather than read from the topology a VM reports:
a busy loop pinned to CPU 0 runs once alone and once beside the same loop pinned to CPU k,
for every other k. Two logical CPUs of one core (hyper-threads) slow each other down
(~1.3-1.9x), separate cores hardly at all. A lent machine said "1 thread per core" while 8
independent runtimes reached 79% of 8 x one and 16 reached 59%: the pattern hidden siblings
would give. Each pair is timed as 3 (alone, together) pairs back to back and judged by the
median ratio, which a noisy neighbour moves less. Where CPU 0 has a sibling, a second CPU is
probed too, so the output shows how siblings are numbered (for pinning actors to cores). Linux
only (sched_setaffinity); about 0.8 s per CPU probed against."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time

LOOPS = 3_000_000
PAIRS = 3


def _spin(cpu: int, start, out) -> None:
    os.sched_setaffinity(0, {cpu})
    start.wait()
    t = time.perf_counter()
    x = 0
    for i in range(LOOPS):  # integer work on one core's execution units, no memory traffic
        x += i & 7
    out.put((cpu, time.perf_counter() - t))


def _run(cpus: list) -> dict:
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_spin, args=(c, start, out)) for c in cpus]
    for p in procs:
        p.start()
    time.sleep(0.05)
    start.set()
    times = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return times


def siblings(cpu: int, others: list) -> list:
    """Prints how much a loop on `cpu` slows beside one on each of `others` (median of PAIRS
    (alone, together) timings) and returns those that share its core."""
    slow, alone = [], []
    for k in others:
        ratios = []
        for _ in range(PAIRS):
            a = _run([cpu])[cpu]
            ratios.append(_run([cpu, k])[cpu] / a)
            alone.append(a)
        slow.append((k, statistics.median(ratios)))
    shared = [k for k, r in slow if r > 1.25]
    print(f"smt probe: CPU {cpu} alone {statistics.median(alone) * 1e3:.0f} ms; beside CPU k, its time x: "
          + " ".join(f"{k}:{r:.2f}" for k, r in slow))
    print(f"smt probe: CPUs that share CPU {cpu}'s core: {shared if shared else 'none'}")
    return shared


def main() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("smt probe: one CPU, nothing to compare")
        return
    shared = siblings(cpus[0], cpus[1:])
    if shared and len(cpus) > 3:  # a second core's siblings tell the numbering (i, i+1 or i, i+n/2)
        second = next(c for c in cpus[1:] if c not in shared)
        siblings(second, [c for c in cpus if c not in (cpus[0], second, *shared)])


if __name__ == "__main__":
    main()
