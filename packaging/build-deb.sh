#!/usr/bin/env bash
# Build the Debian package from the release build and print its path (the
# only line on stdout; cargo's output goes to stderr).
# Usage: bash packaging/build-deb.sh           (README, "Install from the package")
#        bash packaging/build-deb.sh --tools   only install cargo-deb (tests/run.sh)
# tests/package.rs builds the package with this script, so the README's
# command is the one the tests run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# cargo-deb, pinned: its maintainer-script fragments end up in the package.
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $cargo_deb_version"; then
    echo "==> cargo install cargo-deb $cargo_deb_version" >&2
    cargo install cargo-deb --locked --version "$cargo_deb_version" >&2
fi
[ "${1:-}" = --tools ] && exit 0

# The release build that `cargo run --release` uses too; cargo-deb only
# packs it (--no-build), so nothing is compiled twice.
cargo build --release --bin ferroturn >&2
# The man pages and completion scripts come from the binary itself (the
# same definitions as --help and the config parser); man pages gzipped as
# Debian's policy wants (-n: no time stamp, so builds are reproducible).
gen=target/release/package
rm -rf "$gen"
mkdir -p "$gen"
target/release/ferroturn man --dir "$gen" >/dev/null
gzip -9n "$gen/ferroturn.1" "$gen/ferroturn.toml.5"
for sh in bash zsh fish; do
    target/release/ferroturn completions "$sh" >"$gen/ferroturn.$sh"
done
deb=$(cargo deb --no-build)
[ -f "$deb" ] || { echo "error: cargo deb printed no package path: $deb" >&2; exit 1; }
echo "$deb"
