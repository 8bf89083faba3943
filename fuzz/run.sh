#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) on the stable toolchain
# (RUSTC_BOOTSTRAP lets cargo-fuzz's -Z flags through). The seeds in corpus/<target>
# are read, never written: new inputs go to a scratch directory.
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# FUZZ_SANITIZER picks cargo-fuzz's sanitizer: `none` (default) or `address`. The
# targets are safe Rust over safe Rust (the one unsafe module, mmap, is not reached),
# so AddressSanitizer finds little more than panics, bounds and allocation limits
# already show, while building every target with it takes over twice as long on 2
# cores (the whole server stack, for proto_requests and h2_request).
#
# FUZZ_BUILD picks the build: `release` (default: optimized, for long runs) or `dev`
# (fuzz/Cargo.toml's dev profile: builds in 4.5 minutes on 2 cores instead of 9.5, and
# runs 10-20 times fewer inputs a second). CI runs the dev build 10 s a target: every
# seed and the shallow crashes; the long runs are local, in release.
#   fuzz/run.sh 600                          # every target, 10 minutes each
#   FUZZ_SANITIZER=address fuzz/run.sh 600 proto_requests
#   FUZZ_BUILD=dev fuzz/run.sh 10            # what CI runs
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
case "${FUZZ_BUILD:-release}" in
  release) build=(--release) ;;
  dev) build=(--dev) ;;
  *) echo "FUZZ_BUILD must be release or dev, not ${FUZZ_BUILD}" >&2; exit 2 ;;
esac
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (about a minute)"
  cargo install cargo-fuzz --locked
fi
targets=("$@")
export RUSTC_BOOTSTRAP=1
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
  # Every target in one cargo build, which links them side by side; each run below
  # then finds its binary up to date.
  echo "== building every fuzz target (${FUZZ_BUILD:-release}, sanitizer: $sanitizer)"
  started=$SECONDS
  if ! cargo fuzz build "${build[@]}" --sanitizer "$sanitizer" >"${TMPDIR:-/tmp}/fuzz-build.log" 2>&1; then
    tail -n 60 "${TMPDIR:-/tmp}/fuzz-build.log"
    echo "building the fuzz targets failed" >&2
    exit 1
  fi
  echo "built in $((SECONDS - started)) s"
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  [ -n "$target" ] || continue
  mkdir -p "$scratch/$target"
  echo "== fuzz $target for ${seconds}s (sanitizer: $sanitizer)"
  log="$scratch/$target.log"
  if ! cargo fuzz run "${build[@]}" --sanitizer "$sanitizer" "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed: the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E "^#[0-9]+ +DONE|^Done [0-9]+ runs" "$log" || tail -n 3 "$log"
done
