#!/usr/bin/env bash
# Builds the demo and test desktop images from Debian packages only (no other download):
# whole disks that boot through firmware, as a district's golden image does.
#   OUT/bios.qcow2   MBR partition table, syslinux (SeaBIOS boots it)
#   OUT/uefi.qcow2   GPT with an EFI system partition holding systemd-boot (OVMF boots it)
#   OUT/aarch64.qcow2  the same as uefi.qcow2 for ARM64 hosts (AAVMF boots it): Debian's
#                    arm64 kernel, busybox and guest agent (`dpkg --add-architecture arm64`)
# All carry a Debian kernel and a busybox initramfs that loads the virtio, SATA,
# e1000, FAT and ISO 9660 drivers, starts the QEMU guest agent (the broker's "the desktop
# is up" signal), asks DHCP for an address on every network card, takes its hostname from
# a cloud-init NoCloud seed (a volume labelled `cidata`) when one is attached, mounts the
# desktop's files (the ext4 partition labelled `desk`) at /desk and keeps a shell on the
# screen (tty1; on aarch64 drawn by virtio-gpu, with a USB keyboard on xhci). "VDI-READY"
# goes to the serial port (ttyS0, ttyAMA0 on aarch64; /run/serial links to it) once the
# agent runs.
# About 10 s from power-on to the agent answering under TCG (x86_64).
# Idempotent: an existing, complete OUT is kept (delete it to rebuild).
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Bump when the guest's init or the disk layout changes, so existing builds are redone.
REVISION=disk-2
if [[ -s $out/bios.qcow2 && -s $out/uefi.qcow2 && -s $out/aarch64.qcow2 && -s $out/VERSION ]] &&
   grep -q " $REVISION\$" "$out/VERSION"; then
  echo "guest image: up to date in $out"
  exit 0
fi
for tool in apt-get apt-cache dpkg dpkg-deb cpio mkfs.ext4 mkfs.vfat mcopy mmd syslinux sfdisk \
            qemu-img gzip ldd depmod; do
  command -v "$tool" >/dev/null || { echo "build-image: '$tool' is missing (run deploy/bootstrap.sh)" >&2; exit 1; }
done
QGA=/usr/sbin/qemu-ga  # the host's agent: which shared libraries the guest's one links
MBR=/usr/lib/syslinux/mbr/mbr.bin
for f in "$QGA" "$MBR"; do
  [[ -f $f ]] || { echo "build-image: $f is missing (run deploy/bootstrap.sh)" >&2; exit 1; }
