#!/usr/bin/env bash
# bench/dhcp.sh [--vs-libvirt] [--rates "1000 5000 10000 20000"] [--period S] [--runs N] [--lease-disk]
#
# DHCP benchmark. Measures, for kvnet (and with --vs-libvirt for Debian's libvirt 9 +
# dnsmasq in the same run, on the same machine), inside private namespaces (sandbox.sh):
#  - DORA throughput: kea's perfdhcp (package kea-admin) in a peer namespace behind a
#    veth on the bridge of a fresh /16 NAT network, at each offered rate for PERIOD
#    seconds, every exchange a new client (a new lease). perfdhcp always acts as a
#    relay agent on the network (giaddr = its own address), so replies go back to it
#    by unicast. Reports ACKs/s and the share of DISCOVERs that got no ACK (drops);
#  - lease wall time of a new client (fresh random MAC each run, no lease file: a full
#    DORA) for busybox udhcpc and ISC dhclient, median of RUNS, measured once the
#    client's bridge port is forwarding (with STP on a new port waits ~4 s first; that
#    wait is reported apart).
# Lease times are timed inside the client's namespace (client start to exit, hooks
# included), so entering the namespace (3-50 ms on a loaded machine) is not counted.
# libvirt runs with dnsmasq's `no-ping` option: its stock 3 s ping check before each
# new address makes udhcpc take ~3.1 s and perfdhcp get 5 OFFERs in 16 s (see
# shared/reference/baselines.md), which says nothing about the DHCP server itself.
# --lease-disk puts kvnet's lease journal on the root file system instead of the
# sandbox's tmpfs, so its fdatasync before each batch of ACKs is a real one (libvirt's
# dnsmasq runs with --leasefile-ro and syncs nothing).
# Prints the figures, the ratios to the targets, and the ratios to libvirt.
set -euo pipefail
cd "$(dirname "$0")/.."
rates="1000 5000 10000 20000" period=3 runs=20 vs_libvirt=0 lease_disk=0 inner=0
while [ $# -gt 0 ]; do
  case "$1" in
    --vs-libvirt) vs_libvirt=1; shift ;;
    --rates) rates=$2; shift 2 ;;
    --period) period=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --lease-disk) lease_disk=1; shift ;;
    --inner) inner=1; shift ;;
    *) echo "usage: $0 [--vs-libvirt] [--rates \"R1 R2 ...\"] [--period S] [--runs N] [--lease-disk]" >&2; exit 2 ;;
  esac
done

# Pool of the throughput network: 10.200.1.1-10.200.255.254; perfdhcp sits on 10.200.0.5.
POOL=65278

# ---------------------------------------------------------------------------------------
# Inside the sandbox (one target): prints `key value` lines.
if [ "$inner" = 1 ]; then
  work=$(mktemp -d /run/dhcp-bench.XXXXXX)
  now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
  median() { sort -n | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
  ms() { awk -v us="$1" 'BEGIN {printf "%.2f", us/1000}'; }
  cli() { $BENCH_CLI "$@" >/dev/null; }
  peer="ip netns exec dhcp-peer"
  # The machine may be shared (other builds): the server under test and its clients run
  # at a raised priority, the same for both targets.
  boost=(nice -n -10)
  renice -n -10 -p "$BENCH_DAEMON_PID" >/dev/null
  rand_mac() { printf '02:%02x:%02x:%02x:%02x:%02x' $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)); }

  net_xml() { # name bridge address netmask range-start range-end
    local ns="" opts=""
    if [ "$BENCH_TARGET" = libvirt ]; then
      ns=" xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'"
      opts="  <dnsmasq:options><dnsmasq:option value='no-ping'/></dnsmasq:options>"
    fi
    cat <<XML
<network$ns>
  <name>$1</name>
  <forward mode='nat'/>
  <bridge name='$2'/>
  <ip address='$3' netmask='$4'>
    <dhcp>
      <range start='$5' end='$6'/>
    </dhcp>
  </ip>
$opts
</network>
XML
  }
  # wait_forwarding PORT: ms until the bridge port is FORWARDING (state 3)
  wait_forwarding() {
    local t0 i
    t0=$(now_us)
    for i in $(seq 1000); do [ "$(cat "/sys/class/net/$1/brport/state" 2>/dev/null)" = 3 ] && break; sleep 0.01; done
    ms $(($(now_us) - t0))
  }

  ip netns add dhcp-peer
  ip -n dhcp-peer link set lo up
  ip link add dhcp-h0 type veth peer name dhcp-c0 netns dhcp-peer   # lease clients
  ip link add dhcp-h1 type veth peer name dhcp-c1 netns dhcp-peer   # perfdhcp
  ip -n dhcp-peer link set dhcp-c0 up
  ip -n dhcp-peer addr add 10.200.0.5/16 dev dhcp-c1
  ip -n dhcp-peer link set dhcp-c1 up
  if [ "$BENCH_TARGET" = kvnet ] && [ "${BENCH_LEASE_DISK:-0}" = 1 ]; then
    # Lease journals on the root file system (a directory on the host's disk, private
    # to this mount namespace, removed at the end).
    disk=$(mktemp -d /var/tmp/kvnet-dhcp-bench.XXXXXX)
    mount --bind "$disk" /run/kvnet/networks
  fi

  # Client hook: put the leased address on the interface, as a guest would.
  cat >"$work/bound.sh" <<'SH'
