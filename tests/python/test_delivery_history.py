"""Delivery status and history through a Python client written from the .proto alone.

Messages.GetDeliveryStatus: "Where a message stands in one queue (ready, delayed,
unacked with the member holding it, waiting for a redelivery, acked, dead-lettered with
the reason, ...)". Messages.GetDeliveryHistory: "A message's delivery attempts in one
queue, oldest first: when each was delivered, to which member, and how it ended".
Queues.ListDeliveries: events newest first, "a cursor this queue's listing did not
return" is INVALID_ARGUMENT. All of it survives a kill -9.
"""

from __future__ import annotations

import time

import grpc
import pytest
from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb
from tidelog.v1 import tidelog_pb2_grpc

RPC_TIMEOUT = 20.0


def stubs(broker: Broker) -> tuple[tidelog_pb2_grpc.QueuesStub, tidelog_pb2_grpc.MessagesStub]:
    return (tidelog_pb2_grpc.QueuesStub(broker.channel),
            tidelog_pb2_grpc.MessagesStub(broker.channel))


def status(messages: tidelog_pb2_grpc.MessagesStub, msg_id: bytes) -> pb.QueueDeliveryStatus:
    return messages.GetDeliveryStatus(
        pb.GetDeliveryStatusRequest(topic="orders", id=msg_id, queue="billing"),
        timeout=RPC_TIMEOUT,
    ).queue


def history(messages: tidelog_pb2_grpc.MessagesStub, msg_id: bytes) -> pb.GetDeliveryHistoryResponse:
    return messages.GetDeliveryHistory(
        pb.GetDeliveryHistoryRequest(topic="orders", id=msg_id, queue="billing"),
        timeout=RPC_TIMEOUT,
    )


def test_status_and_history_of_acks_nacks_terms_and_timeouts_outlive_a_kill(broker: Broker) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="orders", partitions=1), timeout=RPC_TIMEOUT)
    broker.publisher.Publish(pb.PublishRequest(
        topic="orders", ack=pb.ACK_LEVEL_DURABLE,
        messages=[pb.Message(id=f"order-{n}".encode(), value=b"x" * (10 + 1000 * n)) for n in range(4)],
    ), timeout=RPC_TIMEOUT)
    queues, messages = stubs(broker)
    queues.CreateQueue(pb.CreateQueueRequest(
        name="billing", topic="orders",
        start=pb.StartPosition(earliest=pb.StartPosition.Earliest()),
        config=pb.QueueConfig(ack_deadline_ms=300, max_deliveries=3, backoff_initial_ms=60_000,
                              backoff_max_ms=60_000),
    ), timeout=RPC_TIMEOUT)
    got = queues.Receive(pb.ReceiveRequest(queue="billing", member="py", max_messages=4,
                                           max_wait_ms=2000), timeout=RPC_TIMEOUT).deliveries
    assert len(got) == 4
    assert status(messages, b"order-0").state == pb.QUEUE_DELIVERY_STATE_UNACKED

    def settle(offset: int, **action: object) -> None:
        outcome = queues.Settle(pb.SettleRequest(queue="billing", settlements=[
            pb.Settlement(partition=0, offset=offset, attempt=1, **action)]), timeout=RPC_TIMEOUT)
        assert outcome.outcomes[0].code == grpc.StatusCode.OK.value[0]

    settle(0, ack=pb.Settlement.Ack())
    settle(1, nack=pb.Settlement.Nack(reason="card declined"))
    settle(2, term=pb.Settlement.Term(reason="bad address"))
    # 3 is left to time out.
    deadline = time.monotonic() + 10
    while status(messages, b"order-3").state != pb.QUEUE_DELIVERY_STATE_WAITING:
        assert time.monotonic() < deadline, "order-3 never timed out"
        time.sleep(0.05)

    def check(when: str) -> None:
        assert status(messages, b"order-0").state == pb.QUEUE_DELIVERY_STATE_ACKED, when
        nacked = status(messages, b"order-1")
        assert (nacked.state, nacked.reason) == (pb.QUEUE_DELIVERY_STATE_WAITING, "card declined"), when
        termed = status(messages, b"order-2")
        assert termed.state == pb.QUEUE_DELIVERY_STATE_DEAD_LETTERED, when
        assert termed.reason == "terminated: bad address", when
        h = history(messages, b"order-3")
        assert len(h.attempts) == 1, when
        assert h.attempts[0].outcome in (pb.DELIVERY_OUTCOME_DEADLINE_PASSED,
                                         pb.DELIVERY_OUTCOME_MEMBER_LEFT), when
        assert h.attempts[0].member.endswith("py"), when
        assert h.attempts[0].HasField("delivered_at_ms"), when
        h = history(messages, b"order-1")
        assert (h.attempts[0].outcome, h.attempts[0].reason) == (pb.DELIVERY_OUTCOME_NACKED,
                                                                  "card declined"), when
        assert h.status.state == pb.QUEUE_DELIVERY_STATE_WAITING, when
        dead = queues.ListDeliveries(pb.ListDeliveriesRequest(
            queue="billing", filter=pb.DELIVERY_FILTER_DEAD_LETTERED), timeout=RPC_TIMEOUT)
        assert [(d.offset, d.id) for d in dead.deliveries] == [(2, b"order-2")], when
        failed = queues.ListDeliveries(pb.ListDeliveriesRequest(
            queue="billing", filter=pb.DELIVERY_FILTER_FAILED), timeout=RPC_TIMEOUT)
        assert [d.offset for d in failed.deliveries] == [3, 1], when

    check("before the kill")
    broker.channel.close()
    broker.kill()
    broker.start()
    queues, messages = stubs(broker)
    check("after a kill -9")

    with pytest.raises(grpc.RpcError) as refused:
        queues.ListDeliveries(pb.ListDeliveriesRequest(queue="billing", cursor="not-a-cursor"),
                              timeout=RPC_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cursor" in refused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        status(messages, b"order-404")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "order-404" in missing.value.details() and '"orders"' in missing.value.details()
