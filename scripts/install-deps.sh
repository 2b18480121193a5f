#!/usr/bin/env bash
# Installs the Debian packages kvnet's build, demo and tests use, when missing, and
# any packages named as arguments (the benchmarks' tools). Safe to run repeatedly;
# needs root (apt-get).
set -euo pipefail

packages=(
  nftables                   # nft CLI: the tests read the ruleset back with it
  iproute2                   # ip netns / ip -j for test namespaces and assertions
  busybox isc-dhcp-client    # DHCP clients for the DHCP tests
  dhcpcd-base                # dhcpcd, a second DHCPv6 client for the DHCPv6 tests
  dnsutils dnsmasq-base      # dig for the DNS tests; dnsmasq as their upstream server
  procps psmisc              # ps/pkill in scripts
  systemd util-linux         # systemd-analyze and setpriv: the unit's checks (tests/net_confined.rs)
  python3                    # a TUNSETIFF as another user (tests/net_ports.rs); the benchmarks' reports
  gcc libc6-dev              # the linker and libc.a of the static (+crt-static) binaries
  "$@"
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# No Rust toolchain on PATH (rustup's or another): Debian's own. bookworm's rustc is
# 1.63, too old for edition 2024; its security suite carries a current one as -web.
if ! command -v cargo >/dev/null 2>&1; then
  missing+=(rustc-web cargo-web rustfmt-web rust-web-clippy)
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The workspace's rust-version. Debian's main suite has rustc-web 1.85: without the
# security suite in the sources, apt installs that, and the build would fail obscurely.
need=1.88
have=$(rustc --version 2>/dev/null | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "${have:-0}" | sort -V | head -1)" != "$need" ]; then
  echo "install-deps: Rust ${have:-(none)} is older than the $need kvnet needs; install rustup's, or add bookworm-security to apt's sources for rustc-web" >&2
  exit 1
fi
