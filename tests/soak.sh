#!/usr/bin/env bash
# Soak: produce + subscribe on a TTL topic at a fixed rate for MINUTES, sampling the
# broker's RSS every 5 s (soak::soak_produce_subscribe_with_ttl). Errors must
# be 0; the last line gives RSS at start and end.
#   tests/soak.sh [MINUTES (default 10)] [MESSAGES_PER_SECOND (default 2000)]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
rate=${2:-2000}
cargo build --release -p tidelog-server
TIDELOG_SOAK_MINUTES=$minutes TIDELOG_SOAK_RATE=$rate \
TIDELOGD_BIN="$PWD/target/release/tidelogd" \
  cargo test -p tidelog-tests --test integration -- \
    --ignored --exact soak::soak_produce_subscribe_with_ttl --nocapture
