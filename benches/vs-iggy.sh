#!/bin/bash
# Issue 16's side-by-side: Iggy (server and iggy-bench built from apache/iggy at tag
# server-0.8.0) and tidelog (batch form) in one sitting, 100 B messages, 1,000 per
# request, each producer or consumer on its own partition (Iggy: its own stream). Each
# run on a fresh data directory; rates are total messages / the slowest actor's time,
# and the server's CPU per message is read from /proc/PID/stat (utime + stime).
#
#   benches/vs-iggy.sh IGGY_SOURCE_DIR TIDELOG_RELEASE_DIR [ROUNDS]
#   e.g. benches/vs-iggy.sh /work/iggy target/release 2
# The durable runs also print the bytes tidelog wrote to its log per second and, when
# TIDELOG_RELEASE_DIR holds `disk-ceiling` (`cargo build --release -p tidelog-benches
# --bin disk-ceiling`), this disk's own fdatasync'd bandwidth, measured in the data
# directory right after them: the issue's durable target is 3x Iggy or 90% of that
# bandwidth, whichever is lower.
# Build Iggy first: apt-get install libhwloc-dev libudev-dev pkg-config, then in its
# source root `cargo +stable build --release -p server -p iggy-bench` (about 8 minutes
# on 2 cores).
set -u
IGGY=${1:?iggy source dir}; TL=${2:?tidelog release dir}; ROUNDS=${3:-1}
# SCALE=10 divides every run by 10 (a quick check of the script itself); LONGER=3
# makes every run 3 times as long (on a machine where tidelog's runs take a second,
# and Iggy's swing with their length).
SCALE=${SCALE:-1}
LONGER=${LONGER:-1}
# tidelog's producers publish with --pin (each to its own partition, as this script's
# setup says and Iggy's pinned producers do); PIN=0 has each go round the partitions,
# as the sittings before 2026-12-06 20:00 did.
PIN_FLAG=--pin
[ "${PIN:-1}" = 0 ] && PIN_FLAG=
DATA=$(mktemp -d)
trap 'pkill -f "target/release/iggy-server" 2>/dev/null; rm -rf "$DATA"' EXIT
TICKS=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
per_msg() { echo $(( ($2 - $1) * 1000000000 / TICKS / $3 )); }

# Each run starts with nothing left to write back: the previous run's data directory
# is deleted when it ends (its dirty pages are dropped, not written), and a sync
# flushes the rest. Without this the kernel wrote the last run's gigabyte out during
# the next one (the other system's, in turn), which on 2 cores took a quarter off
# either side's rate at random.
settle() {
  sync
  sleep 1
}

iggy_server() { # durable?
  rm -rf "$DATA/iggy"
  settle
  local extra=()
  if [ "$1" = durable ]; then
    extra=(IGGY_SYSTEM_PARTITION_MESSAGES_REQUIRED_TO_SAVE=1 IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC=true)
  fi
  # All of the subshell's output goes to the log, so $(iggy_server) does not wait on it.
  (cd "$IGGY" && exec env "${extra[@]}" IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy \
    IGGY_SYSTEM_PATH="$DATA/iggy" IGGY_TCP_ADDRESS=127.0.0.1:8090 IGGY_HTTP_ENABLED=false \
    IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
    target/release/iggy-server) > "$DATA/iggy.log" 2>&1 < /dev/null &
  sleep 3
  pgrep -f "target/release/iggy-server" | head -1
}

# total messages / slowest actor's seconds, from iggy-bench's per-actor lines.
iggy_rate() { # log total
  python3 - "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
times = [float(t) for t in re.findall(r"(?:sent|polled|received) [^\n]*? in ([0-9.]+) s,", text)]
print(f"{int(sys.argv[2]) / max(times):.0f}" if times else "0")
PY
}

iggy_run() { # label durable? command actors batches
  local label=$1 durable=$2 command=$3 actors=$4 batches=$5
  local pid=$(iggy_server "$durable")
  local total=$(( actors * batches * 1000 ))
  if [ "$command" = pinned-consumer ]; then
    (cd "$IGGY" && target/release/iggy-bench -m 100 -P 1000 -b "$batches" pinned-producer \
      --producers "$actors" --streams "$actors" tcp --server-address 127.0.0.1:8090 > /dev/null 2>&1)
    settle
  fi
  local a=$(cpu $pid)
  local flag=--producers
  [ "$command" = pinned-consumer ] && flag=--consumers
  (cd "$IGGY" && target/release/iggy-bench -m 100 -P 1000 -b "$batches" "$command" \
    $flag "$actors" --streams "$actors" tcp --server-address 127.0.0.1:8090 > "$DATA/bench.log" 2>&1)
  local b=$(cpu $pid)
  echo "iggy    $label: $(iggy_rate "$DATA/bench.log" $total) msg/s, server $(per_msg $a $b $total) ns/msg"
  pkill -f "target/release/iggy-server"; sleep 1
  rm -rf "$DATA/iggy"
}

