#!/usr/bin/env bash
# scenario.sh RUNS SCALE: the measured scenario, run inside sandbox.sh for one target.
# Prints `key value` lines (milliseconds unless the key says otherwise).
set -euo pipefail
runs=$1 scale=$2
work=$(mktemp -d /run/scenario.XXXXXX)
cli() { $BENCH_CLI "$@" >/dev/null; }
# Timestamps are taken inline (t0=${EPOCHREALTIME/./}), as the baseline's harness
# (reference/anchors/lib.sh, time_ms) takes them: a `t0=$(now_us)` helper forks a
# subshell, which cost ~0.9 ms here and landed inside every measured interval.
median() { sort -n | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
ms() { awk -v us="$1" 'BEGIN {printf "%.2f", us/1000}'; }

net_xml() { # name bridge third-octet second-octet: a NAT network like libvirt's default (DHCP + DNS)
  cat <<XML
<network>
  <name>$1</name>
  <forward mode='nat'/>
  <bridge name='$2'/>
  <ip address='10.$4.$3.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.$4.$3.2' end='10.$4.$3.254'/>
    </dhcp>
  </ip>
</network>
XML
}

# (a) start/destroy wall time of one NAT network, median of RUNS cycles: back to back,
# and paced as the baseline's harness paces them (0.3 s idle before each call; at most
# 20 cycles). An idle machine is slower to wake: the CPU the call needs may be halted.
idle() { [ "$1" = 0 ] || sleep "$1"; }
# cycles KEY_SUFFIX IDLE_S COUNT: prints net_start<suffix>_ms and net_destroy<suffix>_ms.
cycles() {
  local t0 t1
  : >"$work/start" ; : >"$work/stop"
  for _ in $(seq "$3"); do
    idle "$2"; t0=${EPOCHREALTIME/./}; cli net-start benchnet; t1=${EPOCHREALTIME/./}
    echo $((t1 - t0)) >>"$work/start"
    idle "$2"; t0=${EPOCHREALTIME/./}; cli net-destroy benchnet; t1=${EPOCHREALTIME/./}
    echo $((t1 - t0)) >>"$work/stop"
  done
  echo "net_start$1_ms $(ms "$(median <"$work/start")")"
  echo "net_destroy$1_ms $(ms "$(median <"$work/stop")")"
}
paced_runs=$((runs < 20 ? runs : 20))
net_xml benchnet vbrbench 1 200 >"$work/benchnet.xml"
cli net-define "$work/benchnet.xml"
cycles "" 0 "$runs"
cycles _paced 0.3 "$paced_runs"

# The same with another network running (the usual host: libvirt's default network is
# up), so a start or destroy never creates or deletes the firewall table itself.
net_xml keepnet vbrkeep 1 202 >"$work/keepnet.xml"
cli net-define "$work/keepnet.xml"; cli net-start keepnet
cycles _warm 0 "$runs"
cycles _warm_paced 0.3 "$paced_runs"
cli net-destroy keepnet; cli net-undefine keepnet; cli net-undefine benchnet

# The floor for destroy: the kernel's own deletion of an up, addressed bridge.
: >"$work/floor"
for _ in $(seq "$runs"); do
  ip link add vbrfloor type bridge && ip addr add 10.201.0.1/24 dev vbrfloor && ip link set vbrfloor up
  t0=${EPOCHREALTIME/./}; ip link del vbrfloor; t1=${EPOCHREALTIME/./}
  echo $((t1 - t0)) >>"$work/floor"
done
echo "kernel_bridge_delete_ms $(ms "$(median <"$work/floor")")"

# (b) scale: SCALE networks. Starting them all is measured four ways: one CLI call
# after another (sequential), all in one CLI call (a virsh command string), from
# PARALLEL concurrent clients, and (kvnet) as the daemon's boot-time autostart of SCALE
# autostart networks, from daemon start until its socket answers (it serves only once
# autostart is done).
parallel=8
scale_names() { for i in $(seq 0 $((scale - 1))); do echo "scale$i"; done; }
# Runs `cli VERB NAME` for every scale network from $1 concurrent clients (xargs execs
# the CLI directly: no shell per call).
each_net() {
  scale_names | xargs -r -P "$1" -n 1 $BENCH_CLI "$2" >/dev/null 2>&1 || true
}
active_count() { $BENCH_CLI net-list --name | grep -c . || true; }
for i in $(seq 0 $((scale - 1))); do
  net_xml "scale$i" "vbs$i" $((i % 250)) $((i / 250 + 100)) >"$work/scale$i.xml"
done
t0=${EPOCHREALTIME/./}; for i in $(seq 0 $((scale - 1))); do cli net-define "$work/scale$i.xml"; done; t1=${EPOCHREALTIME/./}
echo "scale_define_ms $(ms $((t1 - t0)))"

t0=${EPOCHREALTIME/./}; each_net 1 net-start; t1=${EPOCHREALTIME/./}
echo "scale_start_seq_ms $(ms $((t1 - t0)))"
echo "scale_started_count $(active_count)"
: >"$work/list"
for _ in $(seq 20); do t0=${EPOCHREALTIME/./}; cli net-list --all; t1=${EPOCHREALTIME/./}; echo $((t1 - t0)) >>"$work/list"; done
echo "net_list_all_ms $(ms "$(median <"$work/list")")"
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$BENCH_DAEMON_PID/status")
dnsmasq_kb=$( (pgrep -x dnsmasq || true) | while read -r p; do awk '/VmRSS/ {print $2}' "/proc/$p/status"; done | awk '{s+=$1} END {print s+0}')
echo "daemon_rss_mb $(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k/1024}')"
echo "helpers_rss_mb $(awk -v k="$dnsmasq_kb" 'BEGIN {printf "%.1f", k/1024}')"
t0=${EPOCHREALTIME/./}; each_net 1 net-destroy; t1=${EPOCHREALTIME/./}
echo "scale_destroy_ms $(ms $((t1 - t0)))"

# One CLI process for all of them: a virsh command string (`'net-start a; net-start b'`).
session() { $BENCH_CLI "$(scale_names | sed "s/^/$1 /" | paste -sd ';')" >/dev/null 2>&1 || true; }
t0=${EPOCHREALTIME/./}; session net-start; t1=${EPOCHREALTIME/./}
echo "scale_start_session_ms $(ms $((t1 - t0)))"
echo "scale_started_session_count $(active_count)"
t0=${EPOCHREALTIME/./}; session net-destroy; t1=${EPOCHREALTIME/./}
echo "scale_destroy_session_ms $(ms $((t1 - t0)))"

t0=${EPOCHREALTIME/./}; each_net "$parallel" net-start; t1=${EPOCHREALTIME/./}
echo "scale_start_ms $(ms $((t1 - t0)))"
echo "scale_started_parallel_count $(active_count)"
each_net "$parallel" net-destroy

if [ "$BENCH_TARGET" = kvnet ]; then
  each_net "$parallel" net-autostart
  kill "$BENCH_DAEMON_PID"
  # It stays a zombie until the sandbox reaps it; wait for it to have exited.
  while [ -e "/proc/$BENCH_DAEMON_PID" ] && ! grep -q '^State:.*Z' "/proc/$BENCH_DAEMON_PID/status" 2>/dev/null; do sleep 0.01; done
  # A new boot: no autostart marker yet.
  rm -f /run/kvnet/autostarting /run/kvnet/autostarted "$BENCH_SOCKET"
  t0=${EPOCHREALTIME/./}
  $BENCH_DAEMON_CMD 2>>/run/kvnetd.log &
  BENCH_DAEMON_PID=$!
  until [ -S "$BENCH_SOCKET" ] && cli net-list; do sleep 0.005; done
  t1=${EPOCHREALTIME/./}
  echo "boot_autostart_ms $(ms $((t1 - t0)))"
  echo "boot_autostarted_count $(active_count)"
  each_net "$parallel" net-destroy
fi
each_net "$parallel" net-undefine
rm -rf "$work"
