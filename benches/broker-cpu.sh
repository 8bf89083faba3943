#!/bin/bash
# The broker's CPU a message in batch form, one build: a fresh tidelogd for each run,
# K actors on K partitions, 100 B messages, 1,000 a batch. `consume` first fills the
# topic (not counted), then reads it all; `publish` publishes non-durably
# (--stream --fsync never --ack written). Prints the rate (messages/s over the slowest
# actor) and the broker's utime + stime over the measured run, per message. Used for
# BENCHMARKS.md, "2026-12-06, 05:48-07:03: Without tonic's copies".
#
#   benches/broker-cpu.sh RELEASE_DIR consume|publish [ACTORS] [MESSAGES] [ROUNDS]
#   e.g. benches/broker-cpu.sh target/release consume 1 10000000 2
set -u
TL=$(realpath "$1"); KIND=$2; K=${3:-1}; N=${4:-10000000}; ROUNDS=${5:-1}
DATA=$(mktemp -d); trap 'rm -rf "$DATA"' EXIT
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
common=(--server http://127.0.0.1:7436 --topic vs --keep --partitions "$K" --batch-wire
  --batch 1000 --message-size 100 --messages "$N")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  rm -rf "$DATA/d"
  "$TL/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7436 --metrics-listen 127.0.0.1:0 > "$DATA/log" 2>&1 &
  pid=$!; sleep 1
  if [ "$KIND" = consume ]; then
    "$TL/tidelog" bench produce "${common[@]}" --producers "$K" --stream --fsync never \
      --ack written > /dev/null 2>&1
    a=$(cpu $pid)
    "$TL/tidelog" --json bench consume "${common[@]}" --consumers "$K" > "$DATA/out.json" 2>&1
    section=consumers
  else
    a=$(cpu $pid)
    "$TL/tidelog" --json bench produce "${common[@]}" --producers "$K" --stream \
      --fsync never --ack written > "$DATA/out.json" 2>&1
    section=producers
  fi
  b=$(cpu $pid)
  kill $pid; wait $pid 2>/dev/null
  python3 - "$DATA/out.json" "$section" "$a" "$b" "$tick" "$N" "$KIND" "$K" "$round" <<'PY'
import json, sys
path, section, a, b, tick, n, kind, k, rnd = sys.argv[1:]
total = json.load(open(path))[section]["total"]
ns = (int(b) - int(a)) * 1e9 / int(tick) / int(n)
print(f"round {rnd}: {kind}, {k} actors: {total['messages_per_s'] / 1e6:.2f}M msg/s, broker {ns:.0f} ns/msg")
PY
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
