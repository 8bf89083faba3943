#!/bin/bash
# The client library's queue consumer examples against a fresh broker: 10 s of one
# example, N copies at once, on a backlog of MESSAGES (default 200,000) x 100 B in one
# partition; prints the acks each copy made, with the load beside them.
#
#   benches/queue-consumer-example.sh BINDIR EXAMPLE N LABEL
#   BINDIR holds tidelogd, tidelog and the example (target/release plus
#   target/release/examples copied together); EXAMPLE is queue_consumer or
#   queue_consumer_concurrent.
set -u
BIN=$1; EX=$2; N=$3; LABEL=$4
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
"$BIN/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7436 --metrics-listen 127.0.0.1:0 > "$DATA/log" 2>&1 &
PID=$!; sleep 1
"$BIN/tidelog" --server http://127.0.0.1:7436 bench produce --topic demo --keep \
  --messages "${MESSAGES:-200000}" --producers 1 --partitions 1 > "$DATA/produce" 2>&1 \
  || { echo "produce failed:"; tail -5 "$DATA/produce"; }
L0=$(cut -d' ' -f1-3 /proc/loadavg); P0=$(awk '/some/{print $2}' /proc/pressure/cpu)
CHILDREN=()
for i in $(seq "$N"); do
  timeout -s INT 10 "$BIN/$EX" http://127.0.0.1:7436 demo > "$DATA/out.$i" 2>&1 &
  CHILDREN+=($!)
done
wait "${CHILDREN[@]}"
L1=$(cut -d' ' -f1-3 /proc/loadavg); P1=$(awk '/some/{print $2}' /proc/pressure/cpu)
COUNTS=""
for i in $(seq "$N"); do COUNTS="$COUNTS $(grep -c ': Acked' "$DATA/out.$i")"; done
echo "$LABEL $EX x$N acked in 10 s:$COUNTS | load before $L0, after $L1 | cpu-some before $P0 after $P1"
kill $PID; wait $PID 2>/dev/null
