#!/usr/bin/env bash
# Install what the tests need (coturn's client tools) and run every test.
# Usage: bash tests/run.sh   (from any directory)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# tests/coturn_interop.rs runs turnutils_stunclient, turnutils_uclient and
# turnutils_peer from the Debian package coturn (its turnserver is never
# started).
need_coturn=0
for t in turnutils_stunclient turnutils_uclient turnutils_peer; do
    if ! command -v "$t" >/dev/null 2>&1; then
        need_coturn=1
    fi
done
if [ "$need_coturn" = 1 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        SUDO="sudo"
    fi
    echo "==> installing coturn (client tools for the interop tests)"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends coturn
fi
for t in turnutils_stunclient turnutils_uclient turnutils_peer; do
    command -v "$t" >/dev/null 2>&1 || { echo "error: $t not found after installing coturn" >&2; exit 1; }
done

echo "==> cargo test --all-targets --no-fail-fast"
cargo test --all-targets --no-fail-fast
