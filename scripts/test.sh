#!/usr/bin/env bash
# Runs every test egressd has, as CI does: format, lints, the committed eBPF
# object against a fresh build, and the whole test suite (unit, property,
# explicit-mode end to end, privileged eBPF end to end as root, and the policy
# service against a real PostgreSQL that this script starts and stops).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
if [ "$(id -u)" = 0 ]; then
  scripts/install-deps.sh
else
  scripts/install-deps.sh || echo "(continuing: privileged and PostgreSQL tests will say what they skip)"
fi

step "PostgreSQL for the service tests"
if [ -z "${EGRESSD_TEST_DATABASE_URL:-}" ] && [ -x scripts/postgres-test.sh ]; then
  if url=$(scripts/postgres-test.sh start); then
    export EGRESSD_TEST_DATABASE_URL="$url"
    trap 'scripts/postgres-test.sh stop >/dev/null 2>&1 || true' EXIT
    echo "database: $EGRESSD_TEST_DATABASE_URL"
  else
    echo "could not start PostgreSQL" >&2
    [ "${CI:-}" = true ] && exit 1
  fi
fi

# Every step runs even when an earlier one failed, so one red run names every
# failure; the script fails at the end if any step did.
failed=()
check() {
  local name=$1; shift
  step "$name"
  if ! "$@"; then
    failed+=("$name")
  fi
}

ebpf_check() {
  if command -v clang-19 >/dev/null 2>&1; then
    cargo xtask ebpf-check
  elif [ "${CI:-}" = true ]; then
    echo "clang-19 missing in CI" >&2; return 1
  else
    echo "skipped: clang-19 not installed (scripts/install-deps.sh installs it)"
  fi
}

check "cargo fmt --check" cargo fmt --all -- --check
check "cargo clippy --all-targets -- -D warnings" \
  cargo clippy --workspace --all-targets --locked -- -D warnings
check "committed eBPF object matches its source" ebpf_check
check "cargo build (the end-to-end tests run the real binary)" \
  cargo build --workspace --bins --locked
# --no-fail-fast: every test binary runs even when an earlier one failed.
check "cargo test --workspace" \
  cargo test --workspace --locked --no-fail-fast -- --test-threads="${EGRESSD_TEST_THREADS:-2}"

if [ ${#failed[@]} -gt 0 ]; then
  printf '\n==> failed steps:\n' >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\n==> every step passed\n'
