#!/bin/sh
# Builds a tiny initramfs for the real-kernel tests: Debian's busybox-static plus an /init
# that mounts the basics, prints a marker line on the console and powers the VM off.
#
# usage: scripts/build-initramfs.sh OUTPUT.cpio.gz [MARKER] [KERNEL]
#   MARKER defaults to KVNET-GUEST-READY. Needs apt-get and dpkg-deb (the archive is
#   written with the downloaded busybox's own cpio applet, so no cpio package is needed).
#   BUSYBOX_DEB=path/to/busybox-static_*.deb skips the download.
#
#   With KERNEL (the bzImage or vmlinux the VM boots), the archive also carries the
#   virtio_pci and virtio_net modules of that kernel and their dependencies (unless
#   built in), decompressed (needs xz or zstd for compressed modules), with their load
#   order in /etc/kvnet-modules. They come
#   from MODULES_DIR if set (a lib/modules/VERSION directory), else from
#   /lib/modules/VERSION, else from `apt-get download linux-image-VERSION`. VERSION is
#   read from the kernel image; KERNEL_VERSION=... overrides it.
#
# The init's network self-test runs when the kernel command line has kvnet.test=net:
# load the modules, bring eth0 up, `udhcpc` a lease, ping the DHCP server, and print
#   KVNET-NET-PASS ip=ADDR server=ADDR      or      KVNET-NET-FAIL <reason>
# on the console before powering off.
set -eu

out=${1:?usage: $0 OUTPUT.cpio.gz [MARKER] [KERNEL]}
marker=${2:-KVNET-GUEST-READY}
kernel=${3:-}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# Downloading into a private temp dir: keep apt from dropping to _apt, which cannot
# write there (and would only warn).
download() {
    (cd "$work" && apt-get -o APT::Sandbox::User=root download "$1" >/dev/null)
}

if [ -n "${BUSYBOX_DEB:-}" ]; then
    deb=$BUSYBOX_DEB
else
    download busybox-static
    deb=$(ls "$work"/busybox-static_*.deb)
fi
dpkg-deb -x "$deb" "$work/pkg"
busybox=$work/pkg/bin/busybox
[ -x "$busybox" ] || { echo "build-initramfs: $deb holds no bin/busybox" >&2; exit 1; }

root=$work/root
mkdir -p "$root/bin" "$root/sbin" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" \
    "$root/etc" "$root/lib/modules"
cp "$busybox" "$root/bin/busybox"
: > "$root/etc/kvnet-modules"

# The release string of a kernel image: from a bzImage's setup header (the
# kernel_version pointer at 0x20e, relative to 0x200), else from an uncompressed
# vmlinux's "Linux version" banner.
kernel_release() {
    if [ "$(dd if="$1" bs=1 skip=514 count=4 2>/dev/null)" = HdrS ]; then
        at=$(od -An -tu2 -j 526 -N 2 "$1" | tr -d ' ')
        dd if="$1" bs=1 skip=$((at + 512)) count=256 2>/dev/null | tr '\0' '\n' | head -n 1 |
            cut -d ' ' -f 1
    else
        grep -a -o -m 1 'Linux version [^ ]*' "$1" | head -n 1 | cut -d ' ' -f 3
    fi
}

# Unpacks module $1 (and, first, every module its .modinfo "depends=" names) into the
# archive and appends it to the load order; built-in modules are skipped. Reads the
# .ko files themselves: a packaged module tree has no modules.dep until depmod runs.
add_module() {
    local name file dep
    name=$1
    if grep -q "/$name\.ko$" "$moddir/modules.builtin" 2>/dev/null ||
        grep -qx "$name.ko" "$root/etc/kvnet-modules"; then
        return 0
    fi
    file=$(find "$moddir/kernel" \( -name "$name.ko*" -o -name "$(echo "$name" | tr _ -).ko*" \) |
        head -n 1)
    if [ -z "$file" ]; then
        echo "build-initramfs: $name is neither a module nor built into $ver" >&2
        exit 1
    fi
    case $file in
        *.xz) xz -dc "$file" ;;
        *.zst) zstd -dcq "$file" ;;
        *.gz) gzip -dc "$file" ;;
        *) cat "$file" ;;
    esac > "$work/$name.ko"
    for dep in $(tr '\0' '\n' < "$work/$name.ko" | sed -n 's/^depends=//p' | tr , ' '); do
        add_module "$dep"
    done
    mv "$work/$name.ko" "$root/lib/modules/$name.ko"
    echo "$name.ko" >> "$root/etc/kvnet-modules"
}

if [ -n "$kernel" ]; then
    ver=${KERNEL_VERSION:-$(kernel_release "$kernel")}
    [ -n "$ver" ] || { echo "build-initramfs: cannot tell the release of $kernel" >&2; exit 1; }
    if [ -n "${MODULES_DIR:-}" ]; then
        moddir=$MODULES_DIR
    elif [ -d "/lib/modules/$ver/kernel" ]; then
        moddir=/lib/modules/$ver
    else
        download "linux-image-$ver" || {
            echo "build-initramfs: no modules for $ver (set MODULES_DIR)" >&2
            exit 1
        }
        dpkg-deb -x "$(ls "$work"/linux-image-*.deb | head -n 1)" "$work/kpkg"
        moddir=$work/kpkg/lib/modules/$ver
    fi
    [ -d "$moddir/kernel" ] || { echo "build-initramfs: $moddir/kernel missing" >&2; exit 1; }
    add_module virtio_pci
    add_module virtio_net
    echo "build-initramfs: $ver modules: $(tr '\n' ' ' < "$root/etc/kvnet-modules")"
fi

cat > "$root/etc/udhcpc.script" <<'UDHCPC'
#!/bin/sh
case $1 in
    bound|renew)
        ip addr add "$ip/$mask" dev "$interface"
        echo "ip=$ip server=$serverid" > /tmp/lease
        ;;
esac
UDHCPC
chmod 755 "$root/etc/udhcpc.script"

cat > "$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "$marker"
echo "kvnet: \$(nproc) cpus, \$(ls /sys/bus/pci/devices | wc -l) pci functions"

net_test() {
    for m in \$(cat /etc/kvnet-modules); do
        insmod "/lib/modules/\$m" || echo "kvnet: insmod \$m failed"
    done
    tries=0
    while [ ! -e /sys/class/net/eth0 ]; do
        tries=\$((tries + 1))
        if [ \$tries -gt 15 ]; then
            echo "KVNET-NET-FAIL no eth0 after 15 s (have: \$(ls /sys/class/net | tr '\n' ' '))"
            return
        fi
        sleep 1
    done
    echo "kvnet: eth0 driver \$(basename "\$(readlink /sys/class/net/eth0/device/driver)")"
    ip link set lo up
    ip link set eth0 up
    if ! udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/udhcpc.script; then
        echo "KVNET-NET-FAIL no DHCP lease on eth0"
        grep -i virtio /proc/interrupts
        return
    fi
    . /tmp/lease
    if ping -c 3 -W 2 "\$server"; then
        echo "KVNET-NET-PASS ip=\$ip server=\$server"
    else
        echo "KVNET-NET-FAIL no answer from \$server"
    fi
    grep -i virtio /proc/interrupts
}

case " \$(cat /proc/cmdline) " in
    *" kvnet.test=net "*) net_test ;;
esac
poweroff -f
INIT
chmod 755 "$root/init"

(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 > "$out"
echo "build-initramfs: wrote $out (marker $marker)"
