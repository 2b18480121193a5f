#!/bin/sh
# Builds a tiny initramfs for the real-kernel test: Debian's busybox-static plus an /init
# that mounts the basics, prints a marker line on the console and powers the VM off.
#
# usage: scripts/build-initramfs.sh OUTPUT.cpio.gz [MARKER]
#   MARKER defaults to KVNET-GUEST-READY. Needs apt-get and dpkg-deb (the archive is
#   written with the downloaded busybox's own cpio applet, so no cpio package is needed).
#   BUSYBOX_DEB=path/to/busybox-static_*.deb skips the download.
set -eu

out=${1:?usage: $0 OUTPUT.cpio.gz [MARKER]}
marker=${2:-KVNET-GUEST-READY}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

if [ -n "${BUSYBOX_DEB:-}" ]; then
    deb=$BUSYBOX_DEB
else
    # Downloading into a private temp dir: keep apt from dropping to _apt, which cannot
    # write there (and would only warn).
    (cd "$work" && apt-get -o APT::Sandbox::User=root download busybox-static >/dev/null)
    deb=$(ls "$work"/busybox-static_*.deb)
fi
dpkg-deb -x "$deb" "$work/pkg"
busybox=$work/pkg/bin/busybox
[ -x "$busybox" ] || { echo "build-initramfs: $deb holds no bin/busybox" >&2; exit 1; }

root=$work/root
mkdir -p "$root/bin" "$root/sbin" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
cat > "$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "$marker"
echo "kvnet: \$(nproc) cpus, \$(ls /sys/bus/pci/devices | wc -l) pci functions"
poweroff -f
INIT
chmod 755 "$root/init"

(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 > "$out"
echo "build-initramfs: wrote $out (marker $marker)"
