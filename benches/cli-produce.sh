#!/bin/bash
# `tidelog produce` of a file with two builds taking turns on one broker: 1,000,000 lines
# of 100 B (no dedup window), then 100,000 lines ID:VALUE with --id-separator (a 1h
# window). Prints each run's summary, the client's CPU and the broker's CPU.
#
#   benches/cli-produce.sh OLD_RELEASE_DIR NEW_RELEASE_DIR
#   e.g. benches/cli-produce.sh /tmp/before target/release
set -u
OLD=$(realpath "$1")/tidelog; NEW=$(realpath "$2")/tidelog; D=$(realpath "$2")/tidelogd
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
python3 -c "
import sys
with open('lines.txt', 'w') as f:
    for i in range(1_000_000): f.write('x' * 100 + '\n')
with open('ids.txt', 'w') as f:
    for i in range(100_000): f.write(f'id-{i:07}:' + 'x' * 90 + '\n')
"
rm -rf data; mkdir data
$D --data-dir data --listen 127.0.0.1:17420 --metrics-listen 127.0.0.1:17421 > broker.log 2>&1 &
BPID=$!
sleep 1
S="--server http://127.0.0.1:17420"
ticks() { awk '{print $14+$15}' /proc/$BPID/stat; }
n=0
run() { local label=$1 bin=$2 file=$3 window=$4; shift 4; n=$((n+1)); local topic=t$n
  $NEW $S topic create $topic --dedup-window $window >/dev/null
  local b0=$(ticks)
  /usr/bin/time -f "%e s, client user %U sys %S" $bin $S produce $topic --file $file --quiet "$@" 2>&1 | tr '\n' ' '
  local b1=$(ticks); echo "broker cpu $(( (b1-b0)*10 )) ms  [$label $file]"; }
for i in 1 2 3; do run old $OLD lines.txt off; run new $NEW lines.txt off; done
for i in 1 2; do run old $OLD ids.txt 1h --id-separator :; run new $NEW ids.txt 1h --id-separator :; done
kill $BPID; wait $BPID 2>/dev/null
