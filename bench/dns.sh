#!/usr/bin/env bash
# bench/dns.sh [--seconds N] [--reps N] [--vs-libvirt]
#
# DNS query rate benchmark, measured the way the libvirt baseline was
# (/work/shared/reference/anchors/bench-dns.sh): a NAT network with a <dns><host>
# entry (anchost, anchost.anc.test -> 10.200.0.50), a client namespace on the bridge
# by veth, and `dnsperf` (Debian package dnsperf, defaults: 1 client, 100 queries
# outstanding) asking "anchost A" and "anchost.anc.test A" for N seconds, REPS times:
# local answers only (the sandbox has an empty resolv.conf and no route out). Then the
# average latency at a fixed 1000 queries/s, and the rate for a name the network
# forwards (`www.fwd.test A`, to a dnsmasq on 127.0.0.53 answering with TTL 300, the
# network's <forwarder>): what a server's cache of upstream answers gives. For kvnet (and with --vs-libvirt for
# Debian's libvirt + dnsmasq in the same run), inside private namespaces (sandbox.sh).
# Prints the median queries/s, latency, lost queries, the CPU use of the server and of
# dnsperf, the ratio to the target (>= 170 k qps, twice the 85 k measured for libvirt
# here) and to libvirt.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10 reps=3 vs_libvirt=0

# Inside the sandbox: the measured scenario for one target, `key value` lines.
if [ "${1:-}" = --inside ]; then
  seconds=$2 reps=$3
  work=$(mktemp -d /run/dns-bench.XXXXXX)
  cat >"$work/svc.xml" <<'XML'
<network>
  <name>anc-svc</name>
  <bridge name='vbrsvc'/>
  <forward mode='nat'/>
  <dns>
    <forwarder addr='127.0.0.53'/>
    <host ip='10.200.0.50'>
      <hostname>anchost</hostname>
      <hostname>anchost.anc.test</hostname>
    </host>
  </dns>
  <ip address='10.200.0.1' netmask='255.255.0.0'>
    <dhcp>
      <range start='10.200.0.10' end='10.200.255.250'/>
    </dhcp>
  </ip>
</network>
XML
  # The upstream for forwarded names.
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root --pid-file= \
    --listen-address=127.0.0.53 --bind-interfaces --address=/fwd.test/10.9.9.9 --local-ttl=300 &
  upstream=$!
  $BENCH_CLI net-define "$work/svc.xml" >/dev/null
  $BENCH_CLI net-start anc-svc >/dev/null
  ip netns add dns-cli
  ip link add dns-h1 type veth peer name dns-c1 netns dns-cli
  ip link set dns-h1 master vbrsvc up
  ip -n dns-cli link set lo up
  ip -n dns-cli link set dns-c1 up
  ip -n dns-cli addr add 10.200.0.5/16 dev dns-c1
  for _ in $(seq 400); do [ "$(cat /sys/class/net/dns-h1/brport/state)" = 3 ] && break; sleep 0.02; done
  in_cli() { ip netns exec dns-cli "$@"; }
  # Both names must answer before anything is timed.
  for name_address in anchost=10.200.0.50 anchost.anc.test=10.200.0.50 www.fwd.test=10.9.9.9; do
    name=${name_address%=*} address=${name_address#*=}
    for _ in $(seq 50); do
      [ "$(in_cli dig +time=1 +tries=1 +short @10.200.0.1 "$name" A)" = "$address" ] && break
      sleep 0.1
    done
    [ "$(in_cli dig +time=1 +tries=1 +short @10.200.0.1 "$name" A)" = "$address" ] ||
      { echo "dns.sh: $BENCH_TARGET does not answer $name" >&2; exit 1; }
  done
  # The process answering port 53: kvnetd itself, or libvirt's dnsmasq.
  # (Not the upstream dnsmasq on 127.0.0.53.)
  if [ "$BENCH_TARGET" = kvnet ]; then server=$BENCH_DAEMON_PID; else server=$(pgrep -f 'conf-file=/var/lib/libvirt/dnsmasq/' | head -1); fi
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
  printf 'anchost A\nanchost.anc.test A\n' >"$work/queries"
  for rep in $(seq "$reps"); do
    c0=$(cpu_ticks)
    # bash's `time` gives the load generator's own CPU use (%P: user + sys / real).
    TIMEFORMAT='client_cpu_pct %P'
    { time in_cli dnsperf -s 10.200.0.1 -d "$work/queries" -l "$seconds" >"$work/max$rep" 2>&1; } 2>"$work/client$rep"
    c1=$(cpu_ticks)
    awk '{printf "%s %.0f\n", $1, $2}' "$work/client$rep"
    awk '/Queries per second:/ {print "qps", $4}' "$work/max$rep"
    awk '/Average Latency/ {print "avg_latency_ms", $4 * 1000}' "$work/max$rep"
    awk '/Queries lost:/ {print "lost", $3}' "$work/max$rep"
    echo "server_cpu_pct $(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v s="$seconds" 'BEGIN {printf "%.0f", 100 * t / hz / s}')"
  done
  in_cli dnsperf -s 10.200.0.1 -d "$work/queries" -l "$seconds" -Q 1000 >"$work/q1000" 2>&1
  awk '/Average Latency/ {print "q1000_avg_latency_ms", $4 * 1000}' "$work/q1000"
  echo 'www.fwd.test A' >"$work/forwarded"
  in_cli dnsperf -s 10.200.0.1 -d "$work/forwarded" -l "$seconds" >"$work/fwd" 2>&1
  awk '/Queries per second:/ {print "fwd_qps", $4}' "$work/fwd"
  awk '/Average Latency/ {print "fwd_avg_latency_ms", $4 * 1000}' "$work/fwd"
  awk '/Queries lost:/ {print "fwd_lost", $3}' "$work/fwd"
  kill "$upstream"
  ip link del dns-h1
  ip netns del dns-cli
  $BENCH_CLI net-destroy anc-svc >/dev/null
  $BENCH_CLI net-undefine anc-svc >/dev/null
  rm -rf "$work"
  exit 0
fi

while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --vs-libvirt) vs_libvirt=1; shift ;;
    *) echo "usage: $0 [--seconds N] [--reps N] [--vs-libvirt]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/dns.sh: run as root (it creates namespaces)" >&2; exit 1; }
