#!/usr/bin/env bash
# Builds the demo desktop image from Debian packages only (no other download):
#   OUT/vmlinuz      the Debian kernel (linux-image-amd64's versioned package)
#   OUT/initrd.img   busybox-static + the modules needed to mount the disk
#   OUT/disk.qcow2   an ext4 filesystem holding the desktop's files (the golden image)
#   OUT/cmdline      the kernel command line to boot it with
# The guest boots to a shell on the VGA console (tty1) in about 2 s under TCG, mounts its
# disk at /desk and prints "VDI-READY" to the serial port.
# Idempotent: an existing, complete OUT is kept (delete it to rebuild).
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Bump when /init or the disk layout changes, so existing builds are redone.
INIT_REVISION=3
if [[ -s $out/vmlinuz && -s $out/initrd.img && -s $out/disk.qcow2 && -s $out/cmdline &&
      -s $out/VERSION ]] &&
   grep -q "init-$INIT_REVISION\$" "$out/VERSION"; then
  echo "guest image: up to date in $out"
  exit 0
fi
for tool in apt-get dpkg-deb cpio mkfs.ext4 qemu-img gzip; do
  command -v "$tool" >/dev/null || { echo "build-image: '$tool' is missing (run deploy/bootstrap.sh)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $kpkg ]] || { echo "build-image: cannot resolve linux-image-amd64 (run apt-get update)" >&2; exit 1; }
echo "guest image: fetching $kpkg and busybox-static from the Debian archive"
# apt's sandbox user cannot write here; download as root on purpose.
apt-get download -o APT::Sandbox::User=root "$kpkg" busybox-static >/dev/null
dpkg-deb -x "$(ls "$kpkg"_*.deb)" kernel
dpkg-deb -x "$(ls busybox-static_*.deb)" bb
kver=${kpkg#linux-image-}
mods=kernel/lib/modules/$kver/kernel

root=initramfs
mkdir -p $root/{bin,dev,proc,sys,desk,lib/modules,tmp}
cp bb/bin/busybox $root/bin/busybox
# Load order matters: dependencies first. Some may be built in; insmod failing on those is fine.
order=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
       crc16 mbcache jbd2 crc32c_generic libcrc32c ext4)
for m in "${order[@]}"; do
  f=$(find "$mods" -name "$m.ko" -o -name "$m.ko.xz" | head -n1)
  [[ -n $f ]] || { echo "build-image: module $m not in $kpkg" >&2; exit 1; }
  case $f in
    *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
done
printf '%s\n' "${order[@]}" > $root/lib/modules/order
cat > $root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko 2>/dev/null || grep -q "^$m " /proc/modules || echo "VDI: module $m not loaded" > /dev/ttyS0
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
# ext4 needs crc32c, whose self-test may still be running on a busy host: retry a while.
i=0
until mount -t ext4 /dev/vda /desk 2>/dev/null; do
  i=$((i+1))
  [ $i -ge 40 ] && break
  sleep 0.25
done
if grep -q " /desk " /proc/mounts; then
  echo "VDI-DISK-OK" > /dev/ttyS0
else
  mount -t ext4 /dev/vda /desk 2>&1 | sed 's/^/VDI: /' > /dev/ttyS0
  echo "VDI-DISK-MISSING" > /dev/ttyS0
fi
hostname "$(cat /desk/etc/hostname 2>/dev/null || echo desktop)"
export HOME=/desk/home/clerk PS1='desktop:\w# ' PATH=/bin
[ -d "$HOME" ] && cd "$HOME"
echo "VDI-READY" > /dev/ttyS0
while true; do
  clear > /dev/tty1
  cat /desk/etc/motd > /dev/tty1 2>/dev/null
  setsid sh -c 'exec sh -i </dev/tty1 >/dev/tty1 2>&1'
done
INIT
chmod +x $root/init
(cd $root && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.img.tmp"
cp "kernel/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"

disk=diskroot
mkdir -p $disk/etc $disk/home/clerk
echo desktop > $disk/etc/hostname
cat > $disk/etc/motd <<'MOTD'
 VDI demo desktop -- street office service window
 Your files live in /desk/home/clerk and survive a reconnect.
MOTD
echo "Welcome. This file came with the golden image." > $disk/home/clerk/README.txt
truncate -s 64M disk.raw
mkfs.ext4 -q -F -L desk -d $disk disk.raw
qemu-img convert -f raw -O qcow2 disk.raw "$out/disk.qcow2.tmp"
# no_timer_check: a busy TCG host can fail the kernel's IO-APIC timer check and panic it.
echo "console=tty0 console=ttyS0 quiet no_timer_check" > "$out/cmdline"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/disk.qcow2.tmp" "$out/disk.qcow2"
echo "$kver busybox $(dpkg-deb -f busybox-static_*.deb Version) init-$INIT_REVISION" > "$out/VERSION"
echo "guest image: built in $out ($(cat "$out/VERSION"))"
