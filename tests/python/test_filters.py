"""Server-side filters through a Python client written from the .proto alone.

FetchRequest.filter: "only messages it matches are returned ... may then answer with no
message and a next_offset past them: keep following next_offset". SubscribeRequest.filter:
"Positions ... move past skipped messages". The grammar is in the .proto's "Filters"
section; a malformed filter is INVALID_ARGUMENT naming the byte position.
"""

from __future__ import annotations

import json
from typing import Dict, List

import grpc
import pytest

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb

RPC_TIMEOUT = 20.0
STREAM_TIMEOUT = 60.0


def message(i: int) -> pb.Message:
    """1 in 100 is an order; even ones carry JSON, odd ones plain text; 3 KB each."""
    kind = b"order" if i % 100 == 37 else b"other"
    if i % 2 == 0:
        value = json.dumps({"amount": i, "pad": "x" * 2950}).encode()
    else:
        value = f"text {i} ".encode() + b"x" * 2990
    return pb.Message(key=f"k-{i}".encode(), value=value,
                      headers=[pb.Header(key="type", value=kind)])


def publish(broker: Broker, topic: str, count: int) -> None:
    for start in range(0, count, 500):
        broker.publisher.Publish(
            pb.PublishRequest(topic=topic, ack=pb.ACK_LEVEL_DURABLE,
                              messages=[message(i) for i in range(start, min(count, start + 500))]),
            timeout=RPC_TIMEOUT,
        )


def fetch_all(broker: Broker, topic: str, expression: str) -> List[int]:
    read: List[int] = []
    offset = 0
    while True:
        response = broker.consumer.Fetch(
            pb.FetchRequest(topic=topic, offset=offset, filter=expression), timeout=RPC_TIMEOUT)
        read.extend(m.offset for m in response.messages)
        if response.next_offset == response.end_offset:
            return read
        assert response.next_offset > offset, f"no progress at {offset}"
        offset = response.next_offset


def test_fetch_and_subscribe_send_only_what_the_filter_matches(broker: Broker) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="orders", partitions=1),
                             timeout=RPC_TIMEOUT)
    publish(broker, "orders", 2000)
    orders = [i for i in range(2000) if i % 100 == 37]
    assert fetch_all(broker, "orders", 'header.type == "order"') == orders
    # Evaluation stops once the key decided; past it, odd values are not JSON: no match.
    assert fetch_all(broker, "orders", 'key == "k-3" || json.amount >= 1990') == \
        [3, 1990, 1992, 1994, 1996, 1998]
    assert fetch_all(broker, "orders", 'key ^= "k-19" && json.amount < 196') == [190, 192, 194]

    call = broker.consumer.Subscribe(
        pb.SubscribeRequest(topic="orders",
                            start=pb.StartPosition(earliest=pb.StartPosition.Earliest()),
                            filter='header.type in ("order", "refund")'),
        timeout=STREAM_TIMEOUT,
    )
    received: List[int] = []
    positions: Dict[int, int] = {}
    try:
        for event in call:
            if event.WhichOneof("event") != "batch":
                continue
            received.extend(m.offset for m in event.batch.messages)
            for p in event.batch.positions:
                positions[p.partition] = p.next_offset
            if positions.get(0) == 2000:
                break
    except grpc.RpcError as error:
        pytest.fail(f"Subscribe ended with {error.code()} ({error.details()}) after "
                    f"{received} at {positions}", pytrace=False)
    finally:
        call.cancel()
    assert received == orders


def test_a_malformed_filter_is_invalid_argument_naming_the_position(broker: Broker) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="bad", partitions=1),
                             timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as raised:
        broker.consumer.Fetch(pb.FetchRequest(topic="bad", filter='header.type = "x"'),
                              timeout=RPC_TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter at byte 12: expected an operator" in raised.value.details()