# The disk's fdatasync'd bandwidth in the data directory, in MB/s.
disk_ceiling() {
  if [ -x "$TL/disk-ceiling" ]; then
    echo "disk    fdatasync'd bandwidth: $("$TL/disk-ceiling" "$DATA" 256 | sed -n 's/.*: \([0-9.]*\) MiB\/s.*/\1/p' | awk '{printf "%.1f MB/s (%s MiB/s)", $1 * 1.048576, $1}')"
  else
    echo "disk    (no $TL/disk-ceiling: cargo build --release -p tidelog-benches --bin disk-ceiling)"
  fi
}

tidelog_run() { # label kind actors total args...
  local label=$1 kind=$2 actors=$3 total=$4; shift 4
  rm -rf "$DATA/tl"
  settle
  "$TL/tidelogd" --data-dir "$DATA/tl" --listen 127.0.0.1:7431 --metrics-listen 127.0.0.1:0 > "$DATA/tl.log" 2>&1 &
  local pid=$!; sleep 1
  local flag=--producers
  if [ "$kind" = consume ]; then
    flag=--consumers
    # The topic is filled before the measured run (its CPU is not counted).
    "$TL/tidelog" bench produce --server http://127.0.0.1:7431 --topic vs --keep \
      --producers "$actors" --partitions "$actors" --stream --batch-wire --batch 1000 \
      --message-size 100 --messages "$total" --fsync never --ack written > /dev/null 2>&1
    settle
  fi
  # Kept, so its log's size can be read after the run.
  set -- --topic vs --keep "$@"
  local a=$(cpu $pid)
  "$TL/tidelog" --json bench "$kind" --server http://127.0.0.1:7431 $flag "$actors" \
    --partitions "$actors" --batch-wire --batch 1000 --message-size 100 --messages "$total" "$@" > "$DATA/tl.json" 2>&1
  local b=$(cpu $pid)
  # Bytes of the topic's segments (the log as written: records, batch headers).
  local log_bytes=$(find "$DATA/tl/topics" -name '*.log' -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {printf "%.0f\n", s}')
  python3 - "$DATA/tl.json" "$label" "$a" "$b" "$TICKS" "$total" "$kind" "$log_bytes" <<'PY'
import json, sys
path, label, a, b, ticks, total, kind, log_bytes = sys.argv[1:]
try:
    d = json.load(open(path))
except Exception:
    print(f"tidelog {label}: failed: {open(path).read()[:300]}"); sys.exit()
side = d["consumers" if kind == "consume" else "producers"]["total"]
cpu_ns = (int(b) - int(a)) * 1e9 / int(ticks) / int(total)
rate = side['messages_per_s']
written = ""
if kind == "produce" and int(log_bytes) > 0:
    # The log bytes of the measured messages, at the measured rate.
    written = f", log {int(log_bytes) / int(total) * rate / 1e6:.1f} MB/s"
print(f"tidelog {label}: {rate:.0f} msg/s, server {cpu_ns:.0f} ns/msg{written}, valid {d['validation']['ok']}")
PY
  kill $pid; wait $pid 2>/dev/null
  rm -rf "$DATA/tl"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
  for k in 1 2 8; do
    per=$(( 20000 * LONGER / (k > 1 ? k : 2) / SCALE ))
    total=$(( per * 1000 * k ))
    iggy_run "non-durable publish, $k producers" non pinned-producer "$k" "$per"
    tidelog_run "non-durable publish, $k producers" produce "$k" "$total" --stream --fsync never --ack written $PIN_FLAG
  done
  for k in 1 2; do
    per=$(( 2000 * LONGER / k / SCALE ))
    total=$(( per * 1000 * k ))
    iggy_run "durable publish (ack after fsync), $k producers" durable pinned-producer "$k" "$per"
    tidelog_run "durable publish (ack after fsync), $k producers" produce "$k" "$total" --stream $PIN_FLAG
  done
  disk_ceiling
  for k in 1 2 8; do
    per=$(( 20000 * LONGER / (k > 1 ? k : 2) / SCALE ))
    total=$(( per * 1000 * k ))
    iggy_run "consume, $k consumers" non pinned-consumer "$k" "$per"
    tidelog_run "consume, $k consumers" consume "$k" "$total"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
