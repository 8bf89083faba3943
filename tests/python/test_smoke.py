"""A Python client's first contact, from the .proto alone: topics listed and described,
a publish and a fetch, the documented NOT_FOUND, the health service and /metrics."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb

RPC_TIMEOUT = 20.0


def test_topics_are_listed_described_written_and_read(broker: Broker) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="beta"), timeout=RPC_TIMEOUT)
    created = broker.admin.CreateTopic(
        pb.CreateTopicRequest(name="alpha", partitions=3), timeout=RPC_TIMEOUT).topic
    assert created.name == "alpha"

    listed = broker.admin.ListTopics(pb.ListTopicsRequest(), timeout=RPC_TIMEOUT).topics
    assert [(t.name, t.partitions) for t in listed] == [("alpha", 3), ("beta", 1)]

    ack = broker.publisher.Publish(
        pb.PublishRequest(topic="alpha",
                          messages=[pb.Message(key=b"k", value=b"hello", partition=2)]),
        timeout=RPC_TIMEOUT,
    ).acks
    assert [(a.partition, a.offset) for a in ack] == [(2, 0)]

    topic = broker.admin.DescribeTopic(pb.DescribeTopicRequest(name="alpha"),
                                       timeout=RPC_TIMEOUT).topic
    # Every field of the effective configuration is filled in (defaults from the .proto).
    assert topic.config.segment_bytes == 256 << 20
    assert topic.config.max_message_bytes == 1 << 20
    assert topic.config.compression == pb.COMPRESSION_NONE
    assert topic.config.fsync.WhichOneof("policy") == "always"
    assert not topic.config.HasField("retention_ms")
    assert [(p.partition, p.log_start_offset, p.end_offset) for p in topic.partitions] == [
        (0, 0, 0), (1, 0, 0), (2, 0, 1)]

    fetched = broker.consumer.Fetch(pb.FetchRequest(topic="alpha", partition=2, offset=0),
                                    timeout=RPC_TIMEOUT)
    assert [(m.offset, m.key, m.value) for m in fetched.messages] == [(0, b"k", b"hello")]
    assert (fetched.next_offset, fetched.end_offset) == (1, 1)

    with pytest.raises(grpc.RpcError) as missing:
        broker.admin.DescribeTopic(pb.DescribeTopicRequest(name="gamma"), timeout=RPC_TIMEOUT)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_metrics_answer(broker: Broker) -> None:
    health = health_pb2_grpc.HealthStub(broker.channel)
    for service in ["", "tidelog.v1.Admin", "tidelog.v1.Publisher", "tidelog.v1.Consumer",
                    "tidelog.v1.Groups"]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service),
                              timeout=RPC_TIMEOUT).status
        assert status == health_pb2.HealthCheckResponse.SERVING, f"service {service!r}"

    # No proxy from the environment for 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{broker.metrics_addr}/metrics", timeout=RPC_TIMEOUT) as response:
        assert response.status == 200
        assert b"# TYPE" in response.read()
