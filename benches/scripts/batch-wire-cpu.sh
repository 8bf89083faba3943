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
cpu() { awk '{print $14, $15}' "/proc/$pid/stat"; }
measure() { # LABEL ARGS...
  local label=$1
  shift
  local before after
  read -r user0 sys0 < <(cpu)
  local out
  out=$("$tidelog" bench "$@" 2>&1)
  read -r user1 sys1 < <(cpu)
  local total valid
  total=$(echo "$out" | grep -E '^(producers|consumers) +total' | tr -s ' ' | head -1)
  valid=$(echo "$out" | grep -o 'validation: [a-z]*')
  local n
  n=$(echo "$total" | awk '{print $3}')
  awk -v l="$label" -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) -v n="$n" -v hz="$tck" -v r="$total" -v v="$valid" \
    'BEGIN { printf "%-24s broker CPU %5.0f ns/msg (user %4.0f, sys %4.0f) | %s | %s\n", l, (u + s) * 1e9 / hz / n, u * 1e9 / hz / n, s * 1e9 / hz / n, r, v }'
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
