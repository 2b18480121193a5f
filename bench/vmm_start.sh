#!/bin/sh
# kvnet-vmm start-up benchmark: time from process start to the first KVM_RUN, CPU used by
# then, and the VMM's resident memory, for a 128 MiB guest (a mini-guest that powers off
# at once). A baseline run beside it (exec of /bin/true from the same shell loop) shows
# what process creation alone costs on this machine.
#
# usage: bench/vmm_start.sh [RUNS] [--network]   (default 20; builds release binaries first)
# Targets (Firecracker: ~8 ms CPU to start, <= 5 MiB overhead): <= 10 ms and <= 5 MiB.
# With --network (as root), the runs alternate between no NIC and a NIC on a kvnet NAT
# network (--net network=bench: kvnetd makes the tap and passes its fd), in a sandboxed
# kvnetd (bench/sandbox.sh), and the report adds what plugging the NIC in costs.
set -eu
runs=20
network=0
for arg in "$@"; do
    case "$arg" in
        --network) network=1 ;;
        *) runs=$arg ;;
    esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu  # .cargo/config.toml build target
if [ "${BENCH_IN_SANDBOX:-}" != 1 ]; then
    cargo build -q --release --bins
    cargo build -q --release -p kvnet-vmm --features test-guest --example mini_guest
    if [ "$network" = 1 ]; then
        export BENCH_BIN="$target/release"
        exec bench/sandbox.sh kvnet -- "$0" "$@"
    fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
guest=$("$target/release/examples/mini_guest" "$work/guest.elf")
vmm=$target/release/kvnet-vmm
nic=
if [ "$network" = 1 ]; then
    cat > "$work/bench.xml" <<'XML'
<network>
  <name>bench</name>
  <forward mode='nat'/>
  <ip address='10.210.0.1' prefix='24'/>
</network>
XML
    $BENCH_CLI net-create "$work/bench.xml" >/dev/null
    nic="--net network=bench,socket=$BENCH_SOCKET"
fi

now_ns() { date +%s%N; }

: > "$work/vmm.txt"
: > "$work/nic.txt"
: > "$work/base.txt"
# One start of the VMM (with the extra arguments given); appends "start_us cpu_us rss_kib
# rss_exit_kib" to $1.
start_vm() {
    out=$1; shift
    t0=$(now_ns)
    # shellcheck disable=SC2086  # $@ holds the --net option, or nothing
    line=$(KVNET_VMM_TIMINGS=1 "$vmm" --kernel "$guest" --memory 128 --serial none "$@" 2>&1 | grep 'timings') || {
        echo "vmm_start: kvnet-vmm failed" >&2; exit 1; }
    first=$(echo "$line" | sed -n 's/.*first_kvm_run_unix_ns=\([0-9]*\).*/\1/p')
    cpu=$(echo "$line" | sed -n 's/.*cpu_us_at_first_kvm_run=\([0-9]*\).*/\1/p')
    rss=$(echo "$line" | sed -n 's/.*rss_kib_at_first_kvm_run=\([0-9]*\).*/\1/p')
    rss_exit=$(echo "$line" | sed -n 's/.*rss_kib_at_exit=\([0-9]*\).*/\1/p')
    echo "$(( (first - t0) / 1000 )) $cpu $rss $rss_exit" >> "$out"
}
i=0
while [ "$i" -lt "$runs" ]; do
    start_vm "$work/vmm.txt"
    # shellcheck disable=SC2086
    [ -n "$nic" ] && start_vm "$work/nic.txt" $nic
    t0=$(now_ns); /bin/true; t1=$(now_ns)
    echo "$(( (t1 - t0) / 1000 ))" >> "$work/base.txt"
    i=$((i + 1))
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$1" '{print $c}' "${2:-$work/vmm.txt}"; }
start_med=$(col 1 | median); start_min=$(col 1 | sort -n | head -1)
cpu_med=$(col 2 | median)
rss_med=$(col 3 | median); rss_exit_med=$(col 4 | median)
base_med=$(median < "$work/base.txt")
echo "kvnet-vmm start-up, 128 MiB guest, $runs runs ($(uname -r), $(nproc) cpus)"
printf '  process start -> first KVM_RUN (wall): median %6.2f ms  min %6.2f ms   target <= 10 ms\n' \
    "$(echo "$start_med" | awk '{print $1/1000}')" "$(echo "$start_min" | awk '{print $1/1000}')"
printf '  CPU used by then (all threads):         median %6.2f ms\n' "$(echo "$cpu_med" | awk '{print $1/1000}')"
printf '  peak RSS by first KVM_RUN:              median %6.2f MiB  (by exit %.2f MiB)  target <= 5 MiB\n' \
    "$(echo "$rss_med" | awk '{print $1/1024}')" "$(echo "$rss_exit_med" | awk '{print $1/1024}')"
printf '  baseline: fork+exec of /bin/true:       median %6.2f ms  (start-up / baseline = %.1fx)\n' \
    "$(echo "$base_med" | awk '{print $1/1000}')" "$(echo "$start_med $base_med" | awk '{print ($2>0)?$1/$2:0}')"
if [ -n "$nic" ]; then
    nic_med=$(col 1 "$work/nic.txt" | median)
    nic_cpu=$(col 2 "$work/nic.txt" | median)
    printf '  with a NIC on a kvnet network:          median %6.2f ms  (CPU %.2f ms; plugging in adds %.2f ms)\n' \
        "$(echo "$nic_med" | awk '{print $1/1000}')" "$(echo "$nic_cpu" | awk '{print $1/1000}')" \
        "$(echo "$nic_med $start_med" | awk '{print ($1-$2)/1000}')"
fi
