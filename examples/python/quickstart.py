#!/usr/bin/env python3
"""tidelog from Python with nothing but grpcio and the .proto: publish, subscribe, and
work a queue (receive, ack).

    pip install grpcio grpcio-tools        # or: tests/python/run.sh's environment
    cargo run --release --bin tidelogd     # in another terminal
    python3 examples/python/quickstart.py [--server 127.0.0.1:7420] [--keep]

The client stubs are generated at run time from proto/proto/tidelog/v1/tidelog.proto
into a temporary directory (nothing generated is committed). The script creates its own
topic and queue (names end in a random suffix) and deletes them at the end unless
--keep is given. Exit status 0 when every step did what it says.
"""

from __future__ import annotations

import argparse
import importlib
import secrets
import sys
import tempfile
import time
from pathlib import Path

import grpc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto" / "proto"
PROTO_FILE = PROTO_ROOT / "tidelog" / "v1" / "tidelog.proto"
RPC_TIMEOUT = 20.0
ORDERS = 6


def generate_stubs(into: Path):
    """Compiles the .proto with grpc_tools into `into` and imports the modules."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("quickstart: grpc_tools is missing: pip install grpcio-tools")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        str(PROTO_FILE),
    ])
    if status != 0:
        sys.exit(f"quickstart: generating stubs from {PROTO_FILE} failed (status {status})")
    sys.path.insert(0, str(into))
    return (importlib.import_module("tidelog.v1.tidelog_pb2"),
            importlib.import_module("tidelog.v1.tidelog_pb2_grpc"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:7420",
                        help="tidelogd's gRPC address (default 127.0.0.1:7420)")
    parser.add_argument("--connect-timeout", type=float, default=10.0,
                        help="seconds to wait for the broker (default 10)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the topic and the queue the script creates")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tidelog-stubs-") as stubs:
        pb, rpc = generate_stubs(Path(stubs))
        channel = grpc.insecure_channel(args.server, options=[("grpc.enable_http_proxy", 0)])
        try:
            grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
        except grpc.FutureTimeoutError:
            sys.exit(f"quickstart: no tidelogd answers at {args.server}: start one with "
                     "`cargo run --release --bin tidelogd`, or pass --server HOST:PORT")
        admin = rpc.AdminStub(channel)
        publisher = rpc.PublisherStub(channel)
        consumer = rpc.ConsumerStub(channel)
        queues = rpc.QueuesStub(channel)

        suffix = secrets.token_hex(3)
        topic, queue = f"quickstart-orders-{suffix}", f"quickstart-billing-{suffix}"

        # 1. A topic with three partitions.
        admin.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=3), timeout=RPC_TIMEOUT)
        print(f"created topic {topic} (3 partitions)")

        # 2. Publish: keys pick the partition; the answer comes once the messages are
        #    on disk (ACK_LEVEL_DURABLE, the default).
        messages = [
            pb.Message(key=f"customer-{n % 3}".encode(),
                       value=f'{{"order": {n}, "amount": {10 * n}}}'.encode(),
                       headers=[pb.Header(key="kind", value=b"big" if n % 2 else b"small")],
                       id=f"order-{n}".encode())
            for n in range(ORDERS)
        ]
        acks = publisher.Publish(pb.PublishRequest(topic=topic, messages=messages,
                                                   ack=pb.ACK_LEVEL_DURABLE),
                                 timeout=RPC_TIMEOUT).acks
        # One ack per message, in order (ack.id is set when the broker assigned the id).
        for message, ack in zip(messages, acks):
            print(f"published {message.id.decode()} -> partition {ack.partition} "
                  f"offset {ack.offset}")

        # 3. Subscribe from the earliest offset with a server-side filter: only the
        #    "big" orders are sent.
        request = pb.SubscribeRequest(topic=topic,
                                      start=pb.StartPosition(earliest=pb.StartPosition.Earliest()),
                                      filter='header.kind == "big"')
        stream = consumer.Subscribe(request, timeout=RPC_TIMEOUT)
        big = []
        for event in stream:
            if event.WhichOneof("event") == "batch":
                big.extend(event.batch.messages)
            if len(big) >= ORDERS // 2:
                stream.cancel()
                break
        for message in sorted(big, key=lambda m: m.id):
            print(f"subscribed: {message.id.decode()} {message.value.decode()} "
                  f"(partition {message.partition} offset {message.offset})")

        # 4. A work queue on the topic: receive, then ack everything in one Settle.
        queues.CreateQueue(pb.CreateQueueRequest(
            name=queue, topic=topic,
            start=pb.StartPosition(earliest=pb.StartPosition.Earliest()),
            config=pb.QueueConfig(ack_deadline_ms=30_000, max_deliveries=5)),
            timeout=RPC_TIMEOUT)
        received = []
        deadline = time.monotonic() + 10
        while len(received) < ORDERS and time.monotonic() < deadline:
            received.extend(queues.Receive(pb.ReceiveRequest(
                queue=queue, member="quickstart", max_messages=ORDERS, max_wait_ms=1000),
                timeout=RPC_TIMEOUT).deliveries)
        outcomes = queues.Settle(pb.SettleRequest(queue=queue, settlements=[
            pb.Settlement(partition=d.message.partition, offset=d.message.offset,
                          attempt=d.attempt, receipt=d.receipt, ack=pb.Settlement.Ack())
            for d in received]), timeout=RPC_TIMEOUT).outcomes
        acked = sum(o.settled for o in outcomes if o.code == grpc.StatusCode.OK.value[0])
        described = queues.DescribeQueue(pb.DescribeQueueRequest(name=queue),
                                         timeout=RPC_TIMEOUT).queue
        print(f"queue {queue}: received {len(received)}, acked {acked}, "
              f"ready {described.ready}, unacked {described.unacked}")

        if not args.keep:
            queues.DeleteQueue(pb.DeleteQueueRequest(name=queue), timeout=RPC_TIMEOUT)
            admin.DeleteTopic(pb.DeleteTopicRequest(name=topic), timeout=RPC_TIMEOUT)
            print(f"deleted queue {queue} and topic {topic}")
        channel.close()

        ok = (len(acks) == ORDERS and len(big) == ORDERS // 2
              and len(received) == ORDERS and acked == ORDERS
              and described.ready == 0 and described.unacked == 0)
        print("quickstart: ok" if ok else "quickstart: FAILED (see above)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
