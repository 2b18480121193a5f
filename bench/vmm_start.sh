#!/bin/sh
# kvnet-vmm start-up benchmark: time from process start to the first KVM_RUN, CPU used by
# then, and the VMM's resident memory, for a 128 MiB guest (a mini-guest that powers off
# at once). A baseline run beside it (exec of /bin/true from the same shell loop) shows
# what process creation alone costs on this machine.
#
# usage: bench/vmm_start.sh [RUNS]     (default 20; builds release binaries first)
# Targets (Firecracker: ~8 ms CPU to start, <= 5 MiB overhead): <= 10 ms and <= 5 MiB.
set -eu
runs=${1:-20}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build -q --release --bin kvnet-vmm
cargo build -q --release -p kvnet-vmm --features test-guest --example mini_guest
target=${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu  # .cargo/config.toml build target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
guest=$("$target/release/examples/mini_guest" "$work/guest.elf")
vmm=$target/release/kvnet-vmm

now_ns() { date +%s%N; }

: > "$work/vmm.txt"
: > "$work/base.txt"
i=0
while [ "$i" -lt "$runs" ]; do
    t0=$(now_ns)
    line=$(KVNET_VMM_TIMINGS=1 "$vmm" --kernel "$guest" --memory 128 --serial none 2>&1 | grep 'timings') || {
        echo "vmm_start: kvnet-vmm failed" >&2; exit 1; }
    first=$(echo "$line" | sed -n 's/.*first_kvm_run_unix_ns=\([0-9]*\).*/\1/p')
    cpu=$(echo "$line" | sed -n 's/.*cpu_us_at_first_kvm_run=\([0-9]*\).*/\1/p')
    rss=$(echo "$line" | sed -n 's/.*rss_kib_at_first_kvm_run=\([0-9]*\).*/\1/p')
    rss_exit=$(echo "$line" | sed -n 's/.*rss_kib_at_exit=\([0-9]*\).*/\1/p')
    echo "$(( (first - t0) / 1000 )) $cpu $rss $rss_exit" >> "$work/vmm.txt"
    t0=$(now_ns); /bin/true; t1=$(now_ns)
    echo "$(( (t1 - t0) / 1000 ))" >> "$work/base.txt"
    i=$((i + 1))
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$1" '{print $c}' "$work/vmm.txt"; }
start_med=$(col 1 | median); start_min=$(col 1 | sort -n | head -1)
cpu_med=$(col 2 | median)
rss_med=$(col 3 | median); rss_exit_med=$(col 4 | median)
base_med=$(median < "$work/base.txt")
echo "kvnet-vmm start-up, 128 MiB guest, $runs runs ($(uname -r), $(nproc) cpus)"
printf '  process start -> first KVM_RUN (wall): median %6.2f ms  min %6.2f ms   target <= 10 ms\n' \
    "$(echo "$start_med" | awk '{print $1/1000}')" "$(echo "$start_min" | awk '{print $1/1000}')"
printf '  CPU used by then (all threads):         median %6.2f ms\n' "$(echo "$cpu_med" | awk '{print $1/1000}')"
printf '  RSS at first KVM_RUN:                   median %6.2f MiB  (at exit %.2f MiB)  target <= 5 MiB\n' \
    "$(echo "$rss_med" | awk '{print $1/1024}')" "$(echo "$rss_exit_med" | awk '{print $1/1024}')"
printf '  baseline: fork+exec of /bin/true:       median %6.2f ms  (start-up / baseline = %.1fx)\n' \
    "$(echo "$base_med" | awk '{print $1/1000}')" "$(echo "$start_med $base_med" | awk '{print ($2>0)?$1/$2:0}')"
