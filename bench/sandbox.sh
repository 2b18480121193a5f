#!/usr/bin/env bash
# sandbox.sh TARGET -- COMMAND...: runs COMMAND with the daemon under test (TARGET =
# kvnet | libvirt) inside a private network + mount + PID namespace. /run, /etc/libvirt,
# /var/lib/libvirt are private tmpfs; when COMMAND ends the PID namespace dies and the
# network namespace, with every bridge and rule, goes with it. The host's own network
# namespace is never touched.
#
# COMMAND sees: BENCH_TARGET, BENCH_CLI (CLI prefix, virsh -q style), BENCH_DAEMON_PID, and
# for kvnet BENCH_DAEMON_CMD (to restart the daemon) and BENCH_SOCKET.
set -euo pipefail
target=$1; shift
[ "${1:-}" = "--" ] && shift
here=$(cd "$(dirname "$0")" && pwd)

if [ "${BENCH_IN_SANDBOX:-}" != 1 ]; then
  export BENCH_IN_SANDBOX=1 BENCH_HOST_NETNS
  BENCH_HOST_NETNS=$(readlink /proc/self/ns/net)
  mkdir -p /var/lib/libvirt /etc/libvirt
  exec unshare --net --mount --pid --fork --mount-proc --propagation private "$0" "$target" -- "$@"
fi
if [ "$(readlink /proc/self/ns/net)" = "${BENCH_HOST_NETNS:-}" ]; then
  echo "sandbox.sh: refusing to run in the host's network namespace" >&2
  exit 3
fi

stage=$(mktemp -d /tmp/kvnet-bench-stage.XXXXXX)
cp -a /etc/libvirt/. "$stage/" 2>/dev/null || true
mount -t tmpfs -o mode=755 bench-run /run
mount -t sysfs bench-sys /sys
mount -t tmpfs -o mode=755 bench-lib /var/lib/libvirt
mount -t tmpfs -o mode=755 bench-etc /etc/libvirt
cp -a "$stage/." /etc/libvirt/ && rm -rf "$stage"
: > /run/bench-resolv.conf && mount --bind /run/bench-resolv.conf /etc/resolv.conf
ip link set lo up

case "$target" in
  kvnet)
    BENCH_DAEMON_CMD="$BENCH_BIN/kvnetd --config-dir /run/kvnet-etc --state-dir /run/kvnet --socket /run/kvnet/kvnetd.sock --no-default-network --log-level warn"
    $BENCH_DAEMON_CMD 2>>/run/kvnetd.log &
    BENCH_DAEMON_PID=$!
    for _ in $(seq 200); do [ -S /run/kvnet/kvnetd.sock ] && break; sleep 0.02; done
    BENCH_SOCKET=/run/kvnet/kvnetd.sock
    BENCH_CLI="$BENCH_BIN/kvnet -q -c $BENCH_SOCKET"
    ;;
  libvirt)
    mkdir -p /var/lib/libvirt/dnsmasq /etc/libvirt/qemu/networks/autostart /run/libvirt
    # The dnsmasq user libvirt drops to, in private copies of passwd/group.
    cp /etc/passwd /run/passwd && cp /etc/group /run/group
    grep -q '^libvirt-dnsmasq:' /run/passwd || echo 'libvirt-dnsmasq:x:990:990::/var/lib/libvirt/dnsmasq:/usr/sbin/nologin' >>/run/passwd
    grep -q '^libvirt-dnsmasq:' /run/group || echo 'libvirt-dnsmasq:x:990:' >>/run/group
    mount --bind /run/passwd /etc/passwd && mount --bind /run/group /etc/group
    echo 'log_outputs="3:file:/run/libvirtd.log"' >/etc/libvirt/libvirtd.conf
    # Only the network driver, as virtnetworkd would load.
    drivers=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver
    mkdir -p /run/drivers && cp "$drivers/libvirt_driver_network.so" /run/drivers/
    mount --bind /run/drivers "$drivers"
    /usr/sbin/libvirtd --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirtd.pid >/run/libvirtd.out 2>&1 &
    BENCH_DAEMON_PID=$!
    for _ in $(seq 200); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.05; done
    BENCH_CLI="virsh -q -c network:///system"
    ;;
  *) echo "sandbox.sh: unknown target $target" >&2; exit 2 ;;
esac
export BENCH_TARGET=$target BENCH_CLI BENCH_DAEMON_PID BENCH_DAEMON_CMD BENCH_SOCKET
rc=0
"$@" || rc=$?
# The scenario may have restarted the daemon; the PID namespace ends it either way.
kill "$BENCH_DAEMON_PID" 2>/dev/null || true
exit $rc
