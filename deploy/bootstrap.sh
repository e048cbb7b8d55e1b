#!/usr/bin/env bash
# Installs and starts the system parts the broker needs on a Debian 12 machine, as root.
# Idempotent: what is installed is not installed again, what runs is not restarted.
#   - Debian packages: libvirt + QEMU, OpenLDAP slapd, PostgreSQL (the tests and the
#     login benchmark start their own servers with deploy/postgres/), Chromium and a CJK
#     font for the browser tests, the tools the guest image builder uses, QEMU for
#     x86_64 and aarch64 desktops
#   - libvirtd (and virtlogd) started without systemd when they are not running
set -euo pipefail
packages=(
  libvirt-daemon-system libvirt-clients libvirt-dev pkg-config qemu-system-x86 qemu-utils
  dnsmasq-base slapd ldap-utils postgresql chromium fonts-noto-cjk busybox-static cpio e2fsprogs
  xz-utils gettext
  # the guest image builder: bootable disks (MBR + syslinux, GPT + systemd-boot), the
  # host's guest agent (which libraries the guest's links), depmod for the kernel's
  # module dependencies; OVMF is the UEFI firmware libvirt boots UEFI desktops with
  syslinux syslinux-common mtools dosfstools fdisk qemu-guest-agent kmod ovmf
  # aarch64 desktops (ARM64 hosts: Kunpeng, Phytium), emulated here: QEMU and AAVMF
  qemu-system-arm qemu-efi-aarch64
  # xmllint: virt-xml-validate (libvirt-clients, schemas from libvirt0) runs it to check
  # the domain documents in tests/pools/test_domain_xml.py; Debian does not pull it in
  libxml2-utils
)
if [[ $(id -u) -ne 0 ]]; then
  echo "bootstrap: run as root (it installs Debian packages and starts libvirtd)" >&2
  exit 1
fi
# The aarch64 guest image is built from Debian's arm64 packages (kernel, busybox, agent).
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "bootstrap: enabling Debian's arm64 packages (for the aarch64 guest image)"
  dpkg --add-architecture arm64
  apt-get update -q >/dev/null
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # slapd's own database is not used (the project runs its own slapd from a config file).
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# Without udev, /dev/kvm stays root-only; libvirt then re-probes QEMU on every domain
# start (about a minute each). Give it the group udev would.
if [[ -e /dev/kvm ]] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
mkdir -p /var/log/libvirt /var/run/libvirt
if ! pgrep -x virtlogd >/dev/null; then virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then
  libvirtd -d
fi
for _ in $(seq 1 50); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "bootstrap: libvirtd is running"
    exit 0
  fi
  sleep 0.2
done
echo "bootstrap: libvirtd did not come up; see /var/log/libvirt/libvirtd.log" >&2
exit 1
