#!/bin/bash
# The broker's and the client's CPU a message in batch form, one build: a fresh tidelogd
# for each run, K actors on K partitions, 100 B messages, 1,000 a batch. `consume` first
# fills the topic (not counted), then reads it all; `publish` publishes non-durably
# (--stream --fsync never --ack written). Each run starts after a sync, on a fresh data
# directory. Prints the rate (messages/s over the slowest actor), the broker's utime +
# stime over the measured run, and the measured `tidelog bench` process's utime + stime
# (its whole run), per message; the broker's figure includes its flush threads, whose
# share (the fdatasync of each sealed segment: writeback the kernel's flusher would
# otherwise do outside the process) is printed beside it. CLIENT_DIR=DIR takes
# `tidelog` from another build (an A/B of clients against one broker). PRETOUCH=G
# touches G GiB of anonymous memory and frees it right before the measured run: on a VM
# that hands free memory back to the host (virtio-balloon free page reporting), the run's
# page cache then grows into memory the host still backs (BENCHMARKS.md, "The machine").
# PIN=1 publishes with `--pin`: each producer to its own partition, as the issue's
# setup and Iggy's pinned producers (default: each producer goes round the partitions).
# Used for BENCHMARKS.md, "2026-12-06, 05:48-07:03: Without tonic's copies",
# "2026-12-06, 09:10-09:58", "2026-12-06, 14:37-15:25" and the sections after it.
#
#   benches/broker-cpu.sh RELEASE_DIR consume|publish [ACTORS] [MESSAGES] [ROUNDS]
#   e.g. benches/broker-cpu.sh target/release consume 1 10000000 2
#        CLIENT_DIR=/tmp/old/target/release benches/broker-cpu.sh target/release publish 2
set -u
TL=$(realpath "$1"); KIND=$2; K=${3:-1}; N=${4:-10000000}; ROUNDS=${5:-1}
CLIENT=$(realpath "${CLIENT_DIR:-$1}")/tidelog
DATA=$(mktemp -d); trap 'rm -rf "$DATA"' EXIT
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
# utime alone: the broker's own code (and libc), without the kernel's share.
ucpu() { awk '{print $14}' "/proc/$1/stat"; }
# The flush threads' utime + stime (threads named tidelog-flush-N).
flush_cpu() {
  local sum=0 t
  for t in /proc/$1/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in
      tidelog-flush-*) sum=$((sum + $(awk '{print $14+$15}' "$t/stat"))) ;;
    esac
  done
  echo $sum
}
# PRETOUCH=G: touch G GiB of anonymous memory, one byte a page, and free it.
pretouch() {
  [ "${PRETOUCH:-0}" = 0 ] && return
  python3 -c 'import mmap, sys
n = int(sys.argv[1]) << 30
m = mmap.mmap(-1, n)
for off in range(0, n, 4096):
    m[off] = 1' "$PRETOUCH"
}
common=(--server http://127.0.0.1:7436 --topic vs --keep --partitions "$K" --batch-wire
  --batch 1000 --message-size 100 --messages "$N")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  rm -rf "$DATA/d"
  sync
  "$TL/tidelogd" --data-dir "$DATA/d" --listen 127.0.0.1:7436 --metrics-listen 127.0.0.1:0 > "$DATA/log" 2>&1 &
  pid=$!; sleep 1
  if [ "$KIND" = consume ]; then
    "$CLIENT" bench produce "${common[@]}" --producers "$K" --stream --fsync never \
      --ack written > /dev/null 2>&1
    sync
    pretouch
    a=$(cpu $pid); ua=$(ucpu $pid); fa=$(flush_cpu $pid)
    # `times` in the subshell: its children's user and system time, the client's.
    ( "$CLIENT" --json bench consume "${common[@]}" --consumers "$K" > "$DATA/out.json" 2>&1
      times > "$DATA/times" )
    section=consumers
  else
    pretouch
    a=$(cpu $pid); ua=$(ucpu $pid); fa=$(flush_cpu $pid)
    ( "$CLIENT" --json bench produce "${common[@]}" --producers "$K" --stream \
      --fsync never --ack written ${PIN:+--pin} > "$DATA/out.json" 2>&1
      times > "$DATA/times" )
    section=producers
  fi
  b=$(cpu $pid); ub=$(ucpu $pid); fb=$(flush_cpu $pid)
  kill $pid; wait $pid 2>/dev/null
  python3 - "$DATA/out.json" "$section" "$a" "$b" "$tick" "$N" "$KIND" "$K" "$round" "$DATA/times" "$fa" "$fb" "$ua" "$ub" <<'PY'
import json, re, sys
path, section, a, b, tick, n, kind, k, rnd, times, fa, fb, ua, ub = sys.argv[1:]
total = json.load(open(path))[section]["total"]
ns = (int(b) - int(a)) * 1e9 / int(tick) / int(n)
user = (int(ub) - int(ua)) * 1e9 / int(tick) / int(n)
flush = (int(fb) - int(fa)) * 1e9 / int(tick) / int(n)
# The second line of `times`: children's user and system time, as "XmY.YYYs".
spans = re.findall(r"(\d+)m([\d.]+)s", open(times).read().splitlines()[1])
client = sum(int(m) * 60 + float(s) for m, s in spans) * 1e9 / int(n)
print(f"round {rnd}: {kind}, {k} actors: {total['messages_per_s'] / 1e6:.2f}M msg/s, broker {ns:.0f} ns/msg ({user:.0f} user, {flush:.0f} flushing), client {client:.0f} ns/msg")
PY
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
