"""Record batches on the wire from a Python client written from storage/FORMAT.md and
the .proto alone: the batch is built by hand here (varints, zigzag, CRC-32 from zlib),
published with PublishBatch (and on a PublishStream, many at once, to several
partitions), read back with FetchBatches and decoded by hand, skipping what
StoredRecordBatch says to skip. A damaged batch is refused with INVALID_ARGUMENT and
nothing is appended.
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import Optional

import grpc
import pytest

from harness import Broker
from tidelog.v1 import tidelog_pb2 as pb
from tidelog.v1 import tidelog_pb2_grpc

RPC_TIMEOUT = 20.0
NEVER = (1 << 63) - 1


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag(value: int) -> int:
    return ((value << 1) ^ (value >> 63)) & ((1 << 64) - 1)


def unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def encode_batch(records: list[dict], now_ms: int) -> bytes:
    """One uncompressed batch, FORMAT.md "Segment log", base offset 0."""
    first_ts = records[0].get("timestamp_ms", now_ms)
    body = bytearray()
    max_ts, max_expiry = first_ts, None
    for delta, record in enumerate(records):
        ts = record.get("timestamp_ms", now_ms)
        max_ts = max(max_ts, ts)
        expiry: Optional[int] = record.get("expires_at_ms")
        max_expiry = NEVER if expiry is None else max(max_expiry or expiry, expiry)
        if expiry is None:
            max_expiry = NEVER
        attributes = 0
        fields = bytearray()
        fields += varint(delta) + varint(zigzag(ts - first_ts))
        if expiry is not None:
            attributes |= 2
            fields += varint(zigzag(expiry - first_ts))
        if "id" in record:
            attributes |= 16
            fields += varint(len(record["id"])) + record["id"]
        if record.get("key") is not None:
            attributes |= 1
            fields += varint(len(record["key"])) + record["key"]
        fields += varint(len(record["value"])) + record["value"]
        headers = record.get("headers", [])
        fields += varint(len(headers))
        for key, value in headers:
            fields += varint(len(key)) + key + varint(len(value)) + value
        record_bytes = bytes([attributes]) + bytes(fields)
        body += varint(len(record_bytes)) + record_bytes
    # A batch where some record never expires says so with i64::MAX.
    if any(r.get("expires_at_ms") is None for r in records):
        max_expiry = NEVER
    count = len(records)
    after_crc = struct.pack(
        "<BBHIIqqqII", 1, 0, 0, count - 1, count, first_ts, max_ts, max_expiry,
        len(body), len(body),
    ) + bytes(body)
    length = 16 + len(after_crc)
    crc = zlib.crc32(after_crc) & 0xFFFFFFFF
    return struct.pack("<IQI", length, 0, crc) + after_crc


def decode_batch(batch: bytes) -> tuple[int, list[dict]]:
    length, base, crc = struct.unpack_from("<IQI", batch, 0)
    assert length == len(batch)
    assert zlib.crc32(batch[16:]) & 0xFFFFFFFF == crc
    (version, attributes, _, last_delta, count, first_ts, _, _, records_len, _) = \
        struct.unpack_from("<BBHIIqqqII", batch, 16)
    assert version == 1 and attributes & 3 == 0, "this test reads uncompressed batches"
    records, at = [], 60
    for _ in range(count):
        size, at = read_varint(batch, at)
        end = at + size
        attributes = batch[at]
        at += 1
        delta, at = read_varint(batch, at)
        ts, at = read_varint(batch, at)
        record = {"offset": base + delta, "timestamp_ms": first_ts + unzigzag(ts)}
        if attributes & 2:
            expiry, at = read_varint(batch, at)
            record["expires_at_ms"] = first_ts + unzigzag(expiry)
        if attributes & 4:
            _, at = read_varint(batch, at)
        if attributes & 8:
            at += 1
        if attributes & 16:
            n, at = read_varint(batch, at)
            record["id"], at = batch[at:at + n], at + n
        if attributes & 32:
            # The id is the previous record's (16 bytes) with its last 8 bytes, read
            # big-endian, plus one (FORMAT.md, "Ids that count up").
            previous = records[-1]["id"]
            assert len(previous) == 16 and previous[8:] != b"\xff" * 8
            suffix = int.from_bytes(previous[8:], "big") + 1
            record["id"] = previous[:8] + suffix.to_bytes(8, "big")
        record["key"] = None
        if attributes & 1:
            n, at = read_varint(batch, at)
            record["key"], at = batch[at:at + n], at + n
        n, at = read_varint(batch, at)
        record["value"], at = batch[at:at + n], at + n
        headers = []
        hcount, at = read_varint(batch, at)
        for _ in range(hcount):
            n, at = read_varint(batch, at)
            key, at = batch[at:at + n], at + n
            n, at = read_varint(batch, at)
            value, at = batch[at:at + n], at + n
            headers.append((key, value))
        record["headers"] = headers
        assert at == end
        records.append(record)
    return base, records


def delivered(stored: pb.StoredRecordBatch, now_ms: int) -> list[dict]:
    base, records = decode_batch(stored.batch)
    assert base == stored.base_offset and len(records) == stored.record_count
    skip = set(stored.skip)
    return [
        r for i, r in enumerate(records)
        if i >= stored.skip_front and r["offset"] - base not in skip
        and not (r.get("expires_at_ms") is not None and r["expires_at_ms"] <= now_ms)
    ]


def fetch_all(broker: Broker, topic: str, offset: int = 0, filter: str = "",
              partition: int = 0) -> list[dict]:
    out = []
    while True:
        response = broker.consumer.FetchBatches(
            pb.FetchRequest(topic=topic, partition=partition, offset=offset, max_messages=7,
                            filter=filter),
            timeout=RPC_TIMEOUT,
        )
        for stored in response.batches:
            out.extend(delivered(stored, response.now_ms))
        if response.next_offset >= response.end_offset:
            return out
        offset = response.next_offset


def test_a_hand_built_batch_round_trips_in_batch_form(broker: Broker) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="py-batches", partitions=1),
                             timeout=RPC_TIMEOUT)
    now = int(time.time() * 1000)
    records = [
        {"key": b"user-1", "value": b"hello", "headers": [(b"trace", b"abc")],
         "id": b"evt-1", "expires_at_ms": now + 3_600_000},
        {"value": b""},
        {"key": b"", "value": b"z" * 500_000, "timestamp_ms": now - 1000},
        {"value": b"last", "id": b"evt-4", "headers": [(b"a", b""), (b"b", b"2")]},
    ]
    sent = []
    for round in range(3):
        batch = [dict(r) for r in records]
        for r in batch:
            if "id" in r:
                r["id"] = b"%d-%s" % (round, r["id"])
        ack = broker.publisher.PublishBatch(
            pb.PublishBatchRequest(topic="py-batches", partition=0,
                                   batch=encode_batch(batch, now), ack=pb.ACK_LEVEL_DURABLE),
            timeout=RPC_TIMEOUT,
        )
        assert (ack.base_offset, ack.count, ack.duplicate) == (len(sent), 4, False)
        sent.extend(batch)
        if round == 0:
            first = batch
    # The topic's default dedup window: a retried batch is stored once.
    retry = broker.publisher.PublishBatch(
        pb.PublishBatchRequest(topic="py-batches", partition=0, batch=encode_batch(first, now)),
        timeout=RPC_TIMEOUT,
    )
    assert retry.duplicate and [a.offset for a in retry.acks] == [0, 3]

    got = fetch_all(broker, "py-batches")
    assert [r["offset"] for r in got] == list(range(12))
    for record, original in zip(got, sent):
        assert record["value"] == original["value"]
        assert record["key"] == original.get("key")
        assert record["headers"] == original.get("headers", [])
        assert record.get("id") == original.get("id")
        assert record.get("expires_at_ms") == original.get("expires_at_ms")
    # From inside a batch: the front is skipped.
    assert [r["offset"] for r in fetch_all(broker, "py-batches", offset=6)] == list(range(6, 12))
    # A filter marks what it refuses.
    kept = fetch_all(broker, "py-batches", filter='key == "user-1"')
    assert [r["offset"] for r in kept] == [0, 4, 8]
    # The per-message form sees the same messages.
    response = broker.consumer.Fetch(
        pb.FetchRequest(topic="py-batches", partition=0, offset=4, max_messages=4,
                        max_bytes=8 << 20),
        timeout=RPC_TIMEOUT,
    )
    assert [m.value for m in response.messages] == [r["value"] for r in records]


def test_ids_that_count_up_read_back_from_stored_batches(broker: Broker) -> None:
    """Ids a producer counts up are stored once a batch (record attribute bit 5); a
    reader written from FORMAT.md gives every one back, and lookup by id finds them."""
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="py-run-ids", partitions=1),
                             timeout=RPC_TIMEOUT)
    prefix = b"py-ids-\x01"
    ids = [prefix + (2**64 - 3 + i).to_bytes(8, "big") for i in range(2)]
    ids += [prefix + (1000 + i).to_bytes(8, "big") for i in range(50)]
    ids += [b"\xff" * 8 + b"\xff" * 8]
    messages = [pb.Message(value=b"v%d" % i, id=id) for i, id in enumerate(ids)]
    broker.publisher.Publish(pb.PublishRequest(topic="py-run-ids", messages=messages),
                             timeout=RPC_TIMEOUT)
    got = fetch_all(broker, "py-run-ids")
    assert [r["id"] for r in got] == ids
    # Four ids stored (the first, the one after the suffix of all ones, the first of
    # the second run, the last), not 53: under 10 bytes a record, not over 25.
    stored = broker.consumer.FetchBatches(
        pb.FetchRequest(topic="py-run-ids", partition=0, offset=0, max_messages=100),
        timeout=RPC_TIMEOUT)
    assert sum(len(b.batch) for b in stored.batches) < 60 + 53 * 10 + 4 * 17
    assert [r["value"] for r in got] == [m.value for m in messages]
    lookup = tidelog_pb2_grpc.MessagesStub(broker.channel)
    for offset in (0, 1, 2, 30, 51, 52):
        found = lookup.GetMessage(pb.GetMessageRequest(topic="py-run-ids", id=ids[offset]),
                                  timeout=RPC_TIMEOUT)
        assert (found.message.offset, found.message.id) == (offset, ids[offset])


def test_a_damaged_batch_is_refused_and_nothing_is_appended(broker: Broker) -> None:
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="py-strict", partitions=1),
                             timeout=RPC_TIMEOUT)
    good = encode_batch([{"value": b"v"}], int(time.time() * 1000))
    damaged = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(grpc.RpcError) as error:
        broker.publisher.PublishBatch(
            pb.PublishBatchRequest(topic="py-strict", partition=0, batch=damaged),
            timeout=RPC_TIMEOUT,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CRC mismatch" in error.value.details()
    response = broker.consumer.FetchBatches(pb.FetchRequest(topic="py-strict", partition=0),
                                            timeout=RPC_TIMEOUT)
    assert response.end_offset == 0 and not response.batches


def test_batches_sent_together_on_a_stream_land_in_order(broker: Broker) -> None:
    """Batch requests sent on one PublishStream without waiting for answers, to three
    partitions in a shuffled order with a damaged one among them: every request is
    answered in its order, each batch lands in its partition after that partition's
    earlier batches (the broker writes a partition's waiting batches together), the
    damaged one fails alone, and each partition reads back what was sent to it."""
    import random
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="py-together", partitions=3),
                             timeout=RPC_TIMEOUT)
    rng = random.Random(20261206)
    now = int(time.time() * 1000)
    requests, expected = [], []
    ends = [0, 0, 0]
    sent: list[list[bytes]] = [[], [], []]
    for request_id in range(40):
        partition = rng.randrange(3)
        values = [rng.randbytes(rng.choice([0, 10, 3000, 3000, 120_000]))
                  for _ in range(rng.randrange(1, 20))]
        batch = encode_batch([{"value": v} for v in values], now)
        if request_id == 17:
            batch = batch[:-1] + bytes([batch[-1] ^ 1])
            expected.append(None)
        else:
            expected.append((partition, ends[partition], len(values)))
            ends[partition] += len(values)
            sent[partition].extend(values)
        requests.append(pb.PublishStreamRequest(
            request_id=request_id,
            batch=pb.PublishBatchRequest(topic="py-together", partition=partition, batch=batch,
                                         ack=pb.ACK_LEVEL_DURABLE)))
    responses = list(broker.publisher.PublishStream(iter(requests), timeout=RPC_TIMEOUT))
    assert [r.request_id for r in responses] == list(range(40))
    for response, want in zip(responses, expected):
        if want is None:
            assert response.WhichOneof("outcome") == "error"
            assert response.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "CRC mismatch" in response.error.message
        else:
            ack = response.batch_response
            assert (ack.partition, ack.base_offset, ack.count) == want
    for partition in range(3):
        got = fetch_all(broker, "py-together", partition=partition)
        assert [r["offset"] for r in got] == list(range(ends[partition]))
        assert [r["value"] for r in got] == sent[partition]


def test_a_group_member_reads_stored_batches_and_commits(broker: Broker) -> None:
    """SubscribeBatches with a group, from a grpcio client: the Assignment first, then
    stored batches of the assigned partitions (decoded here), and the broker's
    auto-commit moves the group's offsets past them."""
    broker.admin.CreateTopic(pb.CreateTopicRequest(name="py-group-batches", partitions=2),
                             timeout=RPC_TIMEOUT)
    now = int(time.time() * 1000)
    for partition in (0, 1):
        broker.publisher.PublishBatch(
            pb.PublishBatchRequest(
                topic="py-group-batches", partition=partition,
                batch=encode_batch([{"value": b"p%d-%d" % (partition, n)} for n in range(30)],
                                   now),
                ack=pb.ACK_LEVEL_DURABLE),
            timeout=RPC_TIMEOUT)
    stream = broker.consumer.SubscribeBatches(pb.SubscribeRequest(
        topic="py-group-batches", max_batch_messages=7,
        group=pb.GroupMembership(group_id="py-batch-group", auto_commit_interval_ms=20,
                                 client_id="py")), timeout=RPC_TIMEOUT)
    assignment = None
    got: dict[int, list[bytes]] = {0: [], 1: []}
    for event in stream:
        kind = event.WhichOneof("event")
        if kind == "assignment":
            assignment = event.assignment
        elif kind == "batches":
            assert assignment is not None, "the Assignment comes before any data"
            for stored in event.batches.batches:
                got[event.batches.partition].extend(
                    r["value"] for r in delivered(stored, event.batches.now_ms))
        if sum(len(v) for v in got.values()) == 60:
            break
    assert assignment is not None and list(assignment.partitions) == [0, 1]
    for partition in (0, 1):
        assert got[partition] == [b"p%d-%d" % (partition, n) for n in range(30)]
    groups = tidelog_pb2_grpc.GroupsStub(broker.channel)
    deadline = time.monotonic() + 10
    while True:
        offsets = groups.FetchOffsets(pb.FetchOffsetsRequest(group_id="py-batch-group"),
                                      timeout=RPC_TIMEOUT).offsets
        if [(o.partition, o.offset) for o in offsets] == [(0, 30), (1, 30)]:
            break
        assert time.monotonic() < deadline, offsets
        time.sleep(0.05)
    stream.cancel()


def test_a_plain_pattern_subscription_reads_stored_batches_naming_their_topics(
        broker: Broker) -> None:
    """SubscribeBatches by topic_pattern without a group, from a grpcio client: the
    TopicsChanged event first, then stored batches whose position names their topic; a
    topic created later that matches comes in with another TopicsChanged, and a topic
    that does not match is never read."""
    admin = broker.admin
    for name in ("pyb.a", "pyb-other"):
        admin.CreateTopic(pb.CreateTopicRequest(name=name, partitions=1), timeout=RPC_TIMEOUT)
    now = int(time.time() * 1000)

    def publish(topic: str, count: int) -> None:
        broker.publisher.PublishBatch(
            pb.PublishBatchRequest(
                topic=topic, partition=0,
                batch=encode_batch([{"value": b"%s-%d" % (topic.encode(), n)}
                                    for n in range(count)], now),
                ack=pb.ACK_LEVEL_DURABLE),
            timeout=RPC_TIMEOUT)

    publish("pyb.a", 20)
    publish("pyb-other", 5)
    stream = broker.consumer.SubscribeBatches(pb.SubscribeRequest(
        topic_pattern=r"pyb\..*", max_batch_messages=6,
        start=pb.StartPosition(earliest=pb.StartPosition.Earliest())), timeout=RPC_TIMEOUT)
    changes: list[list[str]] = []
    got: dict[str, list[bytes]] = {}
    created = False
    for event in stream:
        kind = event.WhichOneof("event")
        if kind == "topics_changed":
            changes.append(sorted(event.topics_changed.topics))
        elif kind == "batches":
            assert changes, "TopicsChanged comes before any data"
            topic = event.batches.position.topic
            assert topic.startswith("pyb."), topic
            for stored in event.batches.batches:
                got.setdefault(topic, []).extend(
                    r["value"] for r in delivered(stored, event.batches.now_ms))
        if not created and len(got.get("pyb.a", [])) == 20:
            admin.CreateTopic(pb.CreateTopicRequest(name="pyb.b", partitions=1),
                              timeout=RPC_TIMEOUT)
            publish("pyb.b", 8)
            created = True
        if len(got.get("pyb.b", [])) == 8:
            break
    stream.cancel()
    assert changes[0] == ["pyb.a"] and changes[-1] == ["pyb.a", "pyb.b"], changes
    assert got["pyb.a"] == [b"pyb.a-%d" % n for n in range(20)]
    assert got["pyb.b"] == [b"pyb.b-%d" % n for n in range(8)]
