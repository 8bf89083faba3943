#!/usr/bin/env bash
# The Python (grpcio) client tests: stubs generated from the .proto alone, run with
# pytest against the real tidelogd. CI runs this after `cargo test --workspace`.
#
#   tests/python/run.sh [PYTEST ARGS...]      e.g. -k read_budget, -x, -v
#   tests/python/run.sh --prepare             only step 1, the Python environment (CI
#                                             fetches it while it compiles)
#
# Environment:
#   TIDELOGD_BIN      the broker to test. Default: ${CARGO_TARGET_DIR:-target}/debug/tidelogd,
#                     brought up to date first with `cargo build -p tidelog-server --bin tidelogd`.
#   CARGO_TARGET_DIR  also holds the Python environment: $CARGO_TARGET_DIR/python-venv
#                     (default target/python-venv), reused while requirements.txt is unchanged.
#   PYTHON            the interpreter that creates it (default python3, 3.9 or newer).
#   TIDELOG_PY_SEED   seed of the random-sizes test (default fixed; a failure prints it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
start=$SECONDS

fail() {
  echo "tests/python/run.sh: $*" >&2
  exit 1
}

target="${CARGO_TARGET_DIR:-target}"
case "$target" in
  /*) ;;
  *) target="$root/$target" ;;
esac
mkdir -p "$target"
env_dir="$target/python-venv"
requirements="$here/requirements.txt"
stamp="$env_dir/requirements.txt"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null ||
  fail "'$python' not found: install Python 3.9+ or set PYTHON=/path/to/python3"

pip_install() { # INTERPRETER [PIP ARGS...]
  local interpreter="$1"
  shift
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore \
    "$interpreter" -m pip install -q "$@" -r "$requirements" ||
    fail "pip install -r $requirements failed (no network or no PyPI access? a proxy needs HTTPS_PROXY); fix that and run again"
}

# 1. The Python environment: a venv when the venv module works, otherwise (e.g.
#    Debian without python3-venv) the same packages installed with `pip --target`
#    into $env_dir/site, which touches neither the system nor the user site.
if [[ -f "$stamp" ]] && cmp -s "$requirements" "$stamp"; then
  echo "== python: reusing $env_dir"
else
  echo "== python: creating $env_dir"
  rm -rf "$env_dir"
  if "$python" -m venv "$env_dir" >/dev/null 2>&1 && [[ -x "$env_dir/bin/python" ]]; then
    pip_install "$env_dir/bin/python"
  else
    echo "   '$python -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv);" \
      "falling back to pip install --target $env_dir/site"
    rm -rf "$env_dir"
    "$python" -m pip --version >/dev/null 2>&1 ||
      fail "neither '$python -m venv' nor '$python -m pip' works: install python3-venv or python3-pip"
    mkdir -p "$env_dir/site"
    pip_install "$python" --target "$env_dir/site"
  fi
  cp "$requirements" "$stamp"
fi
if [[ -x "$env_dir/bin/python" ]]; then
  py="$env_dir/bin/python"
  pythonpath=""
else
  py="$python"
  pythonpath="$env_dir/site"
fi

if [[ "${1:-}" == --prepare ]]; then
  echo "== python: environment ready in $((SECONDS - start)) s"
  exit 0
fi

# 2. The broker. Without TIDELOGD_BIN, cargo brings the debug build up to date (a
#    no-op when it is), so the tests never run a stale broker.
if [[ -n "${TIDELOGD_BIN:-}" ]]; then
  [[ -x "$TIDELOGD_BIN" ]] || fail "TIDELOGD_BIN=$TIDELOGD_BIN is not an executable file"
  bin="$TIDELOGD_BIN"
else
  command -v cargo >/dev/null ||
    fail "cargo not found: install Rust, or set TIDELOGD_BIN to a tidelogd binary"
  echo "== cargo build -p tidelog-server --bin tidelogd"
  cargo build --quiet -p tidelog-server --bin tidelogd ||
    fail "cargo build of tidelogd failed (see above)"
  bin="$target/debug/tidelogd"
  [[ -x "$bin" ]] || fail "$bin missing after cargo build"
fi

# 3. Stubs from the .proto, in a temporary directory removed on exit (never committed).
gen="$(mktemp -d "${TMPDIR:-/tmp}/tidelog-py-gen.XXXXXX")"
trap 'rm -rf "$gen"' EXIT
PYTHONPATH="$pythonpath" "$py" -m grpc_tools.protoc \
  -I "$root/proto/proto" \
  --python_out="$gen" --grpc_python_out="$gen" \
  "$root/proto/proto/tidelog/v1/tidelog.proto" ||
  fail "generating the Python stubs from proto/proto/tidelog/v1/tidelog.proto failed (see above)"

# 4. pytest. Exit status 5 (no tests collected) counts as a failure.
echo "== pytest against $bin"
set +e
PYTHONPATH="$gen${pythonpath:+:$pythonpath}" TIDELOGD_BIN="$bin" PYTHONDONTWRITEBYTECODE=1 \
  "$py" -m pytest -p no:cacheprovider -o tmp_path_retention_policy=failed \
  -q -ra --durations=5 "$here" "$@"
status=$?
set -e
echo "== python client tests: pytest exit status $status after $((SECONDS - start)) s"
if [[ $status -eq 5 ]]; then
  fail "pytest collected no tests (a test file renamed, or -k matching nothing?)"
fi
exit "$status"
