#!/bin/bash
# `tidelog bench queue --workers 4` with the delivery history on (the default) and off
# (`--history-retention 0`), alternating in one sitting, each run on a fresh broker and
# data directory; optionally two builds alternating too.
#
#   benches/ab-queue.sh ROUNDS RELEASE_DIR [RELEASE_DIR...]
set -u
ROUNDS=${1:-3}; shift
DIRS=("${@:-target/release}")
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
run() { # dir args...
  local dir=$1; shift
  rm -rf "$DATA/d"
  nice -n -10 "$dir/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7434 --metrics-listen 127.0.0.1:0 > "$DATA/log" 2>&1 &
  local pid=$!; sleep 1
  local out=$(nice -n -10 "$dir/tidelog" bench queue --server http://127.0.0.1:7434 --broker-pid $pid --workers 4 "$@" 2>&1)
  echo "$dir $* :: $(echo "$out" | grep -E '^deliver \+ ack|broker CPU|^validation|error' | tr -s ' ' | tr '\n' ';' | cut -c1-400) :: load $(cut -d' ' -f1 /proc/loadavg), cpu-some $(awk '/some/{print $2}' /proc/pressure/cpu)"
  kill $pid; wait $pid 2>/dev/null
}
for r in $(seq "$ROUNDS"); do
  for dir in "${DIRS[@]}"; do
    run "$dir"
    run "$dir" --history-retention 0
  done
done
