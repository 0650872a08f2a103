"""One member of a Kafka consumer group, run as a subprocess by test_kafka_group.py.
usage: kafka_group_worker.py BOOTSTRAP TOPIC GROUP STATE OUT [SLEEP_PER_BATCH [dedupe]]
(dedupe: re-sent readings are dropped first, into the side output OUT-duplicates)"""

import sys
import time

import pystream as ps


def build(bootstrap, topic, out, sleep, dedupe=False):
    def slow(batch):
        time.sleep(sleep)  # keeps this member busy long enough for the other one to join
        return batch

    flow = ps.Flow("kafka-group")
    src = flow.source(ps.sources.Kafka(topic, bootstrap, batch_size=300),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="2m"))
    keyed = src.map(slow).key_by("meter_id")
    if dedupe:
        keyed = keyed.dedupe("1h")
        keyed.side("duplicates").sink(ps.sinks.Files(f"{out}-duplicates", name="duplicates"))
    res = keyed.window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count())
    res.sink(ps.sinks.Files(out, name="usage"))
    return flow


if __name__ == "__main__":
    bootstrap, topic, group, state, out = sys.argv[1:6]
    sleep = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    dedupe = len(sys.argv) > 7 and sys.argv[7] == "dedupe"
    t0 = time.monotonic()
    log = lambda line: print(f"{time.monotonic() - t0:6.1f}s {line}", flush=True)  # noqa: E731
    # idle_stop is shorter than a rebalance on the mock (~5 s): members wait through rebalances
    # (the idle clock runs only while a member holds an assignment) and end soon after the
    # topic is read.
    res = build(bootstrap, topic, out, sleep, dedupe).run(
        runtime=ps.runtimes.KafkaGroup(group, state, checkpoint_every=4, idle_stop=4.0, log=log))
    log(f"done {res.metrics['kafka_group']}")
