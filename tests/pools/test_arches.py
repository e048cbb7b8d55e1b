"""Which architectures a host runs, and under which domain type: parsed from libvirt's
capabilities (pure, on a document shaped as libvirt writes it), and on the real
libvirtd of this x86_64 machine, which runs aarch64 guests (qemu-system-arm is
installed by deploy/bootstrap.sh) but only emulated."""

from __future__ import annotations

from pathlib import Path

import pytest

from pools.hypervisor import ImageFiles
from pools.libvirt.host import LibvirtHost, guest_arches, kvm_arches
from tests.conftest import LIBVIRT_URI
from vdi.domain import Arch, Firmware, ImageTraits, OsFamily

CAPS = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest><os_type>hvm</os_type>
    <arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>hvm</os_type>
    <arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>hvm</os_type>
    <arch name='aarch64'><domain type='qemu'/></arch></guest>
  <guest><os_type>hvm</os_type>
    <arch name='armv7l'><domain type='qemu'/></arch></guest>
</capabilities>"""


def test_the_arches_a_host_runs_and_those_it_runs_under_kvm() -> None:
    assert guest_arches(CAPS) == {Arch.X86_64, Arch.AARCH64}  # the ones desktops have
    assert kvm_arches(CAPS) == {Arch.X86_64}
    no_kvm = CAPS.replace("<domain type='kvm'/>", "")
    assert kvm_arches(no_kvm) == frozenset()


def files(arch: Arch) -> ImageFiles:
    return ImageFiles(disk_path="/nowhere.qcow2", disk_bytes=1,
                      traits=ImageTraits(Firmware.UEFI, OsFamily.LINUX, arch))


@pytest.mark.real
def test_an_aarch64_desktop_is_emulated_here_even_when_kvm_is_the_setting(
        tmp_path: Path) -> None:
    host = LibvirtHost(LIBVIRT_URI, storage_pool="vdi-test", storage_dir=tmp_path,
                       domain_type="kvm")
    try:
        facts = host.host_info()
        assert {Arch.X86_64, Arch.AARCH64} <= facts.arches, facts
        assert Arch.AARCH64 in facts.uefi_arches, "AAVMF (qemu-efi-aarch64) is missing"
        # decided from the capabilities alone: no probe guest is started for it
        assert host.domain_type(files(Arch.AARCH64)) == "qemu"
        assert host.domain_type(files(Arch.X86_64)) == "kvm"  # the setting, where offered
    finally:
        host.close()
