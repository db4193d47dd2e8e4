#!/usr/bin/env bash
# Sets up this Debian 12 machine (as root), builds Ferry, and runs `ferry demo`: a server and
# two agents on loopback, the test guest migrated A -> B -> A while it dirties memory.
# Extra arguments go to `ferry demo` (e.g. --json, --workload-rate 50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh release
exec ./target/release/ferry demo "$@"
