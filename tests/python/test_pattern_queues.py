"""A queue on a topic pattern through a Python client written from the .proto alone.

CreateQueueRequest.topic_pattern: "the queue consumes every topic it matches except its
own dead-letter topic. Topics that match later (created later) are taken within a
second, starting at their beginning ... Deliveries name their topic
(ConsumedMessage.topic), and settlements must name it too (Settlement.topic)."
"""

from __future__ import annotations

import time

import grpc
from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb
from tidelog.v1 import tidelog_pb2_grpc

RPC_TIMEOUT = 20.0


def publish(broker: Broker, topic: str, count: int) -> None:
    broker.publisher.Publish(pb.PublishRequest(
        topic=topic, ack=pb.ACK_LEVEL_DURABLE,
        messages=[pb.Message(value=f"{topic}/{n}".encode() + b"." * (n * 700)) for n in range(count)],
    ), timeout=RPC_TIMEOUT)


def receive(queues: tidelog_pb2_grpc.QueuesStub, want: int) -> list[pb.QueueDelivery]:
    got: list[pb.QueueDelivery] = []
    deadline = time.monotonic() + 15
    while len(got) < want and time.monotonic() < deadline:
        got.extend(queues.Receive(pb.ReceiveRequest(
            queue="all-orders", member="py", max_messages=want - len(got), max_wait_ms=1000,
        ), timeout=RPC_TIMEOUT).deliveries)
    return got


def test_a_pattern_queue_serves_every_matching_topic_and_settles_by_topic(broker: Broker) -> None:
    for name in ("orders.eu", "payments"):
        broker.admin.CreateTopic(pb.CreateTopicRequest(name=name, partitions=2), timeout=RPC_TIMEOUT)
        publish(broker, name, 4)
    queues = tidelog_pb2_grpc.QueuesStub(broker.channel)
    created = queues.CreateQueue(pb.CreateQueueRequest(
        name="all-orders", topic_pattern=r"orders\..*",
        start=pb.StartPosition(earliest=pb.StartPosition.Earliest()),
    ), timeout=RPC_TIMEOUT).queue
    assert (created.topic, created.topic_pattern, list(created.topics)) == ("", r"orders\..*", ["orders.eu"])
    assert created.config.dead_letter_topic == "all-orders.dlq"

    # A topic created afterwards is taken from its beginning.
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="orders.us", partitions=1), timeout=RPC_TIMEOUT)
    publish(broker, "orders.us", 3)
    got = receive(queues, 7)
    topics = sorted(d.message.topic for d in got)
    assert topics == ["orders.eu"] * 4 + ["orders.us"] * 3, topics
    for d in got:
        assert d.message.value.startswith(f"{d.message.topic}/".encode())

    # A settlement without its topic is refused on its own; with it, it goes through.
    first = got[0]
    outcomes = queues.Settle(pb.SettleRequest(queue="all-orders", settlements=[
        pb.Settlement(partition=first.message.partition, offset=first.message.offset,
                      ack=pb.Settlement.Ack()),
        pb.Settlement(topic=first.message.topic, partition=first.message.partition,
                      offset=first.message.offset, ack=pb.Settlement.Ack()),
    ]), timeout=RPC_TIMEOUT).outcomes
    assert [o.code for o in outcomes] == [grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    assert "Settlement.topic" in outcomes[0].message
    outcomes = queues.Settle(pb.SettleRequest(queue="all-orders", settlements=[
        pb.Settlement(topic=d.message.topic, partition=d.message.partition, offset=d.message.offset,
                      ack=pb.Settlement.Ack()) for d in got[1:]
    ]), timeout=RPC_TIMEOUT).outcomes
    assert all(o.code == 0 for o in outcomes)

    described = queues.DescribeQueue(pb.DescribeQueueRequest(name="all-orders"), timeout=RPC_TIMEOUT).queue
    assert list(described.topics) == ["orders.eu", "orders.us"]
    assert (described.ready, described.unacked) == (0, 0)
    assert sorted({p.topic for p in described.partitions}) == ["orders.eu", "orders.us"]

    # Bad input: both topic and pattern; a pattern that does not compile.
    for request in (pb.CreateQueueRequest(name="q", topic="payments", topic_pattern="p.*"),
                    pb.CreateQueueRequest(name="q", topic_pattern="orders(")):
        try:
            queues.CreateQueue(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError(f"{request} was accepted")
