#!/usr/bin/env bash
# Builds Ferry: the workspace (profile $1: debug or release, default debug) and the guest
# workload, which runs inside the test VM and is therefore linked statically.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}

if ! command -v cargo >/dev/null 2>&1; then
  echo "build: cargo not found; Ferry needs Rust 1.85 or newer (https://rustup.rs)" >&2
  exit 1
fi

flags=()
[ "$profile" = release ] && flags+=(--release)
echo "build: ferry (${profile})" >&2
cargo build "${flags[@]}" --workspace --exclude ferry-guest
echo "build: ferry-guest (static, release)" >&2
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -p ferry-guest --release --target x86_64-unknown-linux-gnu