#!/bin/sh
if [ -n "$reason" ]; then
  case "$reason" in BOUND|RENEW|REBOOT)
    ip addr flush dev "$interface" scope global
    ip addr add "$new_ip_address/${new_subnet_mask:-255.255.255.0}" dev "$interface" ;; esac
else
  case "$1" in bound|renew)
    ip addr flush dev "$interface" scope global
    ip addr add "$ip/${mask:-24}" dev "$interface" ;; esac
fi
exit 0
SH
  chmod +x "$work/bound.sh"

  # udhcpc opens and closes an AF_PACKET socket per message it sends; each bind and
  # close waits for the kernel (an RCU grace period). That cost, measured here, is a
  # floor of udhcpc's lease time whatever the server does.
  echo "packet_socket_bind_close_ms $($peer python3 -c '
import socket, statistics, time
runs = []
for _ in range(9):
    t = time.perf_counter()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.bind(("dhcp-c0", 0x0800))
    s.close()
    runs.append((time.perf_counter() - t) * 1e3)
print(f"{statistics.median(runs):.2f}")')"

  # (1) lease wall time of new clients on a libvirt-default-like /24 network.
  net_xml benchlease vbrlease 192.168.150.1 255.255.255.0 192.168.150.2 192.168.150.254 >"$work/lease.xml"
  cli net-define "$work/lease.xml"
  cli net-start benchlease
  ip link set dhcp-h0 master vbrlease up
  echo "port_forwarding_ms $(wait_forwarding dhcp-h0)"
  newmac() { $peer ip addr flush dev dhcp-c0; $peer ip link set dhcp-c0 address "$(rand_mac)"; sleep 0.2; }
  for client in udhcpc dhclient; do
    : >"$work/$client"
    failed=0
    # The server's share of each lease, timed on the wire at the client's bridge port.
    python3 bench/dhcp_server_time.py dhcp-h0 >"$work/$client.wire" 2>"$work/capture.log" &
    capture=$!
    for _ in $(seq 500); do grep -q ready "$work/capture.log" && break; sleep 0.01; done
    for _ in $(seq "$runs"); do
      newmac
      rm -f "$work/dhc.lease" "$work/dhc.pid"
      if [ $client = udhcpc ]; then
        cmd="busybox udhcpc -f -n -q -i dhcp-c0 -s $work/bound.sh"
      else
        # -1: one try; the parent returns once BOUND (its child daemonises).
        cmd="dhclient -1 -sf $work/bound.sh -lf $work/dhc.lease -pf $work/dhc.pid dhcp-c0"
      fi
      # Timed inside the client's namespace: from the client's start to its exit with
      # the address configured, without the cost of entering the namespace.
      took=$(timeout 30 "${boost[@]}" $peer bash -c "t0=\${EPOCHREALTIME/./}; $cmd >/dev/null 2>&1 || exit 1; echo \$((\${EPOCHREALTIME/./} - t0))") || took=
      if [ -n "$took" ]; then echo "$took" >>"$work/$client"; else failed=$((failed + 1)); fi
      if [ $client = dhclient ]; then
        $peer dhclient -x -sf /bin/true -lf "$work/dhc.lease" -pf "$work/dhc.pid" dhcp-c0 >/dev/null 2>&1 || true
      fi
    done
    kill -TERM "$capture" && wait "$capture" || true
    echo "lease_${client}_ms $(ms "$(median <"$work/$client")")"
    echo "lease_${client}_server_ms $(awk '{print $1}' "$work/$client.wire" | median)"
    echo "lease_${client}_wire_ms $(awk '{print $2}' "$work/$client.wire" | median)"
    echo "lease_${client}_failed $failed"
  done
  cli net-destroy benchlease
  cli net-undefine benchlease

  # UDP counters of this network namespace: received, receive-queue overflows.
  udp_counters() { awk '/^Udp:/ { if (!seen) { for (i = 2; i <= NF; i++) col[$i] = i; seen = 1 } else print $col["InDatagrams"], $col["RcvbufErrors"], $col["OutDatagrams"] }' /proc/net/snmp; }
  # CPU time (clock ticks) of the DHCP server: kvnetd, or the dnsmasq processes with
  # their reaped children (libvirt's lease helper).
  server_pids() { if [ "$BENCH_TARGET" = kvnet ]; then echo "$BENCH_DAEMON_PID"; else pgrep -x dnsmasq || true; fi; }
  server_ticks() { # PIDS...: "pid ticks" lines of those still running
    local p t
    for p in "$@"; do t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null) && echo "$p $t"; done
  }
  # perfdhcp reads its socket slower than a fast server answers and has no option for
  # its receive buffer: a preloaded shim enlarges every datagram socket it opens before
  # the first packet, so what perfdhcp's own queue drops is not blamed on the server.
  cc -shared -fPIC -O2 -o "$work/udp-rcvbuf.so" bench/udp-rcvbuf.c -ldl

  # (2) DORA throughput: a fresh network per rate, every client new.
  net_xml benchdhcp vbrdhcp 10.200.0.1 255.255.0.0 10.200.1.1 10.200.255.254 >"$work/dora.xml"
  step=0
  for rate in $RATES; do
    clients=$((rate * PERIOD + 10))
    if [ "$clients" -gt "$POOL" ]; then
      echo "dhcp.sh: rate $rate for $PERIOD s needs $clients addresses, the pool has $POOL: skipped" >&2
      continue
    fi
    cli net-define "$work/dora.xml"
    cli net-start benchdhcp
    ip link set dhcp-h1 master vbrdhcp up
    wait_forwarding dhcp-h1 >/dev/null
    sleep 0.3
    out="$work/perfdhcp-$rate"
    read -r server_in0 server_drop0 server_out0 < <(udp_counters)
    read -r _ peer_drop0 _ < <($peer bash -c "$(declare -f udp_counters); udp_counters")
    mapfile -t pids < <(server_pids)
    ticks0=$(server_ticks "${pids[@]}")
    # -d 5: an answer later than 5 s is a drop; -W 3 s: keep receiving after the period.
    "${boost[@]}" timeout $((PERIOD + 30)) $peer env LD_PRELOAD="$work/udp-rcvbuf.so" BENCH_RCVBUF=$((8 << 20)) perfdhcp -4 -l dhcp-c1 -r "$rate" -R "$clients" \
      -b "mac=02:$(printf %02x $((16 + step))):00:00:00:00" -p "$PERIOD" -d 5 -W 3000000 >"$out" 2>&1 || true
    ticks1=$(server_ticks "${pids[@]}")
    read -r server_in1 server_drop1 server_out1 < <(udp_counters)
    read -r _ peer_drop1 _ < <($peer bash -c "$(declare -f udp_counters); udp_counters")
    # Requests the server dropped on its full queue or read and left unanswered (the
    # only UDP traffic of the server's namespace is this DHCP exchange).
    echo "dora_r${rate}_server_lost $((server_drop1 - server_drop0 + (server_in1 - server_in0) - (server_out1 - server_out0)))"
    echo "dora_r${rate}_client_queue_drops $((peer_drop1 - peer_drop0))"
    # Only processes that ran through the whole step count (a dnsmasq of the previous
    # network may still be exiting when the step starts).
    ticks=$(awk 'NR == FNR { start[$1] = $2; next } ($1 in start) { sum += $2 - start[$1] } END { print sum + 0 }' \
      <(echo "$ticks0") <(echo "$ticks1"))
    python3 - "$out" "$rate" "$PERIOD" "$ticks" "$(getconf CLK_TCK)" <<'PY'
