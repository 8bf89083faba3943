#!/bin/bash
# A consumer group per message (Subscribe) against the same group in batch form
# (SubscribeBatches with a group): rate, broker CPU and bench-client CPU per message.
# One tidelogd on a fresh data directory, MESSAGES x 100 B on 4 partitions published
# first, then two rounds of both, 2 members each (each run a new group, from the start).
#
#   benches/ab-group.sh [RELEASE_DIR] [MESSAGES]
set -u
D=${1:-target/release}; N=${2:-2000000}
DATA=$(mktemp -d); trap 'rm -rf "$DATA"' EXIT
"$D/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7434 --metrics-listen 127.0.0.1:0 > "$DATA/log" 2>&1 &
pid=$!; sleep 1
"$D/tidelog" --server http://127.0.0.1:7434 bench produce --producers 2 --stream --fsync never --ack written --messages "$N" --topic gb --partitions 4 --keep --json > /dev/null 2>&1
tick=$(getconf CLK_TCK)
for r in 1 2; do for mode in "" "--batch-wire"; do
  a=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(/usr/bin/time -f "%U %S" -o "$DATA/time" "$D/tidelog" --server http://127.0.0.1:7434 bench consume --topic gb --messages "$N" --consumers 2 --group $mode --json 2>/dev/null)
  b=$(awk '{print $14+$15}' /proc/$pid/stat)
  rate=$(echo "$out" | python3 -c "import json,sys; d=json.JSONDecoder().raw_decode(sys.stdin.read())[0]; print(round(d['consumers']['total']['messages_per_s']))")
  client=$(tail -1 "$DATA/time" | awk -v n="$N" '{printf "%d", ($1+$2)*1e9/n}')
  echo "group ${mode:-per-message}: $rate msg/s, broker $(( (b-a)*1000000000/tick/N )) ns/msg, client $client ns/msg, load $(cut -d' ' -f1 /proc/loadavg)"
done; done
kill $pid; wait $pid 2>/dev/null
