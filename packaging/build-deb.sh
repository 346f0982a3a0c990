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

# The release build, with the kernel fast path built in (README, "Kernel
# fast path"): the packaged config leaves it off, and turning it on is a
# config key and a drop-in away, not a rebuild. The same build as the
# README's `cargo run --release --features fastpath`; cargo-deb only packs
# it (--no-build), so nothing is compiled twice. The feature compiles the
# XDP program with clang against libbpf-dev's headers and links libelf and
# zlib (their -dev packages; libelf1 and zlib1g then land in the
# package's Depends through dpkg-shlibdeps).
missing=()
for pb in clang:/usr/bin/clang libbpf-dev:/usr/include/bpf/bpf_helpers.h \
          libelf-dev:/usr/include/libelf.h zlib1g-dev:/usr/include/zlib.h \
          pkg-config:/usr/bin/pkg-config libssl-dev:/usr/include/openssl/ssl.h \
          dpkg-dev:/usr/bin/dpkg-shlibdeps binutils:/usr/bin/strip; do
    [ -e "${pb#*:}" ] || missing+=("${pb%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "error: the package build needs: sudo apt install ${missing[*]}" >&2
    exit 1
fi
cargo build --release --features fastpath --bin ferroturn >&2
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