import re, sys
text, rate, period = open(sys.argv[1]).read(), sys.argv[2], float(sys.argv[3])
ticks, hz = int(sys.argv[4]), int(sys.argv[5])
stats = {}
for section in re.split(r'\*\*\*Statistics for: ', text)[1:]:
    def get(key):
        m = re.search(key + r':\s*([0-9.]+)', section)
        return float(m.group(1)) if m else float('nan')
    stats[section.split('***')[0].strip()] = dict(sent=get('sent packets'), recv=get('received packets'), avg=get('avg delay'))
do, ra = stats.get('DISCOVER-OFFER'), stats.get('REQUEST-ACK')
if not do or not ra or not do['sent']:
    print(f"dora_r{rate}_failed 1")
    sys.stderr.write(f"dhcp.sh: perfdhcp at {rate}/s gave no statistics:\n{text[-2000:]}\n")
    sys.exit(0)
print(f"dora_r{rate}_sent_per_s {do['sent'] / period:.0f}")
print(f"dora_r{rate}_acks_per_s {ra['recv'] / period:.0f}")
print(f"dora_r{rate}_drop_pct {100.0 * (1 - ra['recv'] / do['sent']):.2f}")
print(f"dora_r{rate}_offer_avg_ms {do['avg']:.3f}")
print(f"dora_r{rate}_ack_avg_ms {ra['avg']:.3f}")
if ra['recv']:
    print(f"dora_r{rate}_server_cpu_us_per_dora {1e6 * ticks / hz / ra['recv']:.1f}")
