"""Kafka -> windows -> Kafka exactly-once, run in a subprocess by test_connectors_kafka.py (and
killed there with PYSTREAM_CRASH_AT). usage: kafka_worker.py BOOTSTRAP IN OUT CKPT [--resume]"""

import sys

import pystream as ps


def build(bootstrap, topic_in, topic_out):
    flow = ps.Flow("kafka-eo")
    src = flow.source(ps.sources.Kafka(topic_in, bootstrap, batch_size=500, stop_at_end=True),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="5m"))
    src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count()).sink(
        ps.sinks.Kafka(topic_out, bootstrap, name=topic_out, key="meter_id"))
    return flow


if __name__ == "__main__":
    bootstrap, topic_in, topic_out, ckpt = sys.argv[1:5]
    build(bootstrap, topic_in, topic_out).run(checkpoints=ckpt, resume="--resume" in sys.argv, guarantee="exactly_once",
                                              checkpoint_every=2)
    print("done")
