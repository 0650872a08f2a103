"""Kafka consumer-group mode: several plain processes share a key-partitioned topic, the Kafka
Streams way.

    flow.run(runtime=ps.runtimes.KafkaGroup("meter-usage", state="/shared/state"))

Every member of the group runs the same flow. Kafka's group protocol gives each member a set
of partitions; the member keeps one set of window operators per partition it owns (a Kafka
partition is the unit of state, as a key group is in the Ray runtime), so each partition has
its own watermark and its own state. State files `partition-P.pkl` in the shared `state`
directory hold a partition's operator snapshots and its next offset. When a rebalance takes a
partition away, the member publishes its sinks' output so far, writes the partition's state
file and drops it; the member that gets the partition loads the file and seeks to its offset,
so windows that were half-full move with their partition. Members also write the state files
of all their partitions every `checkpoint_every` batches, which is where a member that dies
hands over from: at-least-once (sink output since the last state file is produced again).

The topic must be partitioned by the window key (produce with the meter id as message key);
windows keyed by anything else would see one key in several partitions. `idle_stop` ends a
member after that many seconds without messages (bounded runs and tests): it then fires its
partitions' windows, as a bounded local run does at end of input. The idle clock runs only
while the member holds an assignment: a member still joining, or between a revoke and its
next assignment, is waiting for its share, not idle (a rebalance can take most of a session
timeout while the other members rejoin). A member that gets no assignment within
`join_timeout` of asking raises instead of ending with nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
import uuid
import zlib

import numpy as np

from .batch import Batch
from .query import QueryError
from .runtimes import Plan, ShardedState, SourceWorker, WindowWorker

PARTITIONERS = ("consistent_random", "murmur2_random")


def key_partition(key, partitions: int, partitioner: str = "consistent_random") -> int:
    """The partition a Kafka producer puts a message with this key in: the key as bytes (its
    text as UTF-8 unless it is bytes: how pystream's Kafka sink writes keys) hashed as
    librdkafka's `consistent_random` partitioner (CRC-32; confluent-kafka's default) or
    `murmur2_random` (murmur2: the Java client's default) does, modulo the partition count."""
    data = key if isinstance(key, bytes) else str(key).encode()
    if partitioner == "consistent_random":
        return zlib.crc32(data) % partitions
    if partitioner == "murmur2_random":
        return (_murmur2(data) & 0x7FFFFFFF) % partitions
    raise ValueError(f"partitioner must be one of {PARTITIONERS}, got {partitioner!r}")


def _murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned 32-bit int."""
    m, n = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ n) & 0xFFFFFFFF
    whole = n - n % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = n % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h = ((h ^ data[whole]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def _write_atomic(path: str, data: bytes) -> None:
    """`data` as the file `path`, whole or not at all: written and fsynced under a temp name
    in the same directory, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _MemberState(ShardedState):
    """A member's queryable window: its own partitions' operators answer; `owner(key)` says
    which partition holds a key and which member owns that partition (from the members'
    announcements in the state directory), and a query for a key another member owns says so."""

    def __init__(self, name, node, live, operators, member):
        super().__init__(name, node, live, operators)
        self.member = member  # the KafkaGroup run: its partitions, count and the announcements

    def owner(self, key) -> dict:
        if not self.keys:
            raise ValueError(f"{self.name!r} is not keyed: every member holds part of it")
        if isinstance(key, tuple):
            if len(key) != 1:
                raise ValueError(f"{self.name!r}: owner() needs the one message-key column's value, got {key!r}")
            key = key[0]
        return self.member.owner(key)

    def _one_key(self, key, answers: list):
        if not any(a is not None for a in answers):
            try:
                where = self.owner(key)
            except ValueError:
                where = None
            if where is not None and not where["here"]:
                who = f"member {where['url']}" if where["url"] else "another member"
                raise QueryError(f"{self.name!r} has no key {key!r} here: it is in partition {where['partition']}, "
                                 f"which {who} owns")
        return super()._one_key(key, answers)


class _PartitionRouter(SourceWorker):
    """Routes a partition's batch through the stateless steps and the operators before the
    windows, which it keeps per partition (state moves with its partition, as the windows'
    does); the key group is the partition."""

    partition = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.by_partition: dict[int, dict] = {}  # partition -> its operators (as SourceWorker.ops)

    def use(self, p: int) -> None:
        """Rows of partition p come next: its operators (new ones for a partition new here)."""
        self.partition = p
        if p not in self.by_partition:
            self.by_partition[p] = self.new_ops([self.label])  # a partition's operators see its rows alone
        self.ops = self.by_partition[p]

    def snapshot_ops(self, p: int) -> dict:
        return {nid: op.snapshot() for nid, op in self.by_partition.get(p, {}).items()}

    def take_ops(self, p: int) -> dict:
        snaps = self.snapshot_ops(p)
        self.by_partition.pop(p, None)
        return snaps

    def put_ops(self, p: int, snaps: dict) -> None:
        self.use(p)
        for nid, state in snaps.items():
            self.ops[nid].restore(state)

    def groups(self, window, batch):
        return np.full(len(batch), self.partition, dtype=np.int64)


class _PartitionWorker(WindowWorker):
    def owned(self):
        return (0, 0)  # a slot per partition, made when the partition's first rows (or state) arrive

    def declared(self, wid, g):
        return [g]  # a partition's operators wait for that partition only

    def _take(self, wid, chan, batch, groups):
        if batch is None:
            # The watermark of an operator over partition `chan` alone (SourceWorker.
            # _pass_watermark): its rows came on that partition too, and none of them is past
            # it by more than the partition's own rows are, so it is that partition's max.
            self._emit(wid, self._slot(wid, chan).op.raise_partition(chan, groups), None, None)
            return
        super()._take(wid, chan, batch, groups)


class KafkaGroup:
    """Runs a flow as one member of a Kafka consumer group (see the module docstring).

    Args:
        group: the consumer group id (the same in every member).
        state: a directory every member can read and write (partition state files).
        checkpoint_every: batches between state files of all owned partitions.
        idle_stop: seconds without messages (and without rebalances) after which this member
            stops, counted while it holds an assignment; None: run on.
        join_timeout: seconds to wait for an assignment (at the start, and after a revoke)
            before raising TimeoutError (an unreachable broker, a stuck rebalance); None: wait on.
        log: called with one line per rebalance event (assign, revoke, load).
        advertise: this member's HTTP URL (where it serves its queryable state), announced with
            its partitions in `state/members/` so queries for keys it does not hold go to the
            member that does (owner(), HTTP 307).
        partitioner: how the producers picked a key's partition ("consistent_random":
            librdkafka's default, CRC-32; "murmur2_random": the Java client's default).
    """

    def __init__(self, group: str, state: str, checkpoint_every: int = 16, idle_stop: float | None = None,
                 join_timeout: float | None = 60.0, log=None, advertise: str | None = None,
                 partitioner: str = "consistent_random"):
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must be a non-empty string, got {group!r}")
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
        for name, v in (("idle_stop", idle_stop), ("join_timeout", join_timeout)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"{name} must be a positive number of seconds or None, got {v!r}")
        self.group, self.state, self.checkpoint_every, self.idle_stop = group, str(state), checkpoint_every, idle_stop
        self.join_timeout = join_timeout
        self.log = log or (lambda line: None)
        if partitioner not in PARTITIONERS:
            raise ValueError(f"partitioner must be one of {PARTITIONERS}, got {partitioner!r}")
        self.advertise, self.partitioner = advertise, partitioner
        self.member_id = uuid.uuid4().hex[:12]
        self.owned: set = set()  # the partitions this member holds now
        self.partition_count = 0

    # -- who owns what (for queries) --------------------------------------------------------------
    def _members(self) -> str:
        return os.path.join(self.state, "members")

    def _count_partitions(self, consumer, topic: str) -> None:
        """The topic's partition count, for owner(); left as it was where the broker does not
        say (owner() then refuses rather than guess). Not from a rebalance callback (see run)."""
        try:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except Exception:  # noqa: BLE001 - metadata is for queries only; the run goes on
            return
        if meta is not None and meta.error is None:
            self.partition_count = len(meta.partitions)

    def _announce(self, partitions) -> None:
        """Writes the partitions this member holds (and its `advertise` URL) to
        members/ID.json in the state directory, atomically."""
        os.makedirs(self._members(), exist_ok=True)
        doc = {"member": self.member_id, "url": self.advertise, "partitions": sorted(partitions),
               "partition_count": self.partition_count, "updated": time.time()}
        _write_atomic(os.path.join(self._members(), f"{self.member_id}.json"), json.dumps(doc).encode())

    def owner(self, key) -> dict:
        """Which partition holds `key` and which member holds that partition: the newest
        announcement naming it (a member that died leaves an older one behind)."""
        if not self.partition_count:
            raise ValueError("the topic's partition count is not known yet (no assignment so far)")
        p = key_partition(key, self.partition_count, self.partitioner)
        holder = None
        for name in os.listdir(self._members()) if os.path.isdir(self._members()) else ():
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self._members(), name)) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                continue  # being replaced, or not ours
            if p in doc.get("partitions", ()) and (holder is None or doc["updated"] > holder["updated"]):
                holder = doc
        return {"key": key, "partition": p, "here": p in self.owned, "member": holder and holder["member"],
                "url": holder and holder["url"]}

    def __repr__(self):
        return f"KafkaGroup({self.group!r})"

    # -- state files --------------------------------------------------------------------------
    def _path(self, p: int) -> str:
        return os.path.join(self.state, f"partition-{p}.pkl")

    def _save(self, p: int, offset, ops: dict) -> None:
        _write_atomic(self._path(p), pickle.dumps({"fingerprint": self._fingerprint, "offset": offset, "ops": ops}))

    def _load(self, p: int):
        try:
            with open(self._path(p), "rb") as f:
                st = pickle.load(f)
        except FileNotFoundError:
            return None
        if st["fingerprint"] != self._fingerprint:
            raise ValueError(f"state file {self._path(p)} belongs to a different flow; use another state directory")
        return st

    # -- the run ------------------------------------------------------------------------------
    def run(self, flow, checkpoints=None, resume=False, guarantee=None, checkpoint_every=64, keep=3):
        from confluent_kafka import Consumer, TopicPartition

        from .connectors_kafka import CONSUMER_DEFAULTS, Kafka
        from .flow import RunResult

        if checkpoints is not None or guarantee not in (None, "at_least_once"):
            raise ValueError("a KafkaGroup member checkpoints per partition into its state directory (at-least-once); "
                             "leave checkpoints= and guarantee= unset")
        plan = Plan(flow)
        if len(plan.sources) != 1 or not isinstance(plan.sources[0].params["source"], Kafka):
            raise ValueError("consumer-group mode runs flows with exactly one ps.sources.Kafka source")
        node = plan.sources[0]
        src: Kafka = node.params["source"]
        os.makedirs(self.state, exist_ok=True)
        self._fingerprint = flow.fingerprint()
        router = _PartitionRouter(flow, node.id, 1, 1 << 16, read=False)
        op_ids = {n.id for n in plan.ops.get(node.id, [])}  # the router's operators (state files hold theirs too)
        worker = _PartitionWorker(flow, 0, 1, 1 << 16)
        worker.start({}, None)
        # Queryable state: this member answers for the partitions it owns (each one's operators;
        # queries take flow.live's lock, which batches and rebalances hold).
        live = flow.live
        live.begin({w.params["queryable"][0]: _MemberState(w.params["queryable"][0], w, live,
                                                           lambda wid=w.id: [s.op for s in worker.slots[wid]], self)
                    for w in plan.windows if w.params.get("queryable")})
        self.owned, self.partition_count = set(), 0
        offsets: dict[int, int] = {}
        epoch = [0]
        stopping = [False]
        # Since when this member has waited for an assignment (None: it holds one), and when it
        # last had messages or an assignment: the idle clock runs only while it holds one.
        asked, last_msg = [time.monotonic()], [time.monotonic()]
        collected = {sid: [] for sid in worker.pending}
        recount = [False]  # an assignment came: the topic's partitions to count (owner()), then announce

        def publish():
            handles = worker.pre_commit(epoch[0], "at_least_once")  # sinks publish what they hold
            for sid in collected:
                collected[sid] += handles[sid]
            epoch[0] += 1

        # The rebalance callbacks make no blocking consumer call (list_topics, committed, ...):
        # confluent-kafka runs them inside consume(), whose call state a nested blocking call
        # clears on its way out, so the next callback of the same consume() found none and the
        # process aborted ("CallState_get: Assertion `cs != NULL' failed": a member that
        # counted partitions in on_assign, one two-member run in a few). They (un)assign and
        # set flags; the loop does the rest once consume() has returned.
        def on_assign(consumer, parts):
            with live.lock:
                assign(consumer, parts)

        def on_revoke(consumer, parts):
            with live.lock:
                revoke(consumer, parts)

        def assign(consumer, parts):
            for tp in parts:
                st = self._load(tp.partition)
                if st is not None:
                    worker.put_group(tp.partition, {nid: x for nid, x in st["ops"].items() if nid not in op_ids})
                    router.put_ops(tp.partition, {nid: x for nid, x in st["ops"].items() if nid in op_ids})
                    tp.offset = st["offset"]
                    offsets[tp.partition] = st["offset"]
                    self.log(f"load partition {tp.partition} offset {st['offset']} windows {len(st['ops'])}")
            self.log(f"assign {sorted(tp.partition for tp in parts)}")
            asked[0], last_msg[0] = None, time.monotonic()
            consumer.assign(parts)
            self.owned |= {tp.partition for tp in parts}
            recount[0] = True  # counted, then announced, once consume() has returned

        def revoke(consumer, parts):
            publish()
            for tp in parts:
                p = tp.partition
                # A stopping member fired its windows (end of input): it hands over only the
                # offset, not engines that accept no more events, and keeps them to answer
                # queries after its run.
                ops = {} if stopping[0] else {**worker.take_group(p), **router.take_ops(p)}
                if p in offsets:
                    self._save(p, offsets.pop(p), ops)
            self.log(f"revoke {sorted(tp.partition for tp in parts)}")
            asked[0] = time.monotonic()  # the next assignment follows (eager rebalancing)
            consumer.unassign()
            if not stopping[0]:  # (a stopping member keeps its final windows to answer from)
                self.owned -= {tp.partition for tp in parts}
            self._announce(set() if stopping[0] else self.owned)

        c = Consumer({"bootstrap.servers": src.bootstrap, "group.id": self.group, "enable.auto.commit": False,
                      "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                      "enable.partition.eof": False, "session.timeout.ms": 6_000, "heartbeat.interval.ms": 500,
                      "max.poll.interval.ms": 30_000, **CONSUMER_DEFAULTS, **src.config})
        c.subscribe([src.topic], on_assign=on_assign, on_revoke=on_revoke)
        batches = 0
        try:
            while True:
                msgs = c.consume(src.batch_size, src.poll_timeout)
                if recount[0]:
                    recount[0] = False
                    self._count_partitions(c, src.topic)
                    self._announce(self.owned)
                if not msgs:
                    now = time.monotonic()
                    if asked[0] is not None:
                        if self.join_timeout is not None and now - asked[0] >= self.join_timeout:
                            raise TimeoutError(
                                f"consumer group {self.group!r} assigned this member no partitions of topic "
                                f"{src.topic!r} within join_timeout={self.join_timeout} s (bootstrap "
                                f"{src.bootstrap!r}): is the broker reachable?")
                    elif self.idle_stop is not None and now - last_msg[0] >= self.idle_stop:
                        break
                    continue
                last_msg[0] = time.monotonic()
                for p, batch in src.batches_of(msgs):
                    router.use(p)
                    with live.lock:  # queries see the state between batches
                        worker.round({}, [p], [[router.route(batch)[0]]])  # one read of one batch
                    offsets[p] = int(batch["kafka_offset"][-1]) + 1
                    live.let_readers_in()
                batches += 1
                if batches % self.checkpoint_every == 0:
                    publish()
                    for p in list(offsets):
                        self._save(p, offsets[p], {**worker.group_snapshot(p), **router.snapshot_ops(p)})
                    # Advisory (tools show the group's lag); the state files are what members resume from.
                    c.commit(offsets=[TopicPartition(src.topic, p, o) for p, o in offsets.items()], asynchronous=True)
            stopping[0] = True
            with live.lock:
                for p in list(router.by_partition):  # end of input: operators first, into the windows
                    router.use(p)
                    worker.round({}, [p], [[router.fire_ops()[0]]])
                worker.finish()
                publish()
        finally:
            c.close()
            live.running = False
        closed = worker.close()
        result = RunResult()
        for sid, n in plan.nodes.items():
            if n.kind == "sink":
                if sid in collected:
                    parts = [b for b in collected[sid] + closed[sid] if len(b)]
                    result[n.params["sink"].name] = Batch.concat(parts) if parts else Batch()
                else:
                    result[n.params["sink"].name] = closed[sid]
        result.metrics = {"kafka_group": {"batches": batches, "partitions": sorted(offsets)}}
        result.checkpoints, result.resumed_from = [], None
        return result