PY
    cli net-destroy benchdhcp
    cli net-undefine benchdhcp
    step=$((step + 1))
  done
  echo "daemon_rss_mb $(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$BENCH_DAEMON_PID/status")"
  ip link del dhcp-h0 2>/dev/null || true
  ip link del dhcp-h1 2>/dev/null || true
  ip netns del dhcp-peer
  if [ -n "${disk:-}" ]; then umount /run/kvnet/networks && rm -rf "$disk"; fi
  rm -rf "$work"
  exit 0
fi

# ---------------------------------------------------------------------------------------
# Outside: build, run both targets, report.
[ "$(id -u)" = 0 ] || { echo "bench/dhcp.sh: run as root (it creates namespaces)" >&2; exit 1; }
# busybox (udhcpc) and isc-dhcp-client (dhclient) are among install-deps' own.
tools=(kea-admin)   # perfdhcp
[ "$vs_libvirt" = 1 ] && tools+=(libvirt-daemon libvirt-clients dnsmasq-base iptables)
scripts/install-deps.sh "${tools[@]}"
cargo build --release --bins -q
export BENCH_BIN=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release RATES=$rates PERIOD=$period POOL BENCH_LEASE_DISK=$lease_disk
out=$(mktemp -d)
inner_args=(--inner --runs "$runs")
echo "kvnet (lease journal on $([ "$lease_disk" = 1 ] && echo "the root file system" || echo tmpfs)):"
bench/sandbox.sh kvnet -- bench/dhcp.sh "${inner_args[@]}" | tee "$out/kvnet"
if [ "$vs_libvirt" = 1 ]; then
  echo "libvirt + dnsmasq (no-ping):"
  bench/sandbox.sh libvirt -- bench/dhcp.sh "${inner_args[@]}" | tee "$out/libvirt"
fi

python3 - "$out" "$vs_libvirt" "$rates" "$period" <<'PY'
import sys, pathlib, math
out, vs, rates, period = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3].split(), sys.argv[4]
def load(name):
    p = out / name
    return {k: float(v) for k, v in (l.split() for l in p.read_text().splitlines() if len(l.split()) == 2)} if p.exists() else {}
