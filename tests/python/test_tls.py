"""A grpcio client over TLS: tidelogd --tls-cert/--tls-key with --auth, the client
trusting the test CA and sending its token; a plaintext channel to the TLS port fails;
with --tls-client-ca the client certificate's CN is the principal.

The certificates are made at test time with the openssl command (no key is checked in).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from harness import Broker, tidelogd_bin
from tidelog.v1 import tidelog_pb2 as pb
from tidelog.v1 import tidelog_pb2_grpc

RPC_TIMEOUT = 20.0


def openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates "
                    "(apt-get install openssl)", pytrace=False)
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(dir: Path, name: str, cn: str, extensions: str) -> None:
    """NAME.key and NAME.pem: a P-256 key and a certificate for CN=cn signed by ca."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=dir)
    (dir / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.pem",
            "-extfile", f"{name}.ext", cwd=dir)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    dir = tmp_path / "pki"
    dir.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=py-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=dir)
    issue(dir, "server", "localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(dir, "client", "py-cert-client", "extendedKeyUsage=clientAuth\n")
    return dir


def start(tmp_path: Path, pki: Path, credentials: grpc.ChannelCredentials,
          *extra: str) -> Broker:
    broker = Broker(tidelogd_bin(), tmp_path,
                    ("--auth", "--tls-cert", str(pki / "server.pem"),
                     "--tls-key", str(pki / "server.key"), *extra),
                    credentials=credentials)
    broker.start()
    return broker


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Iterator[Broker]:
    credentials = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    running = start(tmp_path, pki, credentials)
    try:
        yield running
        running.stop()
    finally:
        running.kill()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_grpcio_publishes_and_fetches_over_tls_with_a_token(tls_broker: Broker) -> None:
    admin = bearer((tls_broker.data_dir / "bootstrap-admin.token").read_text().strip())
    access = tidelog_pb2_grpc.AccessStub(tls_broker.channel)
    tls_broker.admin.CreateTopic(pb.CreateTopicRequest(name="py-tls"), metadata=admin,
                                 timeout=RPC_TIMEOUT)
    created = access.CreateToken(pb.CreateTokenRequest(principal="py-tls-client"),
                                 metadata=admin, timeout=RPC_TIMEOUT)
    for operation in ("publish", "consume"):
        access.AddAcl(pb.AddAclRequest(rule=pb.AclRule(
            principal="py-tls-client", resource="topic:py-tls", operation=operation,
            effect="allow")), metadata=admin, timeout=RPC_TIMEOUT)
    me = bearer(created.token)
    values = [b"over-tls-%d" % i for i in range(100)] + [b"x" * (1 << 20)]
    ack = tls_broker.publisher.Publish(
        pb.PublishRequest(topic="py-tls", messages=[pb.Message(value=v) for v in values]),
        metadata=me, timeout=RPC_TIMEOUT)
    assert [a.offset for a in ack.acks] == list(range(len(values)))
    fetched = tls_broker.consumer.Fetch(
        pb.FetchRequest(topic="py-tls", partition=0, offset=0, max_messages=len(values),
                        max_bytes=8 << 20),
        metadata=me, timeout=RPC_TIMEOUT)
    assert [m.value for m in fetched.messages] == values
    assert access.WhoAmI(pb.WhoAmIRequest(), metadata=me,
                         timeout=RPC_TIMEOUT).principal == "py-tls-client"

    with pytest.raises(grpc.RpcError) as anonymous:
        tls_broker.admin.ListTopics(pb.ListTopicsRequest(), timeout=RPC_TIMEOUT)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # A plaintext channel to the TLS port: the call fails at once with
    # FAILED_PRECONDITION saying to use TLS (the broker answers the call's stream in
    # plain HTTP/2 before it closes); the broker goes on.
    plain = grpc.insecure_channel(tls_broker.grpc_addr)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            tidelog_pb2_grpc.AdminStub(plain).ListTopics(
                pb.ListTopicsRequest(), metadata=admin, timeout=RPC_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
        assert "this port speaks TLS; connect with https://" in refused.value.details()
    finally:
        plain.close()
    assert tls_broker.admin.ListTopics(pb.ListTopicsRequest(), metadata=admin,
                                       timeout=RPC_TIMEOUT).topics


def test_a_client_certificate_is_the_principal_under_mutual_tls(tmp_path: Path,
                                                                pki: Path) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.pem").read_bytes())
    broker = start(tmp_path, pki, credentials, "--tls-client-ca", str(pki / "ca.pem"))
    try:
        access = tidelog_pb2_grpc.AccessStub(broker.channel)
        me = access.WhoAmI(pb.WhoAmIRequest(), timeout=RPC_TIMEOUT)
        assert (me.principal, me.token_id) == ("py-cert-client", "")
        with pytest.raises(grpc.RpcError) as denied:
            broker.admin.CreateTopic(pb.CreateTopicRequest(name="nope"), timeout=RPC_TIMEOUT)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "principal py-cert-client may not create topic:nope" in denied.value.details()
        # Without a client certificate no call gets through.
        anonymous = grpc.secure_channel(broker.grpc_addr, grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes()))
        try:
            with pytest.raises(grpc.RpcError) as refused:
                tidelog_pb2_grpc.AccessStub(anonymous).WhoAmI(pb.WhoAmIRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            anonymous.close()
        broker.stop()
    finally:
        broker.kill()
