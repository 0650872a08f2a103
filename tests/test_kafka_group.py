"""Kafka consumer-group mode (issues 7 and 12): two plain processes in one group share a
key-partitioned topic on librdkafka's mock cluster; the second joins mid-run, the rebalance
moves partitions (and their half-full windows, through state files) from the first to the
second, and the union of their outputs equals one local run over the whole topic."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("confluent_kafka", reason="pip install 'pystream[kafka]'")

import pystream as ps  # noqa: E402
from kafka_mock import MockCluster  # noqa: E402
from pystream.datagen import meter_readings  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "kafka_group_worker.py")


def rows(batch):
    cols = ["meter_id", "window_start", "window_end", "n", "kwh"]
    return sorted(zip(*(np.round(batch[c], 9).tolist() if c == "kwh" else batch[c].tolist() for c in cols)))


def with_resends(data, share=0.03, after=100, seed=1):
    """`data` with a share of its readings sent again `after` readings later (same key, same
    time): the copy often lands in another batch, and after a rebalance with another member."""
    rng = np.random.default_rng(seed)
    again = np.flatnonzero(rng.random(len(data["ts"])) < share)
    at = np.concatenate([np.arange(len(data["ts"])), again + after + 0.5])
    order = np.argsort(at, kind="stable")
    return {k: np.concatenate([v, v[again]])[order] for k, v in data.items()}


@pytest.mark.parametrize("dedupe", [False, True])
def test_two_members_share_partitions_and_hand_state_over_on_rebalance(tmp_path, dedupe):
    # dedupe: an operator before the windows keeps its state per partition too (the pairs it
    # has seen), and hands it over with the windows: a re-send whose first copy the other
    # member took is still dropped, and counted once in the windows.
    cluster = MockCluster()
    data = meter_readings(12_000, 80, seed=6, max_delay_ms=30_000)
    if dedupe:
        data = with_resends(data)
    topic = f"g{uuid.uuid4().hex[:8]}"
    cluster.produce_json(topic, data, key="meter_id")
    local = _local(cluster, topic, dedupe)
    want = rows(local["out"])
    group, state = f"grp-{uuid.uuid4().hex[:6]}", str(tmp_path / "state")

    def member(name, sleep):
        return subprocess.Popen([sys.executable, WORKER, cluster.bootstrap, topic, group, state,
                                 str(tmp_path / name), str(sleep)] + (["dedupe"] if dedupe else []),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    a = member("a", 0.3)  # ~12 s of work, so a is still there when b joins
    # b joins once a has state for every partition (its periodic state files; a reads the
    # partitions one after another), so whatever b gets at the rebalance comes with half-full
    # windows to load. However late b's assignment comes (a slow machine: the mock's rebalance
    # waits most of a session timeout), b waits for it: the idle clock runs only while a member
    # holds an assignment, and a member waiting for one stops only at join_timeout, by raising.
    deadline = time.monotonic() + 60
    while not all(os.path.exists(os.path.join(state, f"partition-{p}.pkl")) for p in range(4)):
        assert time.monotonic() < deadline and a.poll() is None, "member a wrote no state for every partition"
        time.sleep(0.2)
    b = member("b", 0.0)
    out_a, out_b = a.communicate(timeout=180)[0], b.communicate(timeout=180)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert "revoke [0, 1, 2, 3]" in out_a, out_a + out_b  # the rebalance took a's partitions back...
    assert "load partition" in out_b, out_a + out_b  # ...and b resumed some of them from a's state files
    got = ps.Batch.concat([ps.sinks.Files.read(str(tmp_path / m)) for m in ("a", "b")
                           if os.path.isdir(tmp_path / m) and ps.sinks.Files.parts(str(tmp_path / m))])
    assert rows(got) == want  # every window exactly once, across the two members
    if dedupe:
        dirs = [str(tmp_path / f"{m}-duplicates") for m in ("a", "b")]
        dups = [ps.sinks.Files.read(d) for d in dirs if os.path.isdir(d) and ps.sinks.Files.parts(d)]
        key = ["meter_id", "ts"]
        got_dups = sorted(zip(*(ps.Batch.concat(dups)[c].tolist() for c in key)))
        assert got_dups == sorted(zip(*(local["duplicates"][c].tolist() for c in key)))
        assert len(got_dups) > 200


def _local(cluster, topic, dedupe=False):
    flow = ps.Flow("kafka-group-local")
    src = flow.source(ps.sources.Kafka(topic, cluster.bootstrap, batch_size=300, stop_at_end=True),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="2m"))
    keyed = src.key_by("meter_id")
    if dedupe:
        keyed = keyed.dedupe("1h")
        keyed.side("duplicates").sink(ps.sinks.Collect("duplicates"))
    keyed.window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count()) \
        .sink(ps.sinks.Collect("out"))
    return flow.run()


def test_idle_clock_starts_at_the_first_assignment(tmp_path):
    # The mock's first rebalance of a group takes ~3 s: longer than this idle_stop, which
    # must count from the assignment, not from the start, or the member ends having read nothing.
    cluster = MockCluster()
    data = meter_readings(2_000, 20, seed=3, max_delay_ms=30_000)
    topic = f"i{uuid.uuid4().hex[:8]}"
    cluster.produce_json(topic, data, key="meter_id")
    lines = []
    res = _group_flow(cluster.bootstrap, topic).run(runtime=ps.runtimes.KafkaGroup(
        f"grp-{uuid.uuid4().hex[:6]}", str(tmp_path / "state"), idle_stop=2.0, log=lines.append))
    assert lines[0] == "assign [0, 1, 2, 3]", lines
    assert res.metrics["kafka_group"]["batches"] > 0
    assert rows(res["out"]) == rows(_local(cluster, topic)["out"])


def test_a_member_answers_queries_for_the_partitions_it_owns(tmp_path):
    import threading

    cluster = MockCluster()
    data = meter_readings(2_000, 20, seed=8, max_delay_ms=30_000)
    topic = f"q{uuid.uuid4().hex[:8]}"
    cluster.produce_json(topic, data, key="meter_id")
    flow = _group_flow(cluster.bootstrap, topic, queryable=True)
    live, done = [], threading.Event()

    def ask():  # while the member runs: its partial windows (it idles 2 s before it ends)
        while not done.is_set():
            try:
                part = flow.state("usage").partial()
                if flow.live.running and len(part):
                    live.append((flow.state("usage").watermark, part))
            except ps.query.NotStarted:
                pass
            time.sleep(0.05)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        res = flow.run(runtime=ps.runtimes.KafkaGroup(f"grp-{uuid.uuid4().hex[:6]}", str(tmp_path / "state"),
                                                      idle_stop=2.0))
    finally:
        done.set()
        asker.join()
    assert live, "no query answered while the member ran"
    wm, part = live[-1]
    assert wm is not None and (part["window_end"] - 1 > wm // 1_000_000).all()  # open windows only
    out = res["out"]
    for m in sorted(set(data["meter_id"].tolist()))[::3]:
        q = flow.query("usage", key=m, last=10_000)
        assert rows(q["last"]) == rows(out.filter(out["meter_id"] == m)) and len(q["partial"]) == 0
    assert flow.state("usage").describe()["num_keys"] == len(set(data["meter_id"].tolist()))
    top = flow.state("usage").top("kwh", k=3, window="fired")
    last = out.filter(out["window_end"] == out["window_end"].max())
    assert np.allclose(top["kwh"], np.sort(last["kwh"])[::-1][:3])


@pytest.mark.parametrize("partitioner", ["consistent_random", "murmur2_random"])
def test_key_partition_is_where_librdkafka_puts_a_key(partitioner):
    from confluent_kafka import Producer

    from pystream.kafka_group import key_partition

    cluster = MockCluster()  # topics it creates on first use have 4 partitions
    topic = f"p{uuid.uuid4().hex[:8]}"
    landed = {}
    p = Producer({"bootstrap.servers": cluster.bootstrap, "partitioner": partitioner, "log_level": 3})
    keys = [*range(300), "m000123", "Zählerstand", b"\x00\xffraw"]
    for k in keys:
        data = k if isinstance(k, bytes) else str(k).encode()
        p.produce(topic, value=b"v", key=data, on_delivery=lambda err, msg, k=k: landed.__setitem__(k, msg.partition()))
    p.flush(30)
    assert len(landed) == len(keys) and len(set(landed.values())) == 4
    assert {k: key_partition(k, 4, partitioner) for k in keys} == landed


class _StrictConsumer:
    """A confluent_kafka.Consumer (made by `make`) whose rebalance callbacks fail on a blocking
    consumer call: inside consume(), such a call clears confluent-kafka's call state, and the
    next callback of that consume() aborts the process (a member that counted partitions in
    on_assign died so, one two-member run in a few)."""

    @staticmethod
    def make(base):
        class Strict(base):
            inside = False

            def subscribe(self, topics, on_assign=None, on_revoke=None, **kw):
                def guard(f):
                    def call(consumer, parts):
                        Strict.inside = True
                        try:
                            return f(consumer, parts)
                        finally:
                            Strict.inside = False
                    return call
                return super().subscribe(topics, on_assign=guard(on_assign), on_revoke=guard(on_revoke), **kw)

            def list_topics(self, *args, **kwargs):
                assert not Strict.inside, "list_topics in a rebalance callback"
                return super().list_topics(*args, **kwargs)

            def committed(self, *args, **kwargs):
                assert not Strict.inside, "committed in a rebalance callback"
                return super().committed(*args, **kwargs)

        return Strict


def test_members_announce_their_partitions_and_answer_where_a_key_lives(tmp_path, monkeypatch):
    import json
    import urllib.error
    import urllib.request

    import confluent_kafka

    from pystream.kafka_group import key_partition

    # No blocking consumer call in a rebalance callback (the member counts partitions after).
    monkeypatch.setattr(confluent_kafka, "Consumer", _StrictConsumer.make(confluent_kafka.Consumer))

    cluster = MockCluster()
    data = meter_readings(2_000, 20, seed=9, max_delay_ms=30_000)
    topic = f"o{uuid.uuid4().hex[:8]}"
    cluster.produce_json(topic, data, key="meter_id")
    state = tmp_path / "state"
    flow = _group_flow(cluster.bootstrap, topic, queryable=True)
    runtime = ps.runtimes.KafkaGroup(f"grp-{uuid.uuid4().hex[:6]}", str(state), idle_stop=2.0,
                                     advertise="http://me.example:8080")
    seen = {}

    def watch():  # while the member runs: what it announced, and what it says of each meter
        while "doc" not in seen:
            try:
                st = flow.state("usage")
                names = os.listdir(state / "members") if (state / "members").is_dir() else []
                if flow.live.running and names:
                    seen["doc"] = json.loads((state / "members" / names[0]).read_text())
                    seen["owner"] = {m: st.owner(m) for m in range(20)}
            except (ps.query.NotStarted, ValueError):
                pass
            time.sleep(0.05)

    import threading

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    res = flow.run(runtime=runtime)
    t.join(10)
    doc = seen["doc"]
    assert doc["url"] == "http://me.example:8080" and doc["partitions"] == [0, 1, 2, 3] and doc["partition_count"] == 4
    out = res["out"]
    for m, where in seen["owner"].items():
        assert where["partition"] == key_partition(m, 4) and where["here"] and where["url"] == "http://me.example:8080"
    # The partition the Kafka source saw each meter's rows in is the one owner() names.
    src = ps.Flow("raw")
    src.source(ps.sources.Kafka(topic, cluster.bootstrap, stop_at_end=True), time=ps.EventTime("ts", unit="ms")) \
        .sink(ps.sinks.Collect("raw"))
    raw = src.run()["raw"]
    assert {int(m): int(p) for m, p in zip(raw["meter_id"], raw["kafka_partition"])} == \
        {m: key_partition(m, 4) for m in set(raw["meter_id"].tolist())}
    # After the run the member announces no partitions (it holds none). A key it has no state
    # of, in a partition another member announced, is asked there: 307 over HTTP, a message
    # naming that member in Python.
    assert json.loads((state / "members" / f"{runtime.member_id}.json").read_text())["partitions"] == []
    (state / "members" / "other.json").write_text(json.dumps({"member": "other", "url": "http://other.example:9000",
                                                              "partitions": [2], "partition_count": 4,
                                                              "updated": time.time()}))
    runtime.owned = {0, 1, 3}
    moved = next(m for m in range(1_000, 2_000) if key_partition(m, 4) == 2)  # a meter this member never saw
    stayed = next(m for m in range(20) if key_partition(m, 4) != 2)
    assert flow.state("usage").owner(moved) == {"key": moved, "partition": 2, "here": False, "member": "other",
                                                "url": "http://other.example:9000"}
    with flow.serve("127.0.0.1:0") as srv:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kw):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as moved_away:
            opener.open(f"{srv.url}/api/state/usage?key={moved}&last=5", timeout=10)
        assert moved_away.value.code == 307
        assert moved_away.value.headers["Location"] == f"http://other.example:9000/api/state/usage?key={moved}&last=5"
        moved_away.value.close()
        with opener.open(f"{srv.url}/api/state/usage/owner?key={moved}", timeout=10) as r:
            assert json.loads(r.read())["url"] == "http://other.example:9000"
        with opener.open(f"{srv.url}/api/state/usage?key={stayed}&last=1000", timeout=10) as r:
            assert len(json.loads(r.read())["last"]) == int((out["meter_id"] == stayed).sum())
    with pytest.raises(ps.query.QueryError, match=f"no key {moved} here: it is in partition 2, which member "
                                                  f"http://other.example:9000 owns"):
        flow.query("usage", key=moved)


def test_a_member_that_is_never_assigned_raises(tmp_path):
    flow = _group_flow("127.0.0.1:1", "t")  # nothing listens there
    with pytest.raises(TimeoutError, match=r"consumer group 'g' assigned this member no partitions of topic 't' "
                                           r"within join_timeout=1.5 s \(bootstrap '127.0.0.1:1'\)"):
        flow.run(runtime=ps.runtimes.KafkaGroup("g", str(tmp_path), idle_stop=0.2, join_timeout=1.5))


def test_a_revoked_member_waits_for_its_next_assignment(tmp_path, monkeypatch):
    # Between a revoke and the next assignment (a rebalance: up to a session timeout) a member
    # waits for its share; the idle clock, shorter here than that wait, must not stop it. A
    # scripted consumer stands in for the broker: assign, revoke, a wait of 3x idle_stop,
    # assign again, then nothing (the member idles out).
    import confluent_kafka

    idle = 1.0
    script = [(0.0, "assign"), (0.05, "revoke"), (0.05 + 3 * idle, "assign")]

    class ScriptedConsumer:
        def __init__(self, config):
            self.t0, self.done = time.monotonic(), 0

        def subscribe(self, topics, on_assign, on_revoke):
            self.topic, self.calls = topics[0], {"assign": on_assign, "revoke": on_revoke}

        def consume(self, n, timeout):
            time.sleep(0.01)
            while self.done < len(script) and time.monotonic() - self.t0 >= script[self.done][0]:
                self.calls[script[self.done][1]](self, [confluent_kafka.TopicPartition(self.topic, 0)])
                self.done += 1
            return []

        def assign(self, parts):
            pass

        def unassign(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", ScriptedConsumer)
    lines = []
    _group_flow("127.0.0.1:1", "t").run(runtime=ps.runtimes.KafkaGroup(
        "g", str(tmp_path), idle_stop=idle, join_timeout=30, log=lines.append))
    assert lines == ["assign [0]", "revoke [0]", "assign [0]"], lines


def _group_flow(bootstrap, topic, queryable=False):
    flow = ps.Flow("kafka-group-in-process")
    src = flow.source(ps.sources.Kafka(topic, bootstrap, batch_size=300, config={"log_level": 0}),
                      time=ps.EventTime("ts", unit="ms", max_out_of_orderness="2m"))
    usage = src.key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(kwh=ps.agg.sum("kwh"), n=ps.agg.count())
    usage.sink(ps.sinks.Collect("out"))
    if queryable:
        usage.queryable("usage")
    return flow


def test_group_mode_refuses_what_it_cannot_do(tmp_path):
    flow = ps.Flow("arrays")
    flow.source(ps.sources.Arrays(meter_readings(100, 5, seed=1)), time=ps.EventTime("ts", unit="ms")) \
        .key_by("meter_id").window(ps.windows.Tumbling("15m")).aggregate(n=ps.agg.count()).sink(ps.sinks.Collect("o"))
    with pytest.raises(ValueError, match="exactly one ps.sources.Kafka source"):
        flow.run(runtime=ps.runtimes.KafkaGroup("g", str(tmp_path)))
    with pytest.raises(ValueError, match="group must be a non-empty string"):
        ps.runtimes.KafkaGroup("", str(tmp_path))
    with pytest.raises(ValueError, match="join_timeout must be a positive number of seconds or None, got 0"):
        ps.runtimes.KafkaGroup("g", str(tmp_path), join_timeout=0)
    with pytest.raises(ValueError, match="idle_stop must be a positive number of seconds or None, got '5'"):
        ps.runtimes.KafkaGroup("g", str(tmp_path), idle_stop="5")


def test_operators_that_make_rows_run_per_partition_in_a_member(tmp_path):
    # register_deltas per Kafka partition (its meters' readings, in time order), then hourly
    # windows that follow its watermark: the member's results are a local run's.
    cluster = MockCluster()
    data = meter_readings(3_000, 30, seed=5, max_delay_ms=30_000)
    order = np.lexsort((data["ts"], data["meter_id"]))
    run_ = np.cumsum(data["kwh"][order])
    first = np.r_[True, data["meter_id"][order][1:] != data["meter_id"][order][:-1]]
    data["register"] = np.empty(len(order))
    data["register"][order] = run_ - np.maximum.accumulate(np.where(first, run_ - data["kwh"][order], 0.0))
    topic = f"r{uuid.uuid4().hex[:8]}"
    cluster.produce_json(topic, data, key="meter_id")

    def flow(stop_at_end):
        f = ps.Flow("group-registers")
        src = f.source(ps.sources.Kafka(topic, cluster.bootstrap, batch_size=200, stop_at_end=stop_at_end),
                       time=ps.EventTime("ts", unit="ms", max_out_of_orderness="2m"))
        deltas = src.key_by("meter_id").register_deltas("register", out="used")
        deltas.late().sink(ps.sinks.Collect("unordered"))
        w = deltas.window(ps.windows.Tumbling("1h")).aggregate(used=ps.agg.sum("used"), n=ps.agg.count())
        w.sink(ps.sinks.Collect("out"))
        w.late().sink(ps.sinks.Collect("late"))
        return f

    local = flow(True).run()
    res = flow(False).run(runtime=ps.runtimes.KafkaGroup(f"grp-{uuid.uuid4().hex[:6]}", str(tmp_path / "state"),
                                                         idle_stop=2.0))
    cols = ["meter_id", "window_start", "n"]
    got, want = (sorted(zip(*(r["out"][c].tolist() for c in cols))) for r in (res, local))
    assert got == want
    np.testing.assert_allclose(np.sort(res["out"]["used"]), np.sort(local["out"]["used"]), rtol=1e-9)
    assert len(res["late"]) == len(local["late"]) == 0 and len(local["out"]) > 50
