"""A grpcio client against tidelogd --auth: the bootstrap admin token creates a token
and a rule through the Access service; calls carry `authorization: Bearer <token>`
metadata; no token is UNAUTHENTICATED, a topic the rules do not allow is
PERMISSION_DENIED naming the operation and resource. (Plaintext; test_tls.py runs
over TLS.)"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import pytest

from harness import Broker, tidelogd_bin
from tidelog.v1 import tidelog_pb2 as pb
from tidelog.v1 import tidelog_pb2_grpc

RPC_TIMEOUT = 20.0


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Broker]:
    running = Broker(tidelogd_bin(), tmp_path, ("--auth",))
    try:
        running.start()
        yield running
        running.stop()
    finally:
        if running.channel is not None:
            running.channel.close()
        running.kill()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_a_token_and_a_rule_let_a_grpcio_client_publish_and_fetch(auth_broker: Broker) -> None:
    admin_token = (auth_broker.data_dir / "bootstrap-admin.token").read_text().strip()
    access = tidelog_pb2_grpc.AccessStub(auth_broker.channel)
    admin = bearer(admin_token)
    auth_broker.admin.CreateTopic(pb.CreateTopicRequest(name="py-orders"),
                                  metadata=admin, timeout=RPC_TIMEOUT)
    auth_broker.admin.CreateTopic(pb.CreateTopicRequest(name="secret"),
                                  metadata=admin, timeout=RPC_TIMEOUT)
    created = access.CreateToken(pb.CreateTokenRequest(principal="py-client", ttl_ms=3_600_000),
                                 metadata=admin, timeout=RPC_TIMEOUT)
    assert created.token.startswith("tidelog_" + created.info.id + "_")
    assert created.info.principal == "py-client" and created.info.expires_at_ms > 0
    for operation in ("publish", "consume"):
        access.AddAcl(pb.AddAclRequest(rule=pb.AclRule(
            principal="py-client", resource="topic:py-*", operation=operation, effect="allow")),
            metadata=admin, timeout=RPC_TIMEOUT)
    me = bearer(created.token)

    ack = auth_broker.publisher.Publish(
        pb.PublishRequest(topic="py-orders", messages=[pb.Message(value=b"hello")]),
        metadata=me, timeout=RPC_TIMEOUT)
    assert ack.acks[0].offset == 0
    fetched = auth_broker.consumer.Fetch(
        pb.FetchRequest(topic="py-orders", partition=0, offset=0, max_messages=10),
        metadata=me, timeout=RPC_TIMEOUT)
    assert [m.value for m in fetched.messages] == [b"hello"]

    with pytest.raises(grpc.RpcError) as denied:
        auth_broker.publisher.Publish(
            pb.PublishRequest(topic="secret", messages=[pb.Message(value=b"x")]),
            metadata=me, timeout=RPC_TIMEOUT)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not publish topic:secret" in denied.value.details()

    with pytest.raises(grpc.RpcError) as anonymous:
        auth_broker.admin.ListTopics(pb.ListTopicsRequest(), timeout=RPC_TIMEOUT)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

    access.RevokeToken(pb.RevokeTokenRequest(id=created.info.id), metadata=admin,
                       timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as revoked:
        auth_broker.consumer.Fetch(
            pb.FetchRequest(topic="py-orders", partition=0, offset=0, max_messages=1),
            metadata=me, timeout=RPC_TIMEOUT)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_quotas_from_grpcio_limit_topics_and_slow_publishes(auth_broker: Broker) -> None:
    """SetQuota / ListQuotas / RemoveQuota as a client written from the .proto sees them:
    proto3 optional limits (unset keeps, 0 removes), a topics_max that refuses a third
    topic with RESOURCE_EXHAUSTED, and a publish-bytes rate that slows, never fails."""
    import time

    admin = bearer((auth_broker.data_dir / "bootstrap-admin.token").read_text().strip())
    access = tidelog_pb2_grpc.AccessStub(auth_broker.channel)
    created = access.CreateToken(pb.CreateTokenRequest(principal="py-quota"),
                                 metadata=admin, timeout=RPC_TIMEOUT)
    access.AddAcl(pb.AddAclRequest(rule=pb.AclRule(
        principal="py-quota", resource="topic:q-*", operation="*", effect="allow")),
        metadata=admin, timeout=RPC_TIMEOUT)
    me = bearer(created.token)

    set_ = access.SetQuota(pb.SetQuotaRequest(principal="py-quota", limits=pb.QuotaLimits(
        topics_max=2, publish_bytes_per_sec=256 * 1024)), metadata=admin, timeout=RPC_TIMEOUT)
    assert set_.changed and set_.quota.limits.topics_max == 2
    assert not set_.quota.limits.HasField("requests_per_sec")
    # Unset limits keep their value; 0 removes one.
    again = access.SetQuota(pb.SetQuotaRequest(principal="py-quota", limits=pb.QuotaLimits(
        requests_per_sec=0)), metadata=admin, timeout=RPC_TIMEOUT)
    assert not again.changed and again.quota.limits.topics_max == 2

    for name in ("q-1", "q-2"):
        auth_broker.admin.CreateTopic(pb.CreateTopicRequest(name=name), metadata=me,
                                      timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as refused:
        auth_broker.admin.CreateTopic(pb.CreateTopicRequest(name="q-3"), metadata=me,
                                      timeout=RPC_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "topics_max" in refused.value.details()
    described = auth_broker.admin.DescribeTopic(pb.DescribeTopicRequest(name="q-1"),
                                                metadata=me, timeout=RPC_TIMEOUT)
    assert described.topic.owner == "py-quota"

    # 768 KiB at 256 KiB/s with a one-second burst: at least ~2 s, every publish acked.
    started = time.monotonic()
    for _ in range(12):
        ack = auth_broker.publisher.Publish(pb.PublishRequest(
            topic="q-1", messages=[pb.Message(value=b"v" * 4096) for _ in range(16)]),
            metadata=me, timeout=RPC_TIMEOUT)
        assert len(ack.acks) == 16
    assert time.monotonic() - started >= 1.8

    listed = access.ListQuotas(pb.ListQuotasRequest(principal="py-quota"), metadata=admin,
                               timeout=RPC_TIMEOUT)
    assert [q.principal for q in listed.quotas] == ["py-quota"]
    assert listed.effective.publish_bytes_per_sec == 256 * 1024
    access.RemoveQuota(pb.RemoveQuotaRequest(principal="py-quota"), metadata=admin,
                       timeout=RPC_TIMEOUT)
    with pytest.raises(grpc.RpcError) as gone:
        access.RemoveQuota(pb.RemoveQuotaRequest(principal="py-quota"), metadata=admin,
                           timeout=RPC_TIMEOUT)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    auth_broker.admin.CreateTopic(pb.CreateTopicRequest(name="q-3"), metadata=me,
                                  timeout=RPC_TIMEOUT)


def test_reset_offsets_tells_nothing_about_a_topic_the_caller_may_not_describe(
        auth_broker: Broker) -> None:
    """A principal with every right on its own groups and none on topic `secret`: a
    dry-run ResetOffsets used to show secret's partitions and end offsets (and
    NOT_FOUND for a topic that does not exist); by pattern it listed every topic."""
    admin = bearer((auth_broker.data_dir / "bootstrap-admin.token").read_text().strip())
    access = tidelog_pb2_grpc.AccessStub(auth_broker.channel)
    for name, partitions in (("secret", 3), ("py-open", 1)):
        auth_broker.admin.CreateTopic(pb.CreateTopicRequest(name=name, partitions=partitions),
                                      metadata=admin, timeout=RPC_TIMEOUT)
    auth_broker.publisher.Publish(
        pb.PublishRequest(topic="secret", messages=[pb.Message(value=b"x", partition=1)] * 7),
        metadata=admin, timeout=RPC_TIMEOUT)
    created = access.CreateToken(pb.CreateTokenRequest(principal="bob"), metadata=admin,
                                 timeout=RPC_TIMEOUT)
    for resource in ("group:bob-*", "topic:py-*"):
        access.AddAcl(pb.AddAclRequest(rule=pb.AclRule(
            principal="bob", resource=resource, operation="*", effect="allow")),
            metadata=admin, timeout=RPC_TIMEOUT)
    bob = bearer(created.token)
    latest = pb.ResetOffsetsRequest.ToLatest()

    answers = []
    for topic in ("secret", "no-such-topic"):
        with pytest.raises(grpc.RpcError) as refused:
            auth_broker.groups.ResetOffsets(pb.ResetOffsetsRequest(
                group_id="bob-g", topic=pb.ResetOffsetsRequest.TopicScope(topic=topic),
                to_latest=latest), metadata=bob, timeout=RPC_TIMEOUT)
        answers.append((refused.value.code(), refused.value.details().replace(topic, "NAME")))
    assert answers[0][0] == grpc.StatusCode.PERMISSION_DENIED, answers
    assert "may not consume topic:NAME" in answers[0][1], answers
    assert answers[0] == answers[1]

    by_pattern = pb.ResetOffsetsRequest(
        group_id="bob-g", topic_pattern=pb.ResetOffsetsRequest.TopicPatternScope(
            topic_pattern=".*"), to_latest=latest)
    seen = auth_broker.groups.ResetOffsets(by_pattern, metadata=bob, timeout=RPC_TIMEOUT)
    assert [(c.topic, c.partition) for c in seen.changes] == [("py-open", 0)]
    everything = auth_broker.groups.ResetOffsets(by_pattern, metadata=admin, timeout=RPC_TIMEOUT)
    assert sorted({c.topic for c in everything.changes}) == ["py-open", "secret"]
