"""A checkpointed meter flow, run in a subprocess by test_crash.py (and killed there).

usage: crash_worker.py OUT_DIR CKPT_DIR GUARANTEE [--resume]
PYSTREAM_CRASH_AT="phase:n" makes it SIGKILL itself at the n-th time it reaches `phase`.
"""

import sys

import pystream as ps
from pystream.datagen import meter_readings


def build(out_dir: str) -> ps.Flow:
    data = meter_readings(60_000, 300, seed=9, max_delay_ms=20 * 60_000)
    flow = ps.Flow("crash")
    src = flow.source(ps.sources.Arrays(data, batch_size=1000),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="5m"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("15m"), allowed_lateness="10m").aggregate(
        kwh=ps.agg.sum("kwh"), n=ps.agg.count())
    usage.sink(ps.sinks.Files(f"{out_dir}/usage", name="usage"))
    usage.late().sink(ps.sinks.Files(f"{out_dir}/late", name="late"))
    src.window(ps.windows.Sliding("1h", "15m")).aggregate(kwh=ps.agg.sum("kwh")).sink(
        ps.sinks.Files(f"{out_dir}/load", name="load"))
    return flow


if __name__ == "__main__":
    out_dir, ckpt_dir, guarantee = sys.argv[1:4]
    res = build(out_dir).run(checkpoints=ckpt_dir, resume="--resume" in sys.argv, guarantee=guarantee,
                             checkpoint_every=3)
    print(f"done resumed_from={res.resumed_from} checkpoints={len(res.checkpoints)}")
