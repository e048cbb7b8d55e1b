"""Device profiles: which virtual hardware a desktop gets, from what its image declares,
its pool asks and its host runs. Pure: `profile_for` is a function of values, and each
combination is a row of tests/pools/test_profiles.py.

- x86_64: `q35`, SeaBIOS or OVMF (secure boot where the pool asks and the image
  supports it), virtio disk and NIC (SATA and e1000 for an image without virtio
  drivers), a USB tablet for an absolute pointer, the guest agent's channel.
- Windows: the clock in local time (Windows keeps the RTC so), and under KVM the
  Hyper-V enlightenments that keep it fast and its clock steady.
- KVM: the host's CPU model (`host-model`); TCG emulates its default.
- aarch64 (Kunpeng, Phytium): the `virt` machine, UEFI (AAVMF), virtio-gpu, and a USB
  tablet and keyboard on `qemu-xhci` (the machine has no PS/2).
- The video model fits the console: QXL for SPICE, VGA for VNC on x86 (text consoles
  and firmware screens draw on it), virtio-gpu on aarch64 (no VGA there).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vdi.domain import Arch, ConsoleKind, Firmware, ImageTraits, OsFamily


class ProfileError(ValueError):
    """The pool asks for something the image or host cannot do; the message says what."""


@dataclass(frozen=True)
class DeviceProfile:
    arch: Arch
    machine: str
    firmware: Firmware
    secure_boot: bool
    disk_bus: str  # virtio | sata
    nic_model: str  # virtio | e1000
    video: str  # vga | qxl | virtio
    usb_controller: str | None  # a model to add (qemu-xhci), None: the machine's own
    usb_keyboard: bool  # the machine has no PS/2 keyboard
    clock_localtime: bool
    hyperv: bool
    cpu_mode: str | None  # host-model | custom | None (the hypervisor's default)
    cpu_model: str | None  # for custom
    acpi: bool


# the CPU aarch64 guests get under TCG (under KVM: the host's own, host-passthrough is
# what Kunpeng hosts run; host-model is refused on aarch64 by libvirt 9)
AARCH64_TCG_CPU = "cortex-a57"


def profile_for(traits: ImageTraits, console: ConsoleKind, domain_type: str,
                secure_boot: bool = False) -> DeviceProfile:
    """The devices of a desktop of this image, console kind and domain type ('kvm' or
    'qemu' for TCG). Raises ProfileError for secure boot on an image that cannot do it."""
    if secure_boot and (traits.firmware is not Firmware.UEFI or not traits.secure_boot):
        raise ProfileError("secure boot needs a UEFI image that supports it (import the "
                           "image with --secure-boot if its bootloader is signed)")
    kvm = domain_type == "kvm"
    windows = traits.os_family is OsFamily.WINDOWS
    virtio = traits.virtio
    if traits.arch is Arch.AARCH64:
        return DeviceProfile(
            arch=Arch.AARCH64, machine="virt", firmware=Firmware.UEFI,
            secure_boot=secure_boot, disk_bus="virtio" if virtio else "scsi",
            nic_model="virtio" if virtio else "e1000", video="virtio",
            usb_controller="qemu-xhci", usb_keyboard=True, clock_localtime=windows,
            hyperv=False, cpu_mode="host-passthrough" if kvm else "custom",
            cpu_model=None if kvm else AARCH64_TCG_CPU, acpi=True)
    return DeviceProfile(
        arch=Arch.X86_64, machine="q35", firmware=traits.firmware, secure_boot=secure_boot,
        disk_bus="virtio" if virtio else "sata", nic_model="virtio" if virtio else "e1000",
        video="qxl" if console is ConsoleKind.SPICE else "vga", usb_controller=None,
        usb_keyboard=False, clock_localtime=windows, hyperv=windows and kvm,
        cpu_mode="host-model" if kvm else None, cpu_model=None, acpi=True)


def desktop_mac(desktop_id: str) -> str:
    """The desktop's own MAC address, the same on every start, revert and migration (a
    DHCP reservation or a licence bound to it holds): locally administered, unicast."""
    digest = hashlib.sha256(b"vdi-desktop-mac\0" + desktop_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x52, *digest[:5]))
