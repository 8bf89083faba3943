#!/bin/bash
# A/B of the `tidelog bench` client between two builds of `tidelog`, against one
# tidelogd binary, in one sitting: each run on a fresh broker and data directory, the two
# clients alternating. Prints msg/s, broker CPU per message (/proc/PID/stat fields
# 14+15) and client CPU per message (the bench's own figure) for produce (streams,
# unary, batch form) and consume (plain, batch form; the topic filled beforehand, outside
# the measured run).
#
#   benches/ab-client.sh TIDELOGD BEFORE_TIDELOG AFTER_TIDELOG [MESSAGES] [ROUNDS]
#   SPECS="produce --producers 1 --messages 2000000" benches/ab-client.sh ...   (some runs;
#   several separated by ';')
#   PARTITIONS=8 SPECS="consume --topic ab --partitions 8 --consumers 8 --batch-wire ..."
#   (the consume topic filled with that many partitions; default 1)
#   PORT=7441 ...   (the broker's port; default 7431)
set -u
BROKER=${1:?tidelogd}; BEFORE=${2:?before tidelog}; AFTER=${3:?after tidelog}
N=${4:-2000000}; ROUNDS=${5:-2}
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
PORT=${PORT:-7431}
PARTITIONS=${PARTITIONS:-1}
SERVER=http://127.0.0.1:$PORT
TICKS=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
summary() { # json-file messages
  python3 - "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); n = int(sys.argv[2])
side = (d["consumers"] or d["producers"])["total"]
rate = side["messages_per_s"]
cpu = d.get("client_cpu_seconds") or 0
print(f'{rate/1e6:.2f}M msg/s, client {cpu*1e9/n:.0f} ns/msg, valid {d["validation"]["ok"]}', end="")
EOF
}
run() { # label tidelog kind args...
  local label=$1 bin=$2 kind=$3; shift 3
  rm -rf "$DATA/d"
  "$BROKER" --data-dir "$DATA/d" --listen 127.0.0.1:$PORT --metrics-listen 127.0.0.1:0 > "$DATA/broker.log" 2>&1 &
  local pid=$!; sleep 1
  if [ "$kind" = consume ]; then
    "$BIN_FILL" bench produce --server $SERVER --topic ab --keep --producers 2 --stream \
      --partitions "$PARTITIONS" \
      --messages $N --fsync never --ack written > /dev/null 2>&1
  fi
  local a=$(cpu $pid)
  "$bin" --json bench $kind --server $SERVER "$@" > "$DATA/out.json" 2> "$DATA/err"
  local b=$(cpu $pid)
  echo "$label $kind $* :: $(summary "$DATA/out.json" $N 2>/dev/null || head -c 300 "$DATA/err"), broker $(( (b-a)*1000000000/TICKS/N )) ns/msg"
  kill $pid; wait $pid 2>/dev/null
}
BIN_FILL=$BEFORE
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
SPECS=${SPECS:-"produce --producers 2 --stream --messages $N;produce --producers 1 --messages $N;produce --producers 2 --stream --batch-wire --messages $N;consume --topic ab --consumers 1 --messages $N;consume --topic ab --consumers 1 --batch-wire --messages $N"}
IFS=';' read -ra LIST <<< "$SPECS"
for r in $(seq "$ROUNDS"); do
  for spec in "${LIST[@]}"; do
    run before "$BEFORE" $spec
    run after "$AFTER" $spec
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
