#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a Debian 12 machine, as root: installs what it
# needs (QEMU 10 from bookworm-backports, busybox-static, ...), checks formatting and lints,
# builds, builds the test guest image, and runs every test (unit, property, and end-to-end
# on real QEMU with a real Linux guest under TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

bash scripts/setup.sh

echo "== format and lints" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build" >&2
bash scripts/build.sh debug

echo "== test guest image" >&2
./target/debug/ferry image build

echo "== tests" >&2
cargo test --workspace

echo "== all tests passed in $(( $(date +%s) - started ))s" >&2
