"""Topic patterns through a Python client written from the .proto alone.

SubscribeRequest.topic_pattern: "Read every topic whose whole name matches this pattern
... The first event is a TopicsChanged naming the topics matched at the start ...
another follows each change, within 1 second of it. Messages, positions and resets name
their topic." A pattern over the limits is INVALID_ARGUMENT.
"""

from __future__ import annotations

import time
from typing import List, Tuple

import grpc
import pytest

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb

RPC_TIMEOUT = 20.0
STREAM_TIMEOUT = 30.0


def create(broker: Broker, name: str, partitions: int = 1) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name=name, partitions=partitions),
                             timeout=RPC_TIMEOUT)


def publish(broker: Broker, topic: str, values: List[bytes]) -> None:
    broker.publisher.Publish(
        pb.PublishRequest(topic=topic, ack=pb.ACK_LEVEL_DURABLE,
                          messages=[pb.Message(value=v) for v in values]),
        timeout=RPC_TIMEOUT,
    )


def test_a_pattern_subscription_picks_up_a_new_topic_within_a_second(broker: Broker) -> None:
    create(broker, "orders.eu", 2)
    create(broker, "old-orders.eu")
    publish(broker, "orders.eu", [b"eu-1", b"eu-2"])
    publish(broker, "old-orders.eu", [b"never"])

    call = broker.consumer.Subscribe(
        pb.SubscribeRequest(topic_pattern=r"orders\..*",
                            start=pb.StartPosition(earliest=pb.StartPosition.Earliest())),
        timeout=STREAM_TIMEOUT,
    )
    events = iter(call)
    try:
        first = next(events)
        assert first.WhichOneof("event") == "topics_changed"
        assert list(first.topics_changed.added) == ["orders.eu"]

        received: List[Tuple[str, bytes]] = []
        while len(received) < 2:
            event = next(events)
            assert event.WhichOneof("event") == "batch", event
            received.extend((m.topic, m.value) for m in event.batch.messages)
            assert all(p.topic == "orders.eu" for p in event.batch.positions)
        assert sorted(received) == [("orders.eu", b"eu-1"), ("orders.eu", b"eu-2")]

        created = time.monotonic()
        create(broker, "orders.us")
        publish(broker, "orders.us", [b"us-1"])
        event = next(events)
        assert event.WhichOneof("event") == "topics_changed", event
        assert time.monotonic() - created <= 1.0
        assert list(event.topics_changed.added) == ["orders.us"]
        assert list(event.topics_changed.topics) == ["orders.eu", "orders.us"]
        event = next(events)
        assert [(m.topic, m.value) for m in event.batch.messages] == [("orders.us", b"us-1")]
    finally:
        call.cancel()


def test_an_abusive_pattern_is_invalid_argument(broker: Broker) -> None:
    started = time.monotonic()
    call = broker.consumer.Subscribe(pb.SubscribeRequest(topic_pattern=r"(\w{100}){100}"),
                                     timeout=STREAM_TIMEOUT)
    with pytest.raises(grpc.RpcError) as error:
        next(iter(call))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too complex" in error.value.details()
    assert time.monotonic() - started < 2.0
