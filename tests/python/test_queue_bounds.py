"""Queue deliveries through a Python client written from the .proto alone, on a channel
with grpcio's default 4 MiB receive limit (bug hunt of 2026-12-06):

- Queues.Receive "returns the deliveries, at most 3 MiB of them" and leases only what
  it returns: 1 MiB messages come three to a call, and what is leased is what came;
- a Receive that waits 0 ms returns the message that was ready, and one that returns
  nothing leases nothing;
- Queues.Consume sends its deliveries in events under the same bound, so a client
  with the default limit reads 1 MiB messages at any credit.
"""

from __future__ import annotations

import queue
from typing import Iterator

import grpc
from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb
from tidelog.v1 import tidelog_pb2_grpc

RPC_TIMEOUT = 20.0
BOUND = 3 * 1024 * 1024
BIG = 1024 * 1024 - 4096


def default_limits(broker: Broker) -> tuple[grpc.Channel, tidelog_pb2_grpc.QueuesStub]:
    channel = grpc.insecure_channel(broker.grpc_addr, options=[("grpc.enable_http_proxy", 0)])
    return channel, tidelog_pb2_grpc.QueuesStub(channel)


def setup(broker: Broker, count: int, size: int) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="jobs", partitions=1), timeout=RPC_TIMEOUT)
    for n in range(count):
        broker.publisher.Publish(pb.PublishRequest(
            topic="jobs", ack=pb.ACK_LEVEL_DURABLE,
            messages=[pb.Message(value=bytes([n % 251]) * size)],
        ), timeout=RPC_TIMEOUT)
    tidelog_pb2_grpc.QueuesStub(broker.channel).CreateQueue(pb.CreateQueueRequest(
        name="work", topic="jobs",
        start=pb.StartPosition(earliest=pb.StartPosition.Earliest()),
        config=pb.QueueConfig(ack_deadline_ms=60_000, max_deliveries=1),
    ), timeout=RPC_TIMEOUT)


def unacked(queues: tidelog_pb2_grpc.QueuesStub) -> int:
    return queues.DescribeQueue(pb.DescribeQueueRequest(name="work"),
                                timeout=RPC_TIMEOUT).queue.unacked


def test_receive_returns_at_most_the_bound_and_leases_only_what_it_returns(broker: Broker) -> None:
    setup(broker, 10, BIG)
    channel, queues = default_limits(broker)
    with channel:
        got = []
        for call in range(10):
            response = queues.Receive(pb.ReceiveRequest(queue="work", member="py", max_messages=80,
                                                         max_wait_ms=2000), timeout=RPC_TIMEOUT)
            assert response.ByteSize() <= BOUND, f"call {call}: {response.ByteSize()} B"
            got.extend(d.message.offset for d in response.deliveries)
            assert unacked(queues) == len(got), f"call {call}"
            if len(got) == 10:
                break
        assert got == list(range(10))


def test_a_receive_that_waits_0_ms_returns_the_ready_message_or_leases_nothing(broker: Broker) -> None:
    setup(broker, 0, 0)
    _, queues = default_limits(broker)
    for n in range(20):
        broker.publisher.Publish(pb.PublishRequest(
            topic="jobs", ack=pb.ACK_LEVEL_DURABLE, messages=[pb.Message(value=b"m%d" % n)],
        ), timeout=RPC_TIMEOUT)
        got = queues.Receive(pb.ReceiveRequest(queue="work", member="py", max_messages=1,
                                               max_wait_ms=0), timeout=RPC_TIMEOUT).deliveries
        held = unacked(queues)
        assert held == n + len(got), f"message {n}: {len(got)} returned, {held} leased"
        assert [d.message.offset for d in got] == [n], f"message {n}"


def test_consume_events_stay_under_the_bound_at_any_credit(broker: Broker) -> None:
    setup(broker, 12, BIG)
    channel, queues = default_limits(broker)
    requests: "queue.Queue[pb.QueueConsumeRequest | None]" = queue.Queue()
    requests.put(pb.QueueConsumeRequest(open=pb.QueueConsumeRequest.Open(
        queue="work", client_id="py", credit=100)))

    def outgoing() -> Iterator[pb.QueueConsumeRequest]:
        while True:
            request = requests.get()
            if request is None:
                return
            yield request

    with channel:
        stream = queues.Consume(outgoing(), timeout=RPC_TIMEOUT)
        got = []
        for event in stream:
            if event.WhichOneof("event") != "deliveries":
                continue
            assert event.ByteSize() <= BOUND, f"{event.ByteSize()} B"
            got.extend(d.message.offset for d in event.deliveries.deliveries)
            if len(got) == 12:
                requests.put(None)
                break
        stream.cancel()
    assert got == list(range(12))
