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
