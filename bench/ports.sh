#!/bin/sh
# Network restarts with guests plugged in: N ports (persistent taps, as net-port-create
# makes them) on a NAT network, then the times of net-destroy (the taps stay, detached),
# net-start (every tap plugged into the new bridge again), and net-undefine (the taps
# deleted), each from the CLI, in a sandboxed kvnetd (bench/sandbox.sh). The kernel's
# own deletion of N taps, one RTM_DELLINK each, is timed beside them as the floor of the
# last step.
#
# usage: bench/ports.sh [PORTS]   (default 300; builds release binaries first; as root)
set -eu
ports=${1:-300}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu  # .cargo/config.toml build target
if [ "${BENCH_IN_SANDBOX:-}" != 1 ]; then
    cargo build -q --release --bins
    export BENCH_BIN="$target/release"
    exec bench/sandbox.sh kvnet -- "$0" "$@"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
cat > "$work/guests.xml" <<'XML'
<network>
  <name>guests</name>
  <forward mode='nat'/>
  <bridge name='kvports0'/>
  <ip address='10.211.0.1' prefix='16'/>
</network>
XML
$BENCH_CLI net-define "$work/guests.xml" >/dev/null
$BENCH_CLI net-start guests >/dev/null
i=1
while [ "$i" -le "$ports" ]; do
    printf "<networkport><owner><name>guest%d</name><uuid>c0b6a7f5-4deb-4cf6-b4e7-%012x</uuid></owner><mac address='52:54:00:01:%02x:%02x'/></networkport>\n" \
        "$i" "$i" $((i / 256)) $((i % 256)) > "$work/port.xml"
    $BENCH_CLI net-port-create guests "$work/port.xml" >/dev/null
    i=$((i + 1))
done

now_ns() { date +%s%N; }
# Runs the CLI command and prints its wall time in ms.
timed() {
    t0=$(now_ns)
    $BENCH_CLI "$@" >/dev/null
    echo $(( ($(now_ns) - t0) / 1000000 ))
}
on_bridge() { ip -o link show master kvports0 | wc -l; }

destroy_ms=$(timed net-destroy guests)
detached=$(ip -o link show type tun | wc -l)
start_ms=$(timed net-start guests)
plugged=$(on_bridge)
$BENCH_CLI net-destroy guests >/dev/null
undefine_ms=$(timed net-undefine guests)
left=$(ip -o link show type tun | wc -l)

# The floor: the same number of taps deleted by ip, one link at a time, in one batch
# of RTM_DELLINK requests.
i=1
while [ "$i" -le "$ports" ]; do echo "tuntap add dev floor$i mode tap"; i=$((i + 1)); done > "$work/add.batch"
i=1
while [ "$i" -le "$ports" ]; do echo "link del floor$i"; i=$((i + 1)); done > "$work/del.batch"
ip -batch "$work/add.batch"
t0=$(now_ns)
ip -batch "$work/del.batch"
floor_ms=$(( ($(now_ns) - t0) / 1000000 ))

echo "ports: $ports on a NAT network (persistent taps)"
echo "net-destroy:  ${destroy_ms} ms   (taps left, detached: $detached)"
echo "net-start:    ${start_ms} ms   (taps plugged in again: $plugged)"
echo "net-undefine: ${undefine_ms} ms   (taps left: $left)"
echo "kernel floor, deleting $ports taps with ip -batch: ${floor_ms} ms"