done
dpkg --print-foreign-architectures | grep -qx arm64 ||
  { echo "build-image: Debian's arm64 packages are not enabled (run deploy/bootstrap.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

fetch() {  # fetch ARCH PACKAGE...: download the packages of ARCH and unpack them into ARCH/pkgs
  local arch=$1; shift
  mkdir -p "$arch/debs" "$arch/pkgs"
  # apt's sandbox user cannot write here; download as root on purpose.
  (cd "$arch/debs" && apt-get download -o APT::Sandbox::User=root "${@/%/:$arch}" >/dev/null) ||
    { echo "build-image: cannot download $* for $arch (run apt-get update)" >&2; exit 1; }
  local deb
  for deb in "$arch"/debs/*.deb; do dpkg-deb -x "$deb" "$arch/pkgs"; done
}

# The packages holding the libraries the host's qemu-ga links (the same for every arch).
agent_lib_packages() {
  local lib real
  for lib in $(ldd "$QGA" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'); do
    real=$(readlink -f "$lib")
    { dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}"; } | head -1 | cut -d: -f1
  done | sort -u
}

build_boot() {  # build_boot ARCH: ARCH/vmlinuz and ARCH/initrd.img
  local arch=$1 triplet serial wanted
  case $arch in
    amd64) triplet=x86_64-linux-gnu; serial=ttyS0
      # crc32c_generic first: ext4 asks the crypto API for crc32c, which modules.dep
      # does not say
      wanted=(crc32c_generic virtio_pci virtio_blk virtio_net virtio_console ext4 ahci sd_mod
              sr_mod e1000 vfat nls_cp437 nls_ascii nls_utf8 isofs) ;;
    arm64) triplet=aarch64-linux-gnu; serial=ttyAMA0
      # no VGA text console and no PS/2 there: virtio-gpu draws tty1, the keyboard and
      # tablet are USB devices on xhci; the seed is a CD-ROM on virtio-scsi
      wanted=(crc32c_generic virtio_pci virtio_blk virtio_net virtio_console virtio_scsi ext4
              sd_mod sr_mod virtio-gpu xhci-pci usbhid hid-generic vfat nls_cp437 nls_ascii
              nls_utf8 isofs) ;;
  esac
  local kpkg
  kpkg=$(apt-cache depends "linux-image-$arch:$arch" |
         awk '/Depends: linux-image-[0-9]/ {sub(/:.*/, "", $2); print $2; exit}')
  [[ -n $kpkg ]] || { echo "build-image: cannot resolve linux-image-$arch (run apt-get update)" >&2; exit 1; }
  echo "guest image: fetching $kpkg, busybox-static and qemu-guest-agent ($arch) from the Debian archive"
  fetch "$arch" "$kpkg" busybox-static qemu-guest-agent $(agent_lib_packages)
  local kver=${kpkg#linux-image-} pkgs=$arch/pkgs
  local moddir=$pkgs/lib/modules/$kver
  depmod -b "$PWD/$pkgs" "$kver"  # the package leaves modules.dep to its install script
  local root=$arch/initramfs
  mkdir -p $root/{bin,sbin,dev,proc,sys,run,tmp,desk,seed,lib/modules,usr/share/udhcpc}
  cp "$pkgs/bin/busybox" $root/bin/busybox

  # --- drivers, with what each needs, in load order (from the kernel's modules.dep) ---
  declare -A seen=()
  local order=()
  add_module() {  # add $1 after its dependencies (modules.dep lists them, last loads first)
    local name=$1 line path deps d
    line=$(grep -E "(^|/)$name\.ko(\.xz)?:" "$moddir/modules.dep" || true)
    if [[ -z $line ]]; then
      grep -qE "(^|/)$name\.ko$" "$moddir/modules.builtin" && return 0
      echo "build-image: module $name is not in $kpkg" >&2; exit 1
    fi
    path=${line%%:*}
    [[ -n ${seen[$path]:-} ]] && return 0
    deps=(${line#*:})
    for (( d=${#deps[@]}-1; d>=0; d-- )); do
      local dep=${deps[$d]##*/}; dep=${dep%.xz}; add_module "${dep%.ko}"
    done
    seen[$path]=1
    order+=("$path")
  }
  local m path base
  for m in "${wanted[@]}"; do add_module "$m"; done
  : > $root/lib/modules/order
  for path in "${order[@]}"; do
    base=${path##*/}; base=${base%.xz}
    case $path in
      *.xz) xz -dc "$moddir/$path" > "$root/lib/modules/$base" ;;
      *) cp "$moddir/$path" "$root/lib/modules/$base" ;;
    esac
    echo "$base" >> $root/lib/modules/order
  done

  # --- the QEMU guest agent of this arch, with the shared libraries it links ---
  cp "$pkgs/usr/sbin/qemu-ga" $root/sbin/qemu-ga
  mkdir -p "$root/lib/$triplet"
  local lib name found
  for lib in $(ldd "$QGA" | awk '/=> \// {print $3}'); do
    name=${lib##*/}
    found=$(find "$pkgs/lib/$triplet" "$pkgs/usr/lib/$triplet" -name "$name" 2>/dev/null | head -1)
    [[ -n $found ]] || { echo "build-image: $name ($arch) not found for the guest agent" >&2; exit 1; }
    cp -L "$found" "$root/lib/$triplet/$name"
  done
  local loader
  for loader in "$pkgs"/lib/"$triplet"/ld-linux-*.so.*; do
    cp -L "$loader" "$root/lib/$triplet/"
  done
  case $arch in  # where the binaries ask for their loader
    amd64) mkdir -p $root/lib64; ln -s "../lib/$triplet/ld-linux-x86-64.so.2" $root/lib64/ ;;
    arm64) ln -s "$triplet/ld-linux-aarch64.so.1" $root/lib/ ;;
  esac
  # qemu-ga powers off and sets the clock through these commands
  printf '#!/bin/sh\nsync\nexec /bin/poweroff -f\n' > $root/sbin/shutdown
  chmod +x $root/sbin/shutdown
  ln -s /bin/busybox $root/sbin/hwclock

  cat > $root/usr/share/udhcpc/default.script <<'DHCP'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "VDI-ADDRESS $interface $ip" > /run/serial ;;
esac
exit 0
DHCP
  chmod +x $root/usr/share/udhcpc/default.script

  sed "s/@SERIAL@/$serial/" > $root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ln -s /dev/@SERIAL@ /run/serial
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m 2>/dev/null || grep -q "^$(echo ${m%.ko} | tr - _) " /proc/modules ||
    echo "VDI: module $m not loaded" > /run/serial
done
# the desktop's files: the partition labelled desk (virtio or SATA); ext4 needs crc32c,
# whose self-test may still run on a busy host: retry a while
i=0
until dev=$(findfs LABEL=desk 2>/dev/null) && mount -t ext4 "$dev" /desk 2>/dev/null; do
  i=$((i+1)); [ $i -ge 80 ] && break; sleep 0.25
done
if grep -q " /desk " /proc/mounts; then echo "VDI-DISK-OK" > /run/serial
else echo "VDI-DISK-MISSING" > /run/serial; fi
# identity: a NoCloud seed (label cidata) names the desktop; else the image's name
name=$(cat /desk/etc/hostname 2>/dev/null || echo desktop)
seed=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null || true)
if [ -n "$seed" ] && { mount -r -t iso9660 "$seed" /seed 2>/dev/null ||
                       mount -r -t vfat "$seed" /seed 2>/dev/null; }; then
  given=$(sed -n 's/^local-hostname:[ "]*\([^ "]*\).*/\1/p' /seed/meta-data 2>/dev/null)
  [ -n "$given" ] && name=$given
fi
hostname "$name"
echo "VDI-HOSTNAME $name" > /run/serial
for n in /sys/class/net/*; do
  i=${n##*/}; [ "$i" = lo ] && continue
  ip link set "$i" up
  udhcpc -b -q -t 20 -i "$i" -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
done
ip link set lo up
# the guest agent on its virtio port (found by name), the broker's readiness signal
for p in /sys/class/virtio-ports/*; do
  if [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
    /sbin/qemu-ga -m virtio-serial -p "/dev/${p##*/}" -d -t /run -f /run/qemu-ga.pid
  fi
done
export HOME=/desk/home/clerk PS1='desktop:\w# ' PATH=/bin:/sbin
[ -d "$HOME" ] && cd "$HOME"
echo "VDI-READY" > /run/serial
# tty1 appears once the screen's driver is up (at once on x86, virtio-gpu on aarch64)
i=0
until [ -c /dev/tty1 ] || [ $i -ge 40 ]; do i=$((i+1)); sleep 0.25; done
while true; do
  clear > /dev/tty1
  cat /desk/etc/motd > /dev/tty1 2>/dev/null
  echo " $(hostname)" > /dev/tty1
  setsid sh -c 'exec sh -i </dev/tty1 >/dev/tty1 2>&1'
done
INIT
  chmod +x $root/init
  (cd $root && find . | cpio -o -H newc --quiet | gzip -9) > "$arch/initrd.img"
  cp "$pkgs/boot/vmlinuz-$kver" "$arch/vmlinuz"  # arm64's is an EFI-stub Image as it is
  echo "$kver" > "$arch/kver"
  echo "$(dpkg-deb -f "$(ls "$arch"/debs/busybox-static_*.deb)" Version)" > "$arch/busybox"
}

build_boot amd64
build_boot arm64

# --- the desktop's files: an ext4 partition ---
files=diskroot
mkdir -p $files/etc $files/home/clerk
echo desktop > $files/etc/hostname
cat > $files/etc/motd <<'MOTD'
 VDI demo desktop -- street office service window
 Your files live in /desk/home/clerk and survive a reconnect.
MOTD
echo "Welcome. This file came with the golden image." > $files/home/clerk/README.txt
truncate -s 32M desk.ext4
mkfs.ext4 -q -F -L desk -d $files desk.ext4

boot_mib=40  # kernel + initramfs, with room to spare
desk_start=$(( (1 + boot_mib) * 2048 ))  # sectors of 512 bytes; 1 MiB aligned
total_mib=$(( 1 + boot_mib + 32 + 1 ))   # the last MiB keeps GPT's backup header
# no_timer_check: a busy TCG host can fail the kernel's IO-APIC timer check and panic it.
cmdline_amd64="console=tty0 console=ttyS0 quiet no_timer_check"
cmdline_arm64="console=tty0 console=ttyAMA0 quiet"

# BIOS: MBR, a bootable FAT partition with syslinux, then the desk partition
truncate -s ${boot_mib}M boot-bios.fat
mkfs.vfat -n VDIBOOT boot-bios.fat >/dev/null
mcopy -i boot-bios.fat amd64/vmlinuz amd64/initrd.img ::/
cat > syslinux.cfg <<CFG
DEFAULT desk
TIMEOUT 0
PROMPT 0
LABEL desk
  KERNEL /vmlinuz
  APPEND initrd=/initrd.img $cmdline_amd64
CFG
mcopy -i boot-bios.fat syslinux.cfg ::/
syslinux --install boot-bios.fat
truncate -s ${total_mib}M bios.raw
sfdisk -q bios.raw <<PART
label: dos
start=2048, size=$((boot_mib * 2048)), type=c, bootable
start=$desk_start, size=$((32 * 2048)), type=83
PART
dd if=boot-bios.fat of=bios.raw bs=512 seek=2048 conv=notrunc status=none
dd if=desk.ext4 of=bios.raw bs=512 seek=$desk_start conv=notrunc status=none
dd if="$MBR" of=bios.raw bs=440 count=1 conv=notrunc status=none

# UEFI: GPT, an EFI system partition with systemd-boot (of the disk's arch, at the
# removable-media path the firmware looks for), then the desk partition
fetch arm64 systemd-boot-efi
fetch amd64 systemd-boot-efi
uefi_disk() {  # uefi_disk ARCH EFI-NAME OUT.raw
  local arch=$1 efi=$2 raw=$3 cmdline=cmdline_$1
  local sdboot=$arch/pkgs/usr/lib/systemd/boot/efi/systemd-boot${efi,,}.efi
  [[ -f $sdboot ]] || { echo "build-image: $sdboot is missing from systemd-boot-efi ($arch)" >&2; exit 1; }
  truncate -s ${boot_mib}M "$arch/esp.fat"
  mkfs.vfat -n VDIESP "$arch/esp.fat" >/dev/null
  mmd -i "$arch/esp.fat" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
  mcopy -i "$arch/esp.fat" "$sdboot" "::/EFI/BOOT/BOOT$efi.EFI"
  mcopy -i "$arch/esp.fat" "$arch/vmlinuz" "$arch/initrd.img" ::/
  printf 'default desk\ntimeout 0\n' > "$arch/loader.conf"
  printf 'title VDI desktop\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
    "${!cmdline}" > "$arch/desk.conf"
  mcopy -i "$arch/esp.fat" "$arch/loader.conf" ::/loader/loader.conf
  mcopy -i "$arch/esp.fat" "$arch/desk.conf" ::/loader/entries/desk.conf
  truncate -s ${total_mib}M "$raw"
  sfdisk -q "$raw" <<PART
label: gpt
start=2048, size=$((boot_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
start=$desk_start, size=$((32 * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
PART
  dd if="$arch/esp.fat" of="$raw" bs=512 seek=2048 conv=notrunc status=none
  dd if=desk.ext4 of="$raw" bs=512 seek=$desk_start conv=notrunc status=none
}
uefi_disk amd64 X64 uefi.raw
uefi_disk arm64 AA64 aarch64.raw

for disk in bios uefi aarch64; do
  qemu-img convert -f raw -O qcow2 $disk.raw "$out/$disk.qcow2.tmp"
done
for disk in bios uefi aarch64; do mv "$out/$disk.qcow2.tmp" "$out/$disk.qcow2"; done
rm -f "$out/vmlinuz" "$out/initrd.img" "$out/disk.qcow2" "$out/cmdline"  # older layout
echo "$(cat amd64/kver) $(cat arm64/kver) busybox $(cat amd64/busybox) $REVISION" > "$out/VERSION"
echo "guest image: built in $out ($(cat "$out/VERSION"))"