# The load generator is this benchmark's own need, not the project's.
tools=(dnsperf dnsmasq-base)
[ "$vs_libvirt" = 1 ] && tools+=(libvirt-daemon libvirt-clients iptables)
scripts/install-deps.sh "${tools[@]}"
cargo build --release --bins -q
export BENCH_BIN=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

bench/sandbox.sh kvnet -- "$PWD/bench/dns.sh" --inside "$seconds" "$reps" | tee "$out/kvnet"
if [ "$vs_libvirt" = 1 ]; then
  bench/sandbox.sh libvirt -- "$PWD/bench/dns.sh" --inside "$seconds" "$reps" | tee "$out/libvirt"
fi

python3 - "$out" "$vs_libvirt" "$(nproc)" <<'PY'
import sys, pathlib, statistics
out, vs, cpus = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
def load(name):
    p = out / name
    values = {}
    if p.exists():
        for line in p.read_text().splitlines():
            if line.strip():
                k, v = line.split()
                values.setdefault(k, []).append(float(v))
    return {k: statistics.median(v) for k, v in values.items()}
ours, lv = load("kvnet"), load("libvirt")
TARGET_QPS, LIBVIRT_MEASURED_QPS = 170_000, 85_000
rows = [
    ("qps", "queries/s (median)", "{:.0f}"),
    ("avg_latency_ms", "avg latency, 100 outstanding (ms)", "{:.3f}"),
    ("q1000_avg_latency_ms", "avg latency at 1000 q/s (ms)", "{:.3f}"),
    ("lost", "queries lost (median)", "{:.0f}"),
    ("server_cpu_pct", "server CPU (% of one core)", "{:.0f}"),
    ("client_cpu_pct", "dnsperf CPU (% of one core)", "{:.0f}"),
    ("fwd_qps", "forwarded name: queries/s", "{:.0f}"),
    ("fwd_avg_latency_ms", "forwarded name: avg latency (ms)", "{:.3f}"),
    ("fwd_lost", "forwarded name: queries lost", "{:.0f}"),
]
print()
print(f"machine: {cpus} CPUs; dnsperf runs on the same machine")
print(f"{'measure':36} {'kvnet':>10}" + (f" {'libvirt':>10} {'kvnet/libvirt':>14}" if vs else ""))
for key, label, fmt in rows:
    v = ours.get(key, float("nan"))
    row = f"{label:36} {fmt.format(v):>10}"
    if vs:
        l = lv.get(key, float("nan"))
        row += f" {fmt.format(l):>10} {v / l if l else float('nan'):14.2f}"
    print(row)
qps = ours.get("qps", 0.0)
print(f"target >= {TARGET_QPS} qps: {qps / TARGET_QPS:.2f} x target, "
      f"{qps / LIBVIRT_MEASURED_QPS:.2f} x the 85 k measured for libvirt/dnsmasq: "
      + ("met" if qps >= TARGET_QPS else "NOT met"))
PY
