#!/usr/bin/env bash
# Broker CPU per message, per-message API vs record batches on the wire, alternating
# A/B runs against one running tidelogd (CPU from /proc/PID/stat fields 14+15).
#   benches/scripts/batch-wire-cpu.sh TIDELOGD_PID [ROUNDS] [MESSAGES]
# TIDELOG_SERVER names the broker; `tidelog` must be on PATH (or TIDELOG=path).
set -euo pipefail
pid=$1
rounds=${2:-3}
messages=${3:-2000000}
tidelog=${TIDELOG:-tidelog}
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
measure() { # LABEL ARGS...
  local label=$1
  shift
  local before after
  before=$(cpu)
  local out
  out=$("$tidelog" bench "$@" 2>&1)
  after=$(cpu)
  local total valid
  total=$(echo "$out" | grep -E '^(producers|consumers) +total' | tr -s ' ' | head -1)
  valid=$(echo "$out" | grep -o 'validation: [a-z]*')
  awk -v l="$label" -v t=$((after - before)) -v n="$messages" -v hz="$tck" -v r="$total" -v v="$valid" \
    'BEGIN { printf "%-26s broker CPU %6.1f ns/msg | %s | %s\n", l, t * 1e9 / hz / n, r, v }'
}
"$tidelog" bench produce --topic bw-read --keep --messages "$messages" --stream \
  --fsync never --ack written --batch 1000 >/dev/null
for round in $(seq "$rounds"); do
  echo "== round $round"
  common=(--messages "$messages" --stream --fsync never --ack written --batch 1000 --in-flight 8)
  measure "publish per-message" produce "${common[@]}"
  measure "publish batch-wire" produce "${common[@]}" --batch-wire
  measure "publish batch-wire zstd" produce "${common[@]}" --batch-wire --compression zstd
  measure "subscribe per-message" consume --topic bw-read --messages "$messages"
  measure "subscribe batch-wire" consume --topic bw-read --messages "$messages" --batch-wire
  measure "fetch per-message" consume --topic bw-read --messages "$messages" --fetch
  measure "fetch batch-wire" consume --topic bw-read --messages "$messages" --fetch --batch-wire
done
