#!/bin/bash
# Batch-form consume with two tidelogd builds taking turns on one data directory:
# MESSAGES x 100 B on 2 partitions are published once (by the first build), then each
# round reads them all with 2 consumers (SubscribeBatches), once per build, each on a
# freshly started broker. Prints the rate and the broker's CPU per message (utime +
# stime over the read), and the load. Used for the allocator change (BENCHMARKS.md,
# "Allocator").
#
#   benches/ab-consume.sh OLD_RELEASE_DIR NEW_RELEASE_DIR [MESSAGES] [ROUNDS]
#   e.g. benches/ab-consume.sh /tmp/before target/release 20000000 3
set -u
OLD=$(realpath "$1"); NEW=$(realpath "$2"); N=${3:-20000000}; ROUNDS=${4:-3}
CLI=$NEW/tidelog
DATA=$(mktemp -d); trap 'rm -rf "$DATA"' EXIT
tick=$(getconf CLK_TCK)
start() { # release dir
  "$1/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7435 --metrics-listen 127.0.0.1:0 > "$DATA/log" 2>&1 &
  pid=$!; sleep 1.5
}
start "$OLD"
"$CLI" bench produce --server http://127.0.0.1:7435 --topic ab --keep --producers 2 --partitions 2 \
  --stream --batch-wire --batch 1000 --message-size 100 --messages "$N" --fsync never --ack written > /dev/null 2>&1
kill $pid; wait $pid 2>/dev/null
for r in $(seq "$ROUNDS"); do for build in "$OLD" "$NEW"; do
  start "$build"
  a=$(awk '{print $14+$15}' /proc/$pid/stat)
  rate=$("$CLI" bench consume --server http://127.0.0.1:7435 --topic ab --keep --consumers 2 --partitions 2 \
    --batch-wire --batch 1000 --message-size 100 --messages "$N" 2>&1 | awk '/consumers total/{print $6}')
  b=$(awk '{print $14+$15}' /proc/$pid/stat)
  echo "$build: $rate msg/s, broker $(( (b-a)*1000000000/tick/N )) ns/msg, load $(cut -d' ' -f1 /proc/loadavg)"
  kill $pid; wait $pid 2>/dev/null
done; done
