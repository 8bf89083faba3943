#!/usr/bin/env bash
# What --auth and TLS cost: alternating runs of `tidelog bench produce` (publish on
# streams) and `tidelog bench consume`, tidelogd plaintext without auth (off), with
# --auth and the bench's token (auth: the bootstrap admin token, plus 100 rules of
# other principals so every check scans a realistic rule list), and with TLS as well
# (tls: --tls-cert/--tls-key from tests/make-certs.sh, https:// with --ca-file, and the
# token), and with TLS and quotas the bench never reaches (quota: as tls, plus `tidelog
# quota set` of publish and consume bytes and requests per second for the bench's
# principal, so every call and delivery is paced without waiting). The consume run reads the topic the produce run kept. Prints rate and
# tidelogd CPU per message (utime+stime from /proc/<pid>/stat, fields 14+15) per run.
#   benches/auth-cost.sh [ROUNDS] [MESSAGES] [MODES] [BENCH_FLAGS]
#   defaults: 3, 2000000, "off auth", ""; e.g. issue 17's TLS cost in batch form:
#   benches/auth-cost.sh 2 4000000 "off tls" --batch-wire
# Needs release binaries: cargo build --release -p tidelog-server -p tidelog-tools
set -euo pipefail
rounds=${1:-3}
messages=${2:-2000000}
modes=${3:-off auth}
shift $(( $# < 3 ? $# : 3 ))
flags=("$@")
certs=$(mktemp -d)
trap 'rm -rf "$certs"' EXIT
case " $modes " in *" tls "* | *" quota "*) "$(dirname "$0")/../tests/make-certs.sh" "$certs" > /dev/null ;; esac
bin=${CARGO_TARGET_DIR:-target}/release
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_one() { # mode round
  local mode=$1 dir
  dir=$(mktemp -d)
  local args=(--data-dir "$dir/data" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-level warn)
  [ "$mode" != off ] && args+=(--auth)
  case $mode in tls | quota) args+=(--tls-cert "$certs/server.pem" --tls-key "$certs/server.key") ;; esac
  "$bin/tidelogd" "${args[@]}" > "$dir/out" 2> "$dir/err" &
  local pid=$!
  for _ in $(seq 100); do grep -q ready "$dir/out" 2>/dev/null && break; sleep 0.1; done
  local server
  local scheme=http
  unset TIDELOG_TOKEN TIDELOG_CA_FILE
  if [ "$mode" = tls ] || [ "$mode" = quota ]; then
    scheme=https
    export TIDELOG_CA_FILE=$certs/ca.pem
  fi
  server=$scheme://$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$dir/out")
  if [ "$mode" != off ]; then
    export TIDELOG_TOKEN
    TIDELOG_TOKEN=$(cat "$dir/data/bootstrap-admin.token")
    for i in $(seq 100); do
      "$bin/tidelog" --server "$server" acl add --principal "svc-$i" --resource "topic:app-$i.*" --operation publish > /dev/null
    done
  fi
  if [ "$mode" = quota ]; then
    "$bin/tidelog" --server "$server" quota set --principal admin --publish-bytes 100GiB \
      --consume-bytes 100GiB --requests 100000000 > /dev/null
  fi
  local before after rate
  before=$(cpu $pid)
  rate=$("$bin/tidelog" --server "$server" bench produce --producers 2 --stream --fsync never --ack written --messages "$messages" --topic auth-bench --keep --json "${flags[@]}" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["producers"]["total"]["messages_per_s"]))')
  after=$(cpu $pid)
  echo "produce $mode $2 rate=$rate msg/s cpu_us_per_msg=$(python3 -c "print(round(($after-$before)/$tick*1e6/$messages, 3))")"
  before=$(cpu $pid)
  rate=$("$bin/tidelog" --server "$server" bench consume --topic auth-bench --messages "$messages" --json "${flags[@]}" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["consumers"]["total"]["messages_per_s"]))')
  after=$(cpu $pid)
  echo "consume $mode $2 rate=$rate msg/s cpu_us_per_msg=$(python3 -c "print(round(($after-$before)/$tick*1e6/$messages, 3))")"
  kill -TERM $pid; wait $pid || true
  rm -rf "$dir"
}
for round in $(seq "$rounds"); do
  for mode in $modes; do
    run_one "$mode" "$round"
  done
done
