#!/usr/bin/env bash
# Checks a live broker's /metrics in both its formats (issue 12): starts the debug
# tidelogd on loopback, publishes and consumes a little through the tidelog CLI (so
# counters, histograms, lag and errors have samples), then
# - scrapes as curl does (no Accept header: the classic text format, which is what
#   promtool reads) and fails on any problem `promtool check metrics` reports;
# - scrapes as Prometheus does (its Accept header), expects the OpenMetrics
#   Content-Type, and parses the text with the strict OpenMetrics parser of the
#   Python client library, requiring help text on every family.
# Then checks the shipped alert rules (deploy/prometheus/) with `promtool check rules`
# and runs their unit tests with `promtool test rules`.
# Run by .ci/run after the tests; `tests/promtool.sh --prepare` only fetches promtool and
# the parser (CI does that while it compiles).
#
# promtool comes from PATH, else from Debian's `prometheus` package, unpacked into
# $CARGO_TARGET_DIR/promtool/ (the package is not installed: its postinst would start
# a Prometheus server). The parser is Debian's python3-prometheus-client, run by
# Debian's /usr/bin/python3 (another python3 on PATH would not see it).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
started=$SECONDS

promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
    promtool=$target/promtool/usr/bin/promtool
    if [ ! -x "$promtool" ]; then
        echo "promtool: unpacking Debian's prometheus package into $target/promtool"
        mkdir -p "$target/promtool"
        download() { (cd "$target/promtool" && apt-get download -qq prometheus 2>/dev/null); }
        # Without package lists (a fresh machine) the download fails: update once.
        download || { apt-get update -qq && download; }
        dpkg-deb --fsys-tarfile "$target"/promtool/prometheus_*.deb |
            tar -x -C "$target/promtool" ./usr/bin/promtool
        rm -f "$target"/promtool/prometheus_*.deb
    fi
fi
promtool=$(realpath "$promtool")
"$promtool" --version 2>&1 | head -1
apt_install() {
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
command -v curl >/dev/null || apt_install curl
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || apt_install python3-prometheus-client
if [ "${1:-}" = --prepare ]; then
    echo "promtool and the OpenMetrics parser ready in $((SECONDS - started)) s"
    exit 0
fi

# TIDELOGD_BIN / TIDELOG_BIN choose other binaries, as for the integration tests.
if [ -z "${TIDELOGD_BIN:-}" ] || [ -z "${TIDELOG_BIN:-}" ]; then
    # The integration tests' commands (tests/src/lib.rs), one package each, which find
    # both up to date after `cargo test --workspace`; both bins in one command build
    # the two packages again (33 s on 2 cores).
    cargo build --quiet -p tidelog-server --bin tidelogd
    cargo build --quiet -p tidelog-tools --bin tidelog
fi
tidelogd=${TIDELOGD_BIN:-$target/debug/tidelogd}
tidelog=${TIDELOG_BIN:-$target/debug/tidelog}

work=$(mktemp -d)
broker=
cleanup() {
    if [ -n "$broker" ] && kill -0 "$broker" 2>/dev/null; then
        kill -KILL "$broker" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$tidelogd" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/data" \
    >"$work/stdout" 2>"$work/stderr" &
broker=$!
for _ in $(seq 300); do
    grep -q '^tidelogd ready ' "$work/stdout" 2>/dev/null && break
    kill -0 "$broker" 2>/dev/null || { cat "$work/stderr"; echo "tidelogd exited"; exit 1; }
    sleep 0.1
done
ready=$(grep '^tidelogd ready ' "$work/stdout") || {
    cat "$work/stderr"
    echo "tidelogd printed no ready line in 30 s"
    exit 1
}
field() { tr ' ' '\n' <<<"$ready" | sed -n "s/^$1=//p"; }
export TIDELOG_SERVER="http://$(field grpc)"
metrics="http://$(field metrics)/metrics"

"$tidelog" topic create orders --partitions 2 >/dev/null
seq 1 200 | "$tidelog" produce orders -q >/dev/null
"$tidelog" consume orders --group billing -n 150 >/dev/null
"$tidelog" consume orders -p 0 --from 0 -n 5 >/dev/null
# A failed RPC, so tidelog_rpc_errors_total has a sample too.
"$tidelog" consume no-such-topic -n 1 >/dev/null 2>&1 || true

curl -fsS "$metrics" >"$work/metrics.txt"
samples=$(grep -vc '^#' "$work/metrics.txt")
if ! "$promtool" check metrics <"$work/metrics.txt"; then
    echo "promtool check metrics failed on $metrics; the text was:"
    cat "$work/metrics.txt"
    exit 1
fi
for family in tidelog_publish_messages_total tidelog_rpc_errors_total \
    tidelog_fsync_duration_seconds tidelog_consumer_group_lag; do
    grep -q "^# TYPE $family " "$work/metrics.txt" || {
        echo "no $family in the scrape"
        exit 1
    }
done

# What Prometheus 2.42 sends.
accept='application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1'
curl -fsS -H "Accept: $accept" -D "$work/openmetrics.head" "$metrics" >"$work/openmetrics.txt"
grep -qi '^content-type: application/openmetrics-text; version=1.0.0; charset=utf-8' \
    "$work/openmetrics.head" || {
    echo "asked as Prometheus asks, /metrics answered with these headers:"
    cat "$work/openmetrics.head"
    exit 1
}
/usr/bin/python3 - "$work/openmetrics.txt" <<'EOF'
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families

with open(sys.argv[1], encoding="utf-8") as text:
    families = list(text_string_to_metric_families(text.read()))
for family in families:
    if not family.documentation:
        sys.exit(f"OpenMetrics: {family.name} has no help text")
print(f"OpenMetrics parser: ok ({len(families)} families)")
EOF

kill -TERM "$broker"
wait "$broker" || { echo "tidelogd exited with $? after SIGTERM"; exit 1; }
broker=

# The shipped alert rules: valid, and their unit tests pass (deploy/prometheus/).
(cd deploy/prometheus && "$promtool" check rules tidelog-alerts.yml &&
    "$promtool" test rules tidelog-alerts.test.yml)
echo "promtool check metrics: ok ($samples samples), alert rules: ok; $((SECONDS - started)) s in all"
