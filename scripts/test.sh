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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "committed eBPF object matches its source"
if command -v clang-19 >/dev/null 2>&1; then
  cargo xtask ebpf-check
elif [ "${CI:-}" = true ]; then
  echo "clang-19 missing in CI" >&2; exit 1
else
  echo "skipped: clang-19 not installed (scripts/install-deps.sh installs it)"
fi

step "cargo build (the end-to-end tests run the real binary)"
cargo build --workspace --bins --locked

step "cargo test --workspace"
cargo test --workspace --locked -- --test-threads="${EGRESSD_TEST_THREADS:-2}"
