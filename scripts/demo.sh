#!/usr/bin/env bash
# Demo: builds kvnet, runs kvnetd with the `default` network inside a private network
# namespace (nothing is changed in this host's own namespace), defines libvirt's
# docker-machines network, and shows net-list, net-info and net-dumpxml; then a network
# port (a guest's tap on virbr0) and, where /dev/kvm works, a mini-guest VM whose NIC
# kvnetd plugs into the default network.
# With --keep, the daemon keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1

[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it creates a network namespace)" >&2; exit 1; }
scripts/install-deps.sh
kvm=0
[ -r /dev/kvm ] && [ -w /dev/kvm ] && kvm=1
echo "demo.sh: building kvnet (release; the first build takes several minutes)" >&2
cargo build --release --bins -q
[ "$kvm" = 1 ] && cargo build -q --release -p kvnet-vmm --features test-guest --example mini_guest
bin=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release  # .cargo/config.toml's build target

ns=kvnet-demo-$$
work=$(mktemp -d /tmp/kvnet-demo.XXXXXX)
# Outside $work, which goes at the end: the log stays for reading.
log=$(mktemp /tmp/kvnet-demo-log.XXXXXX)
daemon=
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
sock=$work/kvnetd.sock
# Its own (empty) libvirt leases dir: the demo's virbr0 must not take over a libvirt host's.
ip netns exec "$ns" "$bin/kvnetd" --config-dir "$work/etc" --state-dir "$work/run" --socket "$sock" \
  --libvirt-leases-dir "$work/libvirt-leases" --log-level info 2>"$log" &
daemon=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { cat "$log" >&2; exit 1; }

kvnet() { echo "\$ kvnet $*"; "$bin/kvnet" -c "$sock" "$@"; }
kvnet net-define examples/networks/docker-machines.xml
kvnet net-start docker-machines
kvnet net-autostart docker-machines
kvnet net-list --all
kvnet net-info default
kvnet net-dumpxml default
echo "\$ ip -br addr   # inside namespace $ns"
ip netns exec "$ns" ip -br addr
echo "\$ nft list table inet kvnet   # inside namespace $ns"
ip netns exec "$ns" nft list table inet kvnet

# A guest NIC's place on the network: kvnetd makes the tap on virbr0.
cat > "$work/port.xml" <<'XML'
<networkport>
  <owner>
    <name>demo-guest</name>
    <uuid>c0b6a7f5-4deb-4cf6-b4e7-eab4e3aafd4c</uuid>
  </owner>
  <mac address='52:54:00:de:00:01'/>
</networkport>
XML
kvnet net-port-create default "$work/port.xml"
kvnet net-port-list default
port=$("$bin/kvnet" -c "$sock" net-port-list default --uuid | head -n 1)
kvnet net-port-dumpxml default "$port"
echo "\$ ip -br link show master virbr0   # inside namespace $ns"
ip netns exec "$ns" ip -br link show master virbr0
# Ports outlive a restart of their network: the guest's tap goes back on the new bridge.
kvnet net-destroy default
kvnet net-start default
echo "\$ ip -br link show master virbr0   # inside namespace $ns, after the restart"
ip netns exec "$ns" ip -br link show master virbr0
kvnet net-port-delete default "$port"

# A VM on the default network: run from this namespace, it needs no network privileges;
# kvnetd hands it the tap over its socket, and the port ends with the VM. The mini-guest
# runs until its console (the VMM's stdin) gets a line.
if [ "$kvm" = 1 ]; then
  guest=$("$bin/examples/mini_guest" --wait "$work/guest.elf")
  mkfifo "$work/console"
  echo "\$ kvnet-vmm --kernel guest.elf --net network=default --name demo-vm &"
  KVNET_SOCKET=$sock "$bin/kvnet-vmm" --kernel "$guest" --net network=default --name demo-vm \
    <"$work/console" &
  vm=$!
  exec 3>"$work/console"
  for _ in $(seq 100); do
    [ -n "$("$bin/kvnet" -c "$sock" net-port-list default --uuid)" ] && break
    sleep 0.05
  done
  kvnet net-port-list default
  echo "\$ ip -br link show master virbr0   # inside namespace $ns, while the VM runs"
  ip netns exec "$ns" ip -br link show master virbr0
  # The guest powers off. (A VMM that ended early leaves no reader: the write fails
  # instead of killing the script before its cleanup.)
  (trap '' PIPE; echo >&3) 2>/dev/null || true
  exec 3>&-
  wait "$vm" || echo "(kvnet-vmm failed; see above)"
  echo "# the VM is gone, and its port with it:"
  for _ in $(seq 100); do
    [ -z "$("$bin/kvnet" -c "$sock" net-port-list default --uuid)" ] && break
    sleep 0.05
  done
  kvnet net-port-list default
else
  echo "(no usable /dev/kvm: skipping the VM)"
fi
echo "daemon log: $log" >&2
if [ "$keep" = 1 ]; then
  echo "kvnetd is running in namespace $ns; try: $bin/kvnet -c $sock net-list --all (Ctrl-C to stop)"
  wait "$daemon"
fi
