#!/usr/bin/env bash
# Install what the tests need (Debian packages) and run every test.
# Usage: bash tests/run.sh   (from any directory; as root, or with sudo)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# package:file pairs. coturn: turnutils_stunclient, turnutils_uclient and
# turnutils_peer for tests/coturn_interop.rs (its turnserver is never
# started). chromium, chromium-driver: tests/demo_browser.rs and
# tests/demo_netns.rs drive headless Chromium through chromedriver.
# iptables, iproute2: demo_netns.rs builds NAT routers in network namespaces.
# systemd (systemd-analyze, systemd-sysusers) and strace: tests/systemd.rs
# checks the unit and the server's system calls; openssl: tests/tls.rs makes
# certificates and probes TLS versions.
# prometheus: tests/dashboard.rs runs the Grafana dashboard's queries in it.
# man-db (man) and groff-base (groff, which man runs): tests/manpages.rs
# renders the man pages with warnings on; zsh and fish: tests/completions.rs
# loads the completion scripts in them (bash is there already).
# dpkg-dev (dpkg-shlibdeps) and binutils (strip): cargo-deb computes the
# package's Depends and strips the binary for tests/package.rs.
# redis-server, redis-tools (redis-cli): tests/cluster_users.rs runs a Redis
# on a loopback port and changes users in it as an operator would.
# squid: tests/demo_proxy.rs puts the browsers behind a proxy that refuses
# WebSocket, as corporate proxies do.
# haproxy: tests/proxy_protocol.rs puts it in front of ferroturn with
# send-proxy and send-proxy-v2.
# clang, llvm, libbpf-dev (BPF headers), libelf-dev, zlib1g-dev, pkg-config:
# the cargo feature `fastpath` compiles the XDP program and a vendored
# libbpf (tests/fastpath.rs and the program's unit tests). ethtool (veth
# GRO and checksum settings) and bpftool (detaching the program's links):
# tests/fastpath.rs.
# libssl-dev, pkg-config: the build links the system OpenSSL (TURN over DTLS).
need=()
for pb in coturn:/usr/bin/turnutils_uclient \
          chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver \
          iptables:/usr/sbin/iptables iproute2:/usr/sbin/ip \
          systemd:/usr/bin/systemd-analyze strace:/usr/bin/strace openssl:/usr/bin/openssl \
          prometheus:/usr/bin/prometheus \
          man-db:/usr/bin/man groff-base:/usr/bin/groff zsh:/usr/bin/zsh fish:/usr/bin/fish \
          dpkg-dev:/usr/bin/dpkg-shlibdeps binutils:/usr/bin/strip \
          redis-server:/usr/bin/redis-server redis-tools:/usr/bin/redis-cli \
          squid:/usr/sbin/squid haproxy:/usr/sbin/haproxy \
          clang:/usr/bin/clang llvm:/usr/bin/llvm-strip libbpf-dev:/usr/include/bpf/bpf_helpers.h \
          libelf-dev:/usr/include/libelf.h zlib1g-dev:/usr/include/zlib.h pkg-config:/usr/bin/pkg-config \
          ethtool:/usr/sbin/ethtool bpftool:/usr/sbin/bpftool \
          libssl-dev:/usr/include/openssl/ssl.h; do
    [ -e "${pb#*:}" ] || need+=("${pb%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
    S=""
    [ "$(id -u)" != 0 ] && S="sudo"
    echo "==> installing ${need[*]}"
    $S apt-get update
    $S env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
for t in turnutils_stunclient turnutils_uclient turnutils_peer chromium chromedriver iptables ip \
         systemd-analyze strace openssl prometheus man groff zsh fish dpkg-shlibdeps strip \
         redis-server redis-cli /usr/sbin/squid /usr/sbin/haproxy; do
    command -v "$t" >/dev/null 2>&1 || { echo "error: $t not found after installing packages" >&2; exit 1; }
done

# The JavaScript clients the demo tests drive (sockjs-client, both stompjs
# packages, ws), at the versions tests/js/package-lock.json pins. Install
# scripts stay off: the only ones are optional native speed-ups of `ws`.
command -v npm >/dev/null 2>&1 || { echo "error: npm not found" >&2; exit 1; }
echo "==> npm ci (tests/js)"
(cd tests/js && npm ci --ignore-scripts --no-audit --no-fund)

# The Python clients (aiostun), pinned with hashes in
# tests/py/requirements.txt, in a virtual environment of their own.
echo "==> pip install (tests/py/.venv)"
python3 -m venv tests/py/.venv
tests/py/.venv/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tests/py/requirements.txt

rc=0
# cargo-deb, at the version packaging/build-deb.sh pins (installed once):
# tests/package.rs builds the Debian package with that script.
bash packaging/build-deb.sh --tools || rc=1
echo "==> cargo test --all-targets --features fastpath --no-fail-fast"
cargo test --all-targets --features fastpath --no-fail-fast || rc=1

# Every fuzz target for a bounded time (6 minutes in all); a crash fails CI.
echo "==> fuzz targets"
bash tests/fuzz.sh || rc=1
exit $rc
