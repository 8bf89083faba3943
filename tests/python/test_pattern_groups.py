"""Consumer groups on a topic pattern through a Python client written from the .proto.

SubscribeRequest.topic_pattern with a group: "the member subscribes to every topic the
pattern matches, as they come and go"; Assignment.topics: "every topic the pattern
matches now ... each with the partitions of it this member owns"; "a topic created
later is assigned within 1 second without reconnecting, and a deleted topic drops out
(its partitions leave the Assignment; no stream ends)"; commits are per (topic,
partition); GroupMember.topic_pattern and .topics describe such a member.
"""

from __future__ import annotations

import time
from typing import Dict, Iterator, List, Set, Tuple

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb

RPC_TIMEOUT = 20.0
STREAM_TIMEOUT = 60.0
PATTERN = r"orders\..*"


def create(broker: Broker, name: str, partitions: int = 1) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name=name, partitions=partitions),
                             timeout=RPC_TIMEOUT)


def publish(broker: Broker, topic: str, partition: int, values: List[bytes]) -> None:
    broker.publisher.Publish(
        pb.PublishRequest(topic=topic, ack=pb.ACK_LEVEL_DURABLE,
                          messages=[pb.Message(value=v, partition=partition) for v in values]),
        timeout=RPC_TIMEOUT,
    )


def join(broker: Broker):
    return broker.consumer.Subscribe(
        pb.SubscribeRequest(
            topic_pattern=PATTERN,
            group=pb.GroupMembership(group_id="pg", client_id="py"),
            reset_policy=pb.RESET_POLICY_EARLIEST,
        ),
        timeout=STREAM_TIMEOUT,
    )


def next_assignment(events: Iterator[pb.SubscribeResponse]) -> pb.Assignment:
    """The next Assignment, past the PositionResets of partitions without a commit."""
    while True:
        event = next(events)
        kind = event.WhichOneof("event")
        if kind == "assignment":
            return event.assignment
        assert kind == "position_reset", event
        assert event.position_reset.topic, "a reset names its topic"


def owned(assignment: pb.Assignment) -> Set[Tuple[str, int]]:
    assert list(assignment.partitions) == [], "a pattern member's partitions are in topics"
    return {(t.topic, p) for t in assignment.topics for p in t.partitions}


def read(events: Iterator[pb.SubscribeResponse], count: int,
         positions: Dict[Tuple[str, int], int]) -> List[Tuple[str, int, bytes]]:
    got: List[Tuple[str, int, bytes]] = []
    while len(got) < count:
        event = next(events)
        kind = event.WhichOneof("event")
        if kind == "position_reset":
            continue
        assert kind == "batch", event
        for m in event.batch.messages:
            assert m.topic, "each message names its topic"
            got.append((m.topic, m.partition, m.value))
        for p in event.batch.positions:
            positions[(p.topic, p.partition)] = p.next_offset
    return got


def commit(broker: Broker, assignment: pb.Assignment,
           positions: Dict[Tuple[str, int], int]) -> None:
    broker.groups.CommitOffsets(
        pb.CommitOffsetsRequest(
            group_id="pg", member_id=assignment.member_id, generation=assignment.generation,
            offsets=[pb.TopicPartitionOffset(topic=t, partition=p, offset=o)
                     for (t, p), o in sorted(positions.items())]),
        timeout=RPC_TIMEOUT,
    )


def test_a_pattern_group_rebalances_on_new_and_deleted_topics(broker: Broker) -> None:
    create(broker, "orders.eu", 2)
    create(broker, "orders.us")
    create(broker, "payments")
    publish(broker, "orders.eu", 0, [b"eu0"])
    publish(broker, "orders.eu", 1, [b"eu1"])
    publish(broker, "orders.us", 0, [b"us0"])
    publish(broker, "payments", 0, [b"never"])

    first = join(broker)
    a_events = iter(first)
    second = None
    try:
        a = next_assignment(a_events)
        assert [t.topic for t in a.topics] == ["orders.eu", "orders.us"]
        assert owned(a) == {("orders.eu", 0), ("orders.eu", 1), ("orders.us", 0)}
        positions: Dict[Tuple[str, int], int] = {}
        got = read(a_events, 3, positions)
        assert sorted(got) == [("orders.eu", 0, b"eu0"), ("orders.eu", 1, b"eu1"),
                               ("orders.us", 0, b"us0")]
        commit(broker, a, positions)

        # A second member: the group rebalances, each partition to one member.
        second = join(broker)
        b_events = iter(second)
        b = next_assignment(b_events)
        a = next_assignment(a_events)
        assert a.generation == b.generation
        assert owned(a) & owned(b) == set()
        assert owned(a) | owned(b) == {("orders.eu", 0), ("orders.eu", 1), ("orders.us", 0)}

        # A topic created now is assigned within a second, without reconnecting.
        created = time.monotonic()
        create(broker, "orders.asia", 2)
        a = next_assignment(a_events)
        b = next_assignment(b_events)
        assert time.monotonic() - created <= 1.0
        assert [t.topic for t in a.topics] == ["orders.asia", "orders.eu", "orders.us"]
        assert len(owned(a) | owned(b)) == 5 and owned(a) & owned(b) == set()

        described = broker.groups.DescribeGroup(pb.DescribeGroupRequest(group_id="pg"),
                                                timeout=RPC_TIMEOUT).group
        assert len(described.members) == 2
        for member in described.members:
            assert member.topic_pattern == PATTERN and member.topic == ""
            assert [t.topic for t in member.topics] == ["orders.asia", "orders.eu",
                                                        "orders.us"]

        # A deleted topic drops out of both assignments; neither stream ends.
        broker.admin.DeleteTopic(pb.DeleteTopicRequest(name="orders.us"), timeout=RPC_TIMEOUT)
        a = next_assignment(a_events)
        b = next_assignment(b_events)
        assert [t.topic for t in b.topics] == ["orders.asia", "orders.eu"]
        assert owned(a) | owned(b) == {("orders.asia", 0), ("orders.asia", 1),
                                       ("orders.eu", 0), ("orders.eu", 1)}

        offsets = broker.groups.FetchOffsets(pb.FetchOffsetsRequest(group_id="pg"),
                                             timeout=RPC_TIMEOUT).offsets
        assert sorted((o.topic, o.partition, o.offset) for o in offsets) == [
            ("orders.eu", 0, 1), ("orders.eu", 1, 1)]
    finally:
        first.cancel()
        if second is not None:
            second.cancel()
