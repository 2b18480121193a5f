#!/usr/bin/env bash
# The whole test suite: every tier this machine can run (pure, netns, kvm).
# Privileged tests call testkit::require(..), which prints `SKIPPED <test>: <need>: <why>`;
# set KVNET_TEST_REQUIRE=all to turn any skip into a failure (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  scripts/install-deps.sh
else
  echo "not root: privileged tiers will be skipped (see the SKIPPED lines)" >&2
fi

# A full disk shows up as a linker crash deep in the build; say it plainly first.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((3 * 1024 * 1024)) ] && [ ! -d target ]; then
  echo "warning: $((free_kib / 1024)) MiB free here; a clean build and test run needs about 3 GiB (about 2 GB of target/, and the crates cargo downloads)" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The cargo-fuzz targets are a crate of their own (libfuzzer), outside the workspace:
# check they still build against the library they drive.
cargo check --manifest-path netd/fuzz/Cargo.toml --bins
cargo check --manifest-path vmm/fuzz/Cargo.toml --bins
# nextest gives each test its own process, a timeout (.config/nextest.toml: a hung
# guest or daemon fails its test instead of hanging the run) and the serial KVM group.
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "cargo-nextest missing: installing it from crates.io" >&2
  cargo install --locked cargo-nextest >&2 || true
fi
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest unavailable: running cargo test, without timeouts or the KVM group" >&2
  cargo test --workspace --no-fail-fast "$@"
fi
