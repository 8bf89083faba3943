"""Issue 10 through a Python client written from the .proto alone: a byte budget that
ends between two messages returns what fits and next_offset = the first message not
returned; it never skips to the end. A message larger than the budget comes alone.

FetchRequest.max_bytes: "The read stops before the first message that would go over
it, and next_offset is then that message's offset. At least one message is returned
if one is available, even if it alone is larger." SubscribeRequest.max_batch_bytes:
"Soft limit on the bytes of key, value and headers per MessageBatch; a batch holds at
least one message."
"""

from __future__ import annotations

import os
import random
from typing import Iterable, List, Sequence

import grpc
import pytest

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb

# Seconds allowed for every unary RPC, and for a whole Subscribe stream.
RPC_TIMEOUT = 20.0
STREAM_TIMEOUT = 20.0


def value(index: int, size: int) -> bytes:
    """`size` bytes starting with the zero-padded index (cut short if size is smaller)."""
    return (f"{index:06}-".encode() + bytes([97 + index % 26]) * size)[:size]


def create_topic(broker: Broker, name: str, config: pb.TopicConfig | None = None) -> None:
    broker.admin.CreateTopic(
        pb.CreateTopicRequest(name=name, partitions=1, config=config or pb.TopicConfig()),
        timeout=RPC_TIMEOUT,
    )


def publish(broker: Broker, topic: str, values: Sequence[bytes], first: int) -> None:
    """Publishes `values` to partition 0 in one durable request; checks their offsets."""
    response = broker.publisher.Publish(
        pb.PublishRequest(
            topic=topic,
            messages=[pb.Message(value=v, partition=0) for v in values],
            ack=pb.ACK_LEVEL_DURABLE,
        ),
        timeout=RPC_TIMEOUT,
    )
    assert [(a.partition, a.offset) for a in response.acks] == [
        (0, first + i) for i in range(len(values))
    ]


def publish_all(broker: Broker, topic: str, values: Sequence[bytes], per_request: int) -> None:
    for start in range(0, len(values), per_request):
        publish(broker, topic, values[start:start + per_request], start)


def fetch(broker: Broker, topic: str, offset: int, max_bytes: int = 0,
          max_messages: int = 0) -> pb.FetchResponse:
    return broker.consumer.Fetch(
        pb.FetchRequest(topic=topic, partition=0, offset=offset, max_bytes=max_bytes,
                        max_messages=max_messages),
        timeout=RPC_TIMEOUT,
    )


def offsets(messages: Iterable[pb.ConsumedMessage]) -> List[int]:
    return [m.offset for m in messages]


def test_fetch_stops_between_messages_and_reports_the_next_offset(broker: Broker) -> None:
    create_topic(broker, "budget")
    publish(broker, "budget", [value(i, 1000) for i in range(10)], 0)

    # (offset, max_bytes, offsets returned, next_offset)
    cases = [
        (0, 1500, [0], 1),
        (0, 2500, [0, 1], 2),
        (0, 10, [0], 1),  # larger than the budget: alone
        (0, 1000, [0], 1),  # exactly one message
        (0, 2000, [0, 1], 2),
        (0, 2001, [0, 1], 2),
        (5, 1500, [5], 6),
        (8, 2500, [8, 9], 10),
        (9, 1, [9], 10),
    ]
    for offset, max_bytes, expected, next_offset in cases:
        response = fetch(broker, "budget", offset, max_bytes)
        got = (offsets(response.messages), response.next_offset, response.end_offset)
        assert got == (expected, next_offset, 10), f"Fetch at {offset}, max_bytes {max_bytes}"
        assert [m.value for m in response.messages] == [value(i, 1000) for i in expected]


