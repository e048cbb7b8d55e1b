"""pools.libvirt.profiles: one row per (image traits, console, domain type, secure boot),
and the devices each gets. Every row's document is validated against libvirt's schema."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pools.libvirt.domain_xml import DomainSpec, Nic, build_domain_xml
from pools.libvirt.profiles import (
    AARCH64_TCG_CPU,
    DeviceProfile,
    ProfileError,
    desktop_mac,
    profile_for,
)
from vdi.domain import Arch, ConsoleKind, Firmware, ImageTraits, OsFamily

LINUX_BIOS = ImageTraits(Firmware.BIOS, OsFamily.LINUX)
LINUX_UEFI = ImageTraits(Firmware.UEFI, OsFamily.LINUX)
WIN_UEFI_SB = ImageTraits(Firmware.UEFI, OsFamily.WINDOWS, secure_boot=True)
WIN_BIOS_NO_VIRTIO = ImageTraits(Firmware.BIOS, OsFamily.WINDOWS, virtio=False)
ARM = ImageTraits(Firmware.UEFI, OsFamily.LINUX, arch=Arch.AARCH64)
VNC, SPICE = ConsoleKind.VNC, ConsoleKind.SPICE

# (label, traits, console, domain type, secure boot) -> the profile's fields
ROWS: list[tuple[str, ImageTraits, ConsoleKind, str, bool, DeviceProfile]] = [
    ("linux-bios-vnc-tcg", LINUX_BIOS, VNC, "qemu", False, DeviceProfile(
        Arch.X86_64, "q35", Firmware.BIOS, False, "virtio", "virtio", "vga", None, False,
        False, False, None, None, True)),
    ("linux-bios-vnc-kvm", LINUX_BIOS, VNC, "kvm", False, DeviceProfile(
        Arch.X86_64, "q35", Firmware.BIOS, False, "virtio", "virtio", "vga", None, False,
        False, False, "host-model", None, True)),
    ("linux-uefi-spice-tcg", LINUX_UEFI, SPICE, "qemu", False, DeviceProfile(
        Arch.X86_64, "q35", Firmware.UEFI, False, "virtio", "virtio", "qxl", None, False,
        False, False, None, None, True)),
    ("windows-uefi-spice-kvm-secure-boot", WIN_UEFI_SB, SPICE, "kvm", True, DeviceProfile(
        Arch.X86_64, "q35", Firmware.UEFI, True, "virtio", "virtio", "qxl", None, False,
        True, True, "host-model", None, True)),
    ("windows-uefi-vnc-tcg-no-hyperv", WIN_UEFI_SB, VNC, "qemu", False, DeviceProfile(
        Arch.X86_64, "q35", Firmware.UEFI, False, "virtio", "virtio", "vga", None, False,
        True, False, None, None, True)),
    ("windows-bios-without-virtio-kvm", WIN_BIOS_NO_VIRTIO, VNC, "kvm", False, DeviceProfile(
        Arch.X86_64, "q35", Firmware.BIOS, False, "sata", "e1000", "vga", None, False,
        True, True, "host-model", None, True)),
    ("aarch64-vnc-tcg", ARM, VNC, "qemu", False, DeviceProfile(
        Arch.AARCH64, "virt", Firmware.UEFI, False, "virtio", "virtio", "virtio",
        "qemu-xhci", True, False, False, "custom", AARCH64_TCG_CPU, True)),
    ("aarch64-spice-kvm", ARM, SPICE, "kvm", False, DeviceProfile(
        Arch.AARCH64, "virt", Firmware.UEFI, False, "virtio", "virtio", "virtio",
        "qemu-xhci", True, False, False, "host-passthrough", None, True)),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_profile_row(row: tuple[str, ImageTraits, ConsoleKind, str, bool, DeviceProfile],
                     tmp_path: Path) -> None:
    _, traits, console, dtype, secure, expected = row
    profile = profile_for(traits, console, dtype, secure)
    assert profile == expected
    spec = DomainSpec(name="vdi-p-1", domain_type=dtype, desktop_id="d-1", pool_id="p",
                      vcpus=1, memory_mib=1024, profile=profile, disk_path="/s/d.qcow2",
                      serial_log_path="/l/d.log", console=console, listen="127.0.0.1",
                      console_password="x1y2z3w4", nic=Nic("user", "", desktop_mac("d-1")),
                      seed_path="/s/d-seed.iso")
    path = tmp_path / "domain.xml"
    path.write_text(build_domain_xml(spec), encoding="utf-8")
    done = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{path.read_text()}"


@pytest.mark.parametrize("traits", [LINUX_BIOS, LINUX_UEFI],
                         ids=["bios-image", "uefi-image-not-signed"])
def test_secure_boot_only_where_the_image_can(traits: ImageTraits) -> None:
    with pytest.raises(ProfileError, match="secure boot needs a UEFI image"):
        profile_for(traits, VNC, "kvm", secure_boot=True)


def test_a_desktop_keeps_its_mac_address() -> None:
    mac = desktop_mac("window-0001")
    assert mac == desktop_mac("window-0001")  # every start, revert and migration
    assert mac != desktop_mac("window-0002")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast
    assert len({desktop_mac(f"d-{i}") for i in range(5000)}) == 5000
