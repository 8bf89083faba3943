"""Message ids through a Python client written from the .proto alone.

Message.id: "Within the topic's dedup_window_ms, a second message with the same id is
not stored: its ack names the first." MessageAck.duplicate: "nothing was appended, and
partition and offset are the stored message's." TopicConfig.assign_ids: the broker gives
each message without an id 16 time-ordered bytes, "returned in MessageAck.id and
delivered with the message". A kill -9 forgets nothing: the window is read back from
the log.
"""

from __future__ import annotations

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb

RPC_TIMEOUT = 20.0


def publish(broker: Broker, topic: str, messages: list[pb.Message]) -> list[pb.MessageAck]:
    return list(broker.publisher.Publish(
        pb.PublishRequest(topic=topic, messages=messages, ack=pb.ACK_LEVEL_DURABLE),
        timeout=RPC_TIMEOUT,
    ).acks)


def test_a_retried_publish_is_acked_with_the_first_copy_across_a_kill(broker: Broker) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="payments", partitions=2),
                             timeout=RPC_TIMEOUT)
    # Realistic and extreme sizes: an empty value, 3 KB, 900 KB; ids of 1 and 128 bytes.
    messages = [
        pb.Message(id=b"p", value=b""),
        pb.Message(id=b"invoice-17", value=b"x" * 3000),
        pb.Message(id=bytes(range(128)), value=b"y" * 900_000),
    ]
    first = publish(broker, "payments", messages)
    assert not any(a.duplicate for a in first)
    # A retry of the whole request, one copy twice in it, and one new message.
    again = publish(broker, "payments", messages + [messages[1], pb.Message(id=b"new", value=b"n")])
    assert [a.duplicate for a in again] == [True, True, True, True, False]
    assert [(a.partition, a.offset) for a in again[:3]] == [(a.partition, a.offset) for a in first]
    assert (again[3].partition, again[3].offset) == (first[1].partition, first[1].offset)

    broker.channel.close()
    broker.kill()
    broker.start()
    retried = publish(broker, "payments", messages)
    assert all(a.duplicate for a in retried), "the window outlives a kill -9"
    assert [(a.partition, a.offset) for a in retried] == [(a.partition, a.offset) for a in first]

    stored = 0
    for partition in range(2):
        response = broker.consumer.Fetch(
            pb.FetchRequest(topic="payments", partition=partition, max_messages=100),
            timeout=RPC_TIMEOUT,
        )
        stored += len(response.messages)
    assert stored == 4, "three ids and the new one, each stored once"


def test_assigned_ids_come_back_in_the_ack_and_with_the_message(broker: Broker) -> None:
    broker.admin.CreateTopic(
        pb.CreateTopicRequest(name="events", partitions=1,
                              config=pb.TopicConfig(assign_ids=True, dedup_window_ms=0)),
        timeout=RPC_TIMEOUT,
    )
    acks = publish(broker, "events", [pb.Message(value=b"a"), pb.Message(value=b"b")])
    assert [len(a.id) for a in acks] == [16, 16]
    assert acks[0].id < acks[1].id, "time-ordered"
    described = broker.admin.DescribeTopic(pb.DescribeTopicRequest(name="events"),
                                           timeout=RPC_TIMEOUT)
    assert described.topic.config.assign_ids
    assert described.topic.config.HasField("dedup_window_ms"), "always described"
    assert described.topic.config.dedup_window_ms == 0, "0 = off, as a create takes it"
    fetched = broker.consumer.Fetch(pb.FetchRequest(topic="events", max_messages=2),
                                    timeout=RPC_TIMEOUT)
    assert [m.id for m in fetched.messages] == [a.id for a in acks]
