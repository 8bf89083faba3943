#!/bin/bash
# Issue 15's filter target: a subscriber with a 1% header filter against one that
# receives everything, on one prefilled topic, builds taking turns. Each round, per
# release dir: start its tidelogd on the shared data directory, then a filtered, an
# unfiltered and a second filtered `bench consume` of every message: log messages per
# second of each. The first reader after a start also maps the segments' pages into the
# broker (page faults: 10-25% of a filtered read's time, under 2% of an unfiltered
# one's); the second filtered read finds them mapped, as the unfiltered one did, so
# "ratio" compares like with like and "first" is the cold case.
#
#   benches/ab-filter.sh DATA_DIR MESSAGES ROUNDS RELEASE_DIR...
#   e.g. benches/ab-filter.sh /tmp/pf 10000000 3 /tmp/before target/release
# The first run of a DATA_DIR prefills topic pb<MESSAGES> (the bench's producer; headers
# bench-pct 0-99), which takes a while; later runs reuse it (--keep).
set -u
DATA=$1; N=$2; ROUNDS=$3; shift 3
TOPIC=pb$N
rate() { python3 -c "import json,sys; d=json.JSONDecoder().raw_decode(sys.stdin.read())[0]; print(round(d['log']['messages_per_s']/1e6,2))"; }
for r in $(seq "$ROUNDS"); do
  for d in "$@"; do
    "$d/tidelogd" --data-dir "$DATA" --listen 127.0.0.1:7432 --metrics-listen 127.0.0.1:0 > "$DATA.log" 2>&1 &
    pid=$!; sleep 1
    f=$("$d/tidelog" --server http://127.0.0.1:7432 bench consume --messages "$N" --json --topic "$TOPIC" --keep --filter 'header.bench-pct == 7' 2>/dev/null | rate)
    p=$("$d/tidelog" --server http://127.0.0.1:7432 bench consume --messages "$N" --json --topic "$TOPIC" --keep 2>/dev/null | rate)
    g=$("$d/tidelog" --server http://127.0.0.1:7432 bench consume --messages "$N" --json --topic "$TOPIC" --keep --filter 'header.bench-pct == 7' 2>/dev/null | rate)
    echo "$d round $r: filtered ${f}M (first) ${g}M (again) plain ${p}M ratio $(python3 -c "print(round($f/$p,1))")x (first) $(python3 -c "print(round($g/$p,1))")x (again) load $(cut -d' ' -f1 /proc/loadavg)"
    kill $pid; wait $pid 2>/dev/null
  done
done