def test_following_next_offset_reads_every_message_once(broker: Broker) -> None:
    # The default budget (1 MiB) ends inside the 350th message of 3,000 B.
    values = [value(i, 3000) for i in range(1000)]
    create_topic(broker, "thousand")
    publish_all(broker, "thousand", values, 250)

    read: List[int] = []
    offset = 0
    for _ in range(len(values) + 1):
        response = fetch(broker, "thousand", offset)
        assert response.end_offset == 1000
        for message in response.messages:
            assert message.value == values[message.offset], f"value of offset {message.offset}"
        read.extend(offsets(response.messages))
        if response.next_offset == response.end_offset:
            break
        assert response.messages, f"Fetch at {offset} returned nothing before the end"
        assert response.next_offset == response.messages[-1].offset + 1
        offset = response.next_offset
    assert read == list(range(1000)), f"read {len(read)} messages, {len(set(read))} distinct"


def test_subscribe_batches_stay_within_max_batch_bytes(broker: Broker) -> None:
    create_topic(broker, "stream")
    publish(broker, "stream", [value(i, 1000) for i in range(10)], 0)

    call = broker.consumer.Subscribe(
        pb.SubscribeRequest(
            topic="stream",
            partitions=[0],
            start=pb.StartPosition(earliest=pb.StartPosition.Earliest()),
            max_batch_bytes=2500,
        ),
        timeout=STREAM_TIMEOUT,  # bounds every read below
    )
    batches: List[List[int]] = []
    received: List[pb.ConsumedMessage] = []
    try:
        for event in call:
            if event.WhichOneof("event") != "batch":
                continue  # no group: no assignments; a position reset is not expected here
            batches.append(offsets(event.batch.messages))
            received.extend(event.batch.messages)
            if len(received) >= 10:
                break
    except grpc.RpcError as error:
        pytest.fail(f"Subscribe ended with {error.code()} ({error.details()}) after "
                    f"batches {batches}", pytrace=False)
    finally:
        call.cancel()
    assert offsets(received) == list(range(10)), f"batches {batches}"
    assert all(1 <= len(batch) <= 2 for batch in batches), f"batches {batches}"
    assert [m.value for m in received] == [value(i, 1000) for i in range(10)]
    assert call.code() == grpc.StatusCode.CANCELLED


def test_random_sizes_and_budgets_read_every_offset_once(broker: Broker) -> None:
    seed = int(os.environ.get("TIDELOG_PY_SEED", "10"))
    rng = random.Random(seed)
    values = [value(i, rng.randint(0, 200 * 1024)) for i in range(300)]
    # 1 MiB segments, so reads also cross segment boundaries.
    create_topic(broker, "random", pb.TopicConfig(segment_bytes=1 << 20))
    start = 0
    while start < len(values):  # requests of at most ~2 MiB
        end, size = start, 0
        while end < len(values) and (end == start or size + len(values[end]) <= 2 << 20):
            size += len(values[end])
            end += 1
        publish(broker, "random", values[start:end], start)
        start = end

    read: List[int] = []
    offset = 0
    for fetches in range(1, len(values) + 2):
        max_bytes = rng.randint(1, 300 * 1024)
        max_messages = rng.randint(0, 20)  # 0 = the server's default
        where = (f"TIDELOG_PY_SEED={seed}, fetch {fetches} at offset {offset}, "
                 f"max_bytes {max_bytes}, max_messages {max_messages}")
        response = fetch(broker, "random", offset, max_bytes, max_messages)
        got = offsets(response.messages)
        assert response.end_offset == len(values), where
        assert got == list(range(offset, offset + len(got))), where
        if max_messages:
            assert len(got) <= max_messages, where
        if len(got) > 1:
            assert sum(len(m.value) for m in response.messages) <= max_bytes, where
        assert [m.value for m in response.messages] == [values[i] for i in got], where
        read.extend(got)
        if response.next_offset == response.end_offset:
            break
        assert got, f"{where}: nothing returned before the end"
        assert response.next_offset == got[-1] + 1, where
        offset = response.next_offset
    assert read == list(range(len(values))), (
        f"TIDELOG_PY_SEED={seed}: read {len(read)} of {len(values)} messages")
