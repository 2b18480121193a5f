#!/usr/bin/env bash
# bench/net.sh [--runs N] [--scale N] [--vs-libvirt]
#
# Network lifecycle benchmark. Measures, for kvnet (and with --vs-libvirt for
# Debian's libvirt 9 in the same run, on the same machine), inside private
# namespaces: net-start / net-destroy CLI wall time (median of N back to back, and
# paced with 0.3 s idle before each call as the baseline's harness paces them), the
# kernel's own bridge deletion (the floor for destroy), and a scale run of N NAT
# networks (define; start all one after another, in one CLI call, from 8 parallel
# clients, and as the daemon's boot-time autostart; net-list --all; daemon RSS;
# destroy all). Prints the figures,
# the ratios to the targets, and the ratios to libvirt.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=50 scale=1000 vs_libvirt=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --scale) scale=$2; shift 2 ;;
    --vs-libvirt) vs_libvirt=1; shift ;;
    *) echo "usage: $0 [--runs N] [--scale N] [--vs-libvirt]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/net.sh: run as root (it creates namespaces)" >&2; exit 1; }
tools=()
[ "$vs_libvirt" = 1 ] && tools+=(libvirt-daemon libvirt-clients dnsmasq-base iptables)
scripts/install-deps.sh "${tools[@]}"
cargo build --release --bins -q
export BENCH_BIN=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release
out=$(mktemp -d)

bench/sandbox.sh kvnet -- bench/scenario.sh "$runs" "$scale" | tee "$out/kvnet"
if [ "$vs_libvirt" = 1 ]; then
  # Stock libvirt starts at most 128 networks (one inotify instance per dnsmasq);
  # the scale run still goes through all of them and counts the ones that started.
  bench/sandbox.sh libvirt -- bench/scenario.sh "$runs" "$scale" | tee "$out/libvirt"
fi

python3 - "$out" "$vs_libvirt" <<'PY'
import sys, pathlib
out, vs = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
def load(name):
    p = out / name
    return {k: float(v) for k, v in (l.split() for l in p.read_text().splitlines() if l.strip())} if p.exists() else {}
ours, lv = load("kvnet"), load("libvirt")
floor = ours.get("kernel_bridge_delete_ms", float("nan"))
targets = [
    ("net_start_ms", "net-start (median)", 5.0, "<= 5 ms"),
    ("net_destroy_ms", "net-destroy (median)", 1.25 * floor, f"<= 1.25 x kernel floor {floor:.1f} ms"),
    ("net_start_warm_ms", "net-start, another net up", 5.0, "<= 5 ms"),
    ("net_destroy_warm_ms", "net-destroy, another net up", 1.25 * floor, f"<= 1.25 x kernel floor {floor:.1f} ms"),
    ("net_start_paced_ms", "net-start, 0.3 s idle before", 5.0, "<= 5 ms"),
    ("net_destroy_paced_ms", "net-destroy, 0.3 s idle before", 1.25 * floor, f"<= 1.25 x kernel floor {floor:.1f} ms"),
    ("net_start_warm_paced_ms", "net-start, other net, idle", 5.0, "<= 5 ms"),
    ("net_destroy_warm_paced_ms", "net-destroy, other net, idle", 1.25 * floor, f"<= 1.25 x kernel floor {floor:.1f} ms"),
    ("scale_start_ms", "start all, 8 parallel clients", 2000.0, "<= 2000 ms"),
    ("boot_autostart_ms", "start all, boot autostart", 2000.0, "<= 2000 ms"),
    ("scale_start_seq_ms", "start all, one after another", 2000.0, "<= 2000 ms"),
    ("scale_start_session_ms", "start all, one CLI call", 2000.0, "<= 2000 ms"),
    ("net_list_all_ms", "net-list --all at scale", 10.0, "<= 10 ms"),
    ("daemon_rss_mb", "daemon RSS at scale (MB)", 50.0, "<= 50 MB"),
]
print()
print(f"{'measure':32} {'kvnet':>10} {'target':>30} {'met':>5}" + (f" {'libvirt':>10} {'libvirt/kvnet':>14}" if vs else ""))
for key, label, limit, text in targets:
    v = ours.get(key, float("nan"))
    row = f"{label:32} {v:10.2f} {text:>30} {'yes' if v <= limit else 'NO':>5}"
    if vs:
        l = lv.get(key, float("nan"))
        row += f" {l:10.2f} {l / v if v else float('nan'):14.1f}"
    print(row)
for key, label in [("scale_started_count", "started, one after another"),
                   ("scale_started_session_count", "started, one CLI call"),
                   ("scale_started_parallel_count", "started, parallel clients"),
                   ("boot_autostarted_count", "started, boot autostart")]:
    if key in ours or key in lv:
        print(f"{label:32} {ours.get(key, float('nan')):10.0f}" + (f" {'':>36} {lv.get(key, float('nan')):10.0f}" if vs else ""))
PY
rm -rf "$out"
