"""Topic ids through a Python client written from the .proto alone.

TopicDescription.topic_id: "a topic deleted and created again under the same name has
another ... Every PartitionPosition carries it". PartitionStart.topic_id: when the topic
of that name has another id, "the partition is read from the new topic's log start ...
whatever reset_policy says, and a PositionReset with RESET_REASON_TOPIC_RECREATED tells
of it". FetchRequest.topic_id: "FAILED_PRECONDITION naming both ids".
"""

from __future__ import annotations

from typing import Dict, List

import grpc
import pytest

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb

RPC_TIMEOUT = 20.0
STREAM_TIMEOUT = 30.0


def topic_id(broker: Broker, name: str) -> int:
    described = broker.admin.DescribeTopic(pb.DescribeTopicRequest(name=name),
                                           timeout=RPC_TIMEOUT)
    return described.topic.topic_id


def create(broker: Broker, name: str, partitions: int) -> int:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name=name, partitions=partitions),
                             timeout=RPC_TIMEOUT)
    return topic_id(broker, name)


def publish(broker: Broker, topic: str, partition: int, values: List[bytes]) -> None:
    broker.publisher.Publish(
        pb.PublishRequest(topic=topic, ack=pb.ACK_LEVEL_DURABLE,
                          messages=[pb.Message(value=v, partition=partition) for v in values]),
        timeout=RPC_TIMEOUT,
    )


def test_a_resume_across_a_recreated_topic_reads_the_new_topic_whole(broker: Broker) -> None:
    old_id = create(broker, "py.ids", 2)
    assert old_id != 0
    for partition in (0, 1):
        publish(broker, "py.ids", partition, [b"old %d" % n for n in range(25)])

    # Read everything, keeping the last position of each partition as a client saves it.
    call = broker.consumer.Subscribe(
        pb.SubscribeRequest(topic="py.ids",
                            start=pb.StartPosition(earliest=pb.StartPosition.Earliest())),
        timeout=STREAM_TIMEOUT,
    )
    saved: Dict[int, pb.PartitionPosition] = {}
    try:
        for event in call:
            assert event.WhichOneof("event") == "batch", event
            for position in event.batch.positions:
                saved[position.partition] = position
            if len(saved) == 2 and all(p.next_offset == 25 for p in saved.values()):
                break
    finally:
        call.cancel()
    assert {p.topic_id for p in saved.values()} == {old_id}

    broker.admin.DeleteTopic(pb.DeleteTopicRequest(name="py.ids"), timeout=RPC_TIMEOUT)
    new_id = create(broker, "py.ids", 2)
    assert new_id not in (0, old_id)
    for partition in (0, 1):
        publish(broker, "py.ids", partition, [b"new %d" % n for n in range(40)])

    call = broker.consumer.Subscribe(
        pb.SubscribeRequest(
            topic="py.ids",
            partition_starts=[
                pb.SubscribeRequest.PartitionStart(partition=p.partition, offset=p.next_offset,
                                                   topic_id=p.topic_id)
                for p in saved.values()
            ],
            follow_partitions_from=2,
            reset_policy=pb.RESET_POLICY_LATEST,
        ),
        timeout=STREAM_TIMEOUT,
    )
    resets = []
    received: Dict[int, List[bytes]] = {0: [], 1: []}
    try:
        for event in call:
            kind = event.WhichOneof("event")
            if kind == "position_reset":
                resets.append(event.position_reset)
            else:
                assert kind == "batch", event
                for message in event.batch.messages:
                    received[message.partition].append(message.value)
                assert all(p.topic_id == new_id for p in event.batch.positions)
            if all(len(values) == 40 for values in received.values()):
                break
    finally:
        call.cancel()
    assert sorted((r.partition, r.from_offset, r.to_offset, r.reason, r.topic_id)
                  for r in resets) == [
        (0, 25, 0, pb.RESET_REASON_TOPIC_RECREATED, new_id),
        (1, 25, 0, pb.RESET_REASON_TOPIC_RECREATED, new_id),
    ]
    for partition in (0, 1):
        assert received[partition] == [b"new %d" % n for n in range(40)]

    # Fetch with the old id is refused; with the new one it reads.
    with pytest.raises(grpc.RpcError) as error:
        broker.consumer.Fetch(pb.FetchRequest(topic="py.ids", partition=0, offset=10,
                                              topic_id=old_id), timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "%016x" % old_id in error.value.details()
    fetched = broker.consumer.Fetch(pb.FetchRequest(topic="py.ids", partition=0, offset=10,
                                                    topic_id=new_id), timeout=RPC_TIMEOUT)
    assert fetched.topic_id == new_id
    assert fetched.messages[0].value == b"new 10"
