#!/bin/bash
# A/B of publish between two builds in one sitting: each run on a fresh data directory,
# the two brokers alternating. Prints seconds for the messages and broker CPU per message.
#
#   benches/ab-publish.sh BEFORE_RELEASE_DIR AFTER_RELEASE_DIR [MESSAGES]
#   e.g. git worktree add /tmp/before 0f13b22 && (cd /tmp/before && cargo build --release)
#        benches/ab-publish.sh /tmp/before/target/release target/release
set -u
BEFORE=${1:?before release dir}; AFTER=${2:?after release dir}; N=${3:-2000000}
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
run() { # label bin-dir args...
  local label=$1 dir=$2; shift 2
  rm -rf "$DATA/d"
  nice -n -10 "$dir/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7430 --metrics-listen 127.0.0.1:0 > "$DATA/$label.log" 2>&1 &
  local pid=$!; sleep 1
  local a=$(awk '{print $14+$15}' /proc/$pid/stat)
  local out=$(nice -n -10 "$dir/tidelog" bench produce --server http://127.0.0.1:7430 "$@" 2>&1)
  local b=$(awk '{print $14+$15}' /proc/$pid/stat)
  local ticks=$(getconf CLK_TCK)
  echo "$label $* :: $(echo "$out" | awk '/producers total/{print $5" s, "$6" msg/s"}'), broker $(( (b-a)*1000000000/ticks/N )) ns/msg, $(echo "$out" | grep -o 'validation: [a-zA-Z]*')"
  kill $pid; wait $pid 2>/dev/null
}
for r in 1 2; do
  for args in "--producers 2 --stream --messages $N" "--producers 2 --stream --messages $N --fsync never --ack written" "--producers 1 --messages $N"; do
    run before "$BEFORE" $args
    run after "$AFTER" $args
  done
done