ours, lv = load("kvnet"), load("libvirt")
nan = float("nan")
def best_clean(m):
    """Highest ACK rate of a step in which every DISCOVER got its ACK."""
    clean = [m[f"dora_r{r}_acks_per_s"] for r in rates
             if m.get(f"dora_r{r}_drop_pct", nan) == 0.0]
    return max(clean) if clean else nan
for m in (ours, lv):
    m["dora_clean_per_s"] = best_clean(m)
    m["dora_peak_per_s"] = max((m.get(f"dora_r{r}_acks_per_s", nan) for r in rates), default=nan)
print()
print(f"DORA throughput, perfdhcp, {period} s per rate, all clients new:")
print("(sent/s: what perfdhcp managed to send; drop %: DISCOVERs without ACK; srv lost: requests the server")
print(" dropped or left unanswered; cli q-drops: replies lost on perfdhcp's own full socket queue;")
print(" CPU us: the server's CPU time per DORA, kernel share included)")
cols = [("sent_per_s", "sent/s", 8, 0), ("acks_per_s", "ACK/s", 8, 0), ("drop_pct", "drop %", 7, 2),
        ("ack_avg_ms", "ACK ms", 7, 2), ("server_lost", "srv lost", 8, 0),
        ("client_queue_drops", "cli q-drops", 11, 0), ("server_cpu_us_per_dora", "CPU us", 7, 1)]
def cells(m, r):
    return " ".join(f"{m.get(f'dora_r{r}_{key}', nan):{w}.{p}f}" for key, _, w, p in cols)
print(f"{'':10} {'kvnet':^{sum(w + 1 for _, _, w, _ in cols) - 1}}" + (f" | {'libvirt + dnsmasq':^{sum(w + 1 for _, _, w, _ in cols) - 1}}" if vs else ""))
names = " ".join(f"{name:>{w}}" for _, name, w, _ in cols)
print(f"{'offered/s':>10} {names}" + (f" | {names}" if vs else ""))
for r in rates:
    print(f"{r:>10} {cells(ours, r)}" + (f" | {cells(lv, r)}" if vs else ""))
targets = [
    ("dora_clean_per_s", "DORA/s without drops", lambda v: v >= 10000, ">= 10000", True),
    ("dora_peak_per_s", "peak ACK/s", None, "", True),
    ("lease_udhcpc_ms", "udhcpc lease (median, ms)", lambda v: v <= 15, "<= 15 ms", False),
    ("lease_dhclient_ms", "dhclient lease (median, ms)", lambda v: v <= 10, "<= 10 ms", False),
    ("lease_udhcpc_server_ms", "  udhcpc: server's answers (ms)", None, "(on the wire)", False),
    ("lease_udhcpc_wire_ms", "  udhcpc: DISCOVER to ACK (ms)", None, "(on the wire)", False),
    ("lease_dhclient_server_ms", "  dhclient: server's answers (ms)", None, "(on the wire)", False),
    ("lease_dhclient_wire_ms", "  dhclient: DISCOVER to ACK (ms)", None, "(on the wire)", False),
    ("port_forwarding_ms", "new bridge port forwarding (ms)", None, "(not timed in leases)", False),
    ("packet_socket_bind_close_ms", "AF_PACKET bind+close (ms)", None, "(client-side floor)", False),
]
print()
print(f"{'measure':32} {'kvnet':>10} {'target':>22} {'met':>5}" + (f" {'libvirt':>10} {'ratio':>8}" if vs else ""))
for key, label, ok, text, higher_better in targets:
    v = ours.get(key, nan)
    met = "" if ok is None else ("yes" if not math.isnan(v) and ok(v) else "NO")
    row = f"{label:32} {v:10.{2 if v < 100 else 1}f} {text:>22} {met:>5}"
    if vs:
        l = lv.get(key, nan)
        ratio = (v / l if higher_better else l / v) if v and l else nan
        row += f" {l:10.1f}" + (f" {ratio:7.1f}x" if ok or key == "dora_peak_per_s" else "")
    print(row)
failed = {k: v for k, v in ours.items() if k.endswith("_failed") and v}
if failed:
    print(f"kvnet failures: {failed}")
if vs:
    print("(ratio: how many times better kvnet is; libvirt's DORA/s without drops is nan when every step dropped)")
PY
rm -rf "$out"
