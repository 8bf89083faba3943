#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) on the stable toolchain, with
# AddressSanitizer (RUSTC_BOOTSTRAP lets cargo-fuzz's -Z flags through). The seeds in
# corpus/<target> are read, never written: new inputs go to a scratch directory.
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Heavy targets depend on the whole server (tonic, prost, tokio): building one with
# AddressSanitizer takes 6-10 minutes on 2 cores. Without TARGET arguments they are
# skipped unless FUZZ_HEAVY=1; named on the command line they always run:
#   FUZZ_HEAVY=1 fuzz/run.sh 600          # every target, proto_requests included
#   fuzz/run.sh 600 proto_requests         # just that one
set -euo pipefail
cd "$(dirname "$0")"
heavy=(proto_requests)
seconds=${1:-30}
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (about 2.5 minutes)"
  cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
  if [ "${FUZZ_HEAVY:-0}" != 1 ]; then
    for skip in "${heavy[@]}"; do
      echo "== skip $skip (builds the whole server with ASan; FUZZ_HEAVY=1 runs it)"
      targets=("${targets[@]/$skip}")
    done
  fi
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  [ -n "$target" ] || continue
  mkdir -p "$scratch/$target"
  echo "== fuzz $target for ${seconds}s"
  log="$scratch/$target.log"
  if ! cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed: the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E "^#[0-9]+ +DONE|^Done [0-9]+ runs" "$log" || tail -n 3 "$log"
done
