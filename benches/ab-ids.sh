#!/bin/bash
# Publish with and without message ids (issue 14: the rate with ids must be at least 85%
# of the rate without), alternating in one sitting, each run on a fresh data directory.
# Prints seconds and rate for the messages and the broker's and the bench's CPU per
# message.
#
#   benches/ab-ids.sh [RELEASE_DIR] [MESSAGES] [ROUNDS]
#   EXTRA="--batch-wire" benches/ab-ids.sh ...   (more bench flags for every run: the batch form)
#   BYTES_CONTROL=1 benches/ab-ids.sh ...        (the control: non-durable only, 100 B values,
#                                                 117 B values without ids, 100 B with ids,
#                                                 so the 17 bytes an id adds are told apart
#                                                 from the id's own cost)
set -u
DIR=${1:-target/release}; N=${2:-2000000}; ROUNDS=${3:-3}
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
run() { # label args...
  local label=$1; shift
  rm -rf "$DATA/d"
  nice -n -10 "$DIR/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7431 --metrics-listen 127.0.0.1:0 > "$DATA/$label.log" 2>&1 &
  local pid=$!; sleep 1
  local a=$(awk '{print $14+$15}' /proc/$pid/stat)
  # The bench's own CPU: the subshell's children's times, from `times`.
  local out=$( (nice -n -10 "$DIR/tidelog" bench produce --server http://127.0.0.1:7431 --producers 2 --stream --messages "$N" ${EXTRA:-} "$@" 2>&1; times) )
  local b=$(awk '{print $14+$15}' /proc/$pid/stat)
  local ticks=$(getconf CLK_TCK)
  local client=$(echo "$out" | tail -1 | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.0f", (u[1]*60+u[2]+s[1]*60+s[2])*1e9/'"$N"' }')
  echo "$label $* :: $(echo "$out" | awk '/producers total/{print $5" s, "$6" msg/s"}'), broker $(( (b-a)*1000000000/ticks/N )) ns/msg, client $client ns/msg, $(echo "$out" | grep -o 'validation: [a-zA-Z]*'), load $(cut -d' ' -f1 /proc/loadavg), cpu-some $(awk '/some/{print $2}' /proc/pressure/cpu)"
  kill $pid; wait $pid 2>/dev/null
}
if [ -n "${BYTES_CONTROL:-}" ]; then
  for r in $(seq "$ROUNDS"); do
    run nd100 --fsync never --ack written
    run nd117 --fsync never --ack written --message-size 117
    run nd100ids --fsync never --ack written --ids
  done
  exit 0
fi
for r in $(seq "$ROUNDS"); do
  run durable
  run durable --ids
  run non-durable --fsync never --ack written
  run non-durable --fsync never --ack written --ids
done
