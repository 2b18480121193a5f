#!/usr/bin/env bash
# bench/bandwidth.sh [--seconds N] [--rates "5000 50000"]
#
# How closely a network's <bandwidth> holds TCP to its rate. For each rate (kB/s, as
# libvirt writes `average`), a NAT network limited to it both ways, a guest namespace on
# its bridge by veth, and iperf3 (Debian package iperf3) for N seconds from the guest to
# the host (outbound: the bridge's ingress, through its IFB device) and back (inbound: the
# bridge's egress HTB class), leaving out the first 2 s: outbound lets a second's worth of
# the average through at once (libvirt's default burst), which would count as more than the
# rate in a short run. The same network without limits gives the ceiling in the same run. Prints the throughput in kB/s and as a share of the rate; a share far from
# 100 % means the shaper's buckets or queue are wrong for TCP. Inside a private namespace
# (sandbox.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=5 rates="5000 50000"

if [ "${1:-}" = --inside ]; then
  seconds=$2 rates=$3
  work=$(mktemp -d /run/bandwidth-bench.XXXXXX)
  ip netns add bw-guest
  ip -n bw-guest link set lo up
  # measure RATE (empty: no limit): prints `inbound_kBps outbound_kBps`.
  measure() {
    local bandwidth=""
    [ -n "$1" ] && bandwidth="<bandwidth><inbound average='$1'/><outbound average='$1'/></bandwidth>"
    cat >"$work/net.xml" <<XML
<network>
  <name>bw</name>
  <forward mode='nat'/>
  <bridge name='vbrbw' stp='off'/>
  $bandwidth
  <ip address='10.201.0.1' netmask='255.255.255.0'/>
</network>
XML
    $BENCH_CLI net-create "$work/net.xml" >/dev/null
    ip link add bw-h type veth peer name bw-g netns bw-guest
    ip link set bw-h master vbrbw up
    ip -n bw-guest addr add 10.201.0.2/24 dev bw-g
    ip -n bw-guest link set bw-g up
    iperf3 --server --one-off --bind 10.201.0.1 --daemon --logfile "$work/server.log"
    sleep 0.3
    # Guest to host, then host to guest (-R); the receiver's count, in kB/s.
    local out in
    out=$(ip netns exec bw-guest iperf3 --client 10.201.0.1 --time "$seconds" --omit 2 --json |
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8000))')
    iperf3 --server --one-off --bind 10.201.0.1 --daemon --logfile "$work/server.log"
    sleep 0.3
    in=$(ip netns exec bw-guest iperf3 --client 10.201.0.1 --time "$seconds" --omit 2 --reverse --json |
      python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8000))')
    $BENCH_CLI net-destroy bw >/dev/null
    ip link del bw-h
    echo "$in $out"
  }
  read -r in out <<<"$(measure "")"
  echo "unlimited_inbound_kBps $in"
  echo "unlimited_outbound_kBps $out"
  for rate in $rates; do
    read -r in out <<<"$(measure "$rate")"
    echo "rate_${rate}_inbound_kBps $in"
    echo "rate_${rate}_outbound_kBps $out"
  done
  ip netns del bw-guest
  exit 0
fi

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--rates \"R1 R2\"]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/bandwidth.sh: run as root (it creates namespaces)" >&2; exit 1; }
scripts/install-deps.sh iperf3
cargo build --release --bins -q
export BENCH_BIN=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release
out=$(mktemp)
bench/sandbox.sh kvnet -- "$0" --inside "$seconds" "$rates" | tee "$out"

python3 - "$out" "$rates" <<'PY'
import sys
figures = dict(line.split() for line in open(sys.argv[1]) if line.strip())
print(f"\nTCP through a network limited to <bandwidth> average (kB/s), {'both ways'}:")
print(f"{'limit':>12} {'inbound':>12} {'share':>7} {'outbound':>12} {'share':>7}")
print(f"{'none':>12} {figures['unlimited_inbound_kBps']:>12} {'':>7} {figures['unlimited_outbound_kBps']:>12}")
for rate in sys.argv[2].split():
    inbound = float(figures[f"rate_{rate}_inbound_kBps"])
    outbound = float(figures[f"rate_{rate}_outbound_kBps"])
    print(f"{rate:>12} {inbound:>12.0f} {inbound / float(rate):>7.0%} {outbound:>12.0f} {outbound / float(rate):>7.0%}")
PY
