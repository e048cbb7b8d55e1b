"""`Admin.import_image` against the real libvirtd: a good image lands on the host with its
digest checked there; a hostile or broken one, or one larger than the storage left, is
refused with its reason, audited, and leaves nothing behind.

Hostile images point at decoys this test makes (random markers): the decoys must be
unchanged, and no volume of the host's storage nor the broker's image library may hold a
marker afterwards."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.admin import Admin, AdminRefused
from harness.guest import guest_disk
from pools.hosts import Host
from pools.hypervisor import Hypervisor, ImageDisk
from pools.imports import ImportOptions
from pools.libvirt.host import LibvirtHost
from tests.conftest import LIBVIRT_URI, TEST_STORAGE_DIR, DomainNames
from tests.nshost import lone_host
from vdi.domain import Arch, Firmware
from vdi.models import AuditRow, ImageRow

pytestmark = pytest.mark.real

AARCH64_EMULATOR = "/usr/bin/qemu-system-aarch64"


def record(host: LibvirtHost, name: str = "local") -> Host:
    return Host(uri=host.uri, name=name, graphics_listen="127.0.0.1",
                storage_pool="vdi-test", storage_dir=str(TEST_STORAGE_DIR), log_dir="")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def holds(path: Path, marker: bytes) -> bool:
    return path.is_file() and marker in path.read_bytes()


@pytest.fixture
def admin(db: sessionmaker[Session]) -> Admin:
    return Admin(db, actor="cli:test")


def test_a_raw_disk_is_imported_and_checked_on_the_host(
        admin: Admin, libvirt_host: LibvirtHost, guest_image: ImageDisk,
        domain_names: DomainNames, tmp_path: Path, db: sessionmaker[Session]) -> None:
    raw = tmp_path / "window10.img"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(guest_image.path),
                    str(raw)], check=True, timeout=120)
    image_id = f"{domain_names.prefix}raw"
    stages: list[str] = []
    done = admin.import_image(image_id, raw, ImportOptions(), [(record(libvirt_host),
                              libvirt_host)], tmp_path / "library",
                              lambda stage, pct: stages.append(stage))
    assert done.version == 1
    assert done.prepared.disk.traits.firmware is Firmware.BIOS
    assert done.prepared.disk.disk_bytes == guest_image.disk_bytes
    [copy] = done.copies
    on_host = Path(copy.files.disk_path)
    assert on_host.parent == TEST_STORAGE_DIR and on_host.name.startswith(f"{image_id}-v1-")
    assert sha(on_host) == done.prepared.disk.digest  # the host's copy is the converted file
    assert {"check", "convert", "digest", "upload:local"} <= set(stages)
    again = admin.import_image(image_id, raw, ImportOptions(),
                               [(record(libvirt_host), libvirt_host)], tmp_path / "library")
    assert again.version == 1  # the same file: the same version
    with db() as s:
        assert len(list(s.scalars(select(ImageRow).where(ImageRow.id == image_id)))) == 1


def hostile_files(tmp: Path) -> Iterator[tuple[str, Path, str, Path]]:
    """(label, the image, the reason expected, its decoy)."""
    decoy = tmp / "decoy-backing.raw"
    decoy.write_bytes(b"")
    backing = tmp / "backing.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(decoy), "-F", "raw",
                    str(backing), "1M"], check=True)
    yield "backing-file", backing, "backing file", decoy
    data_decoy = tmp / "decoy-data.raw"
    datafile = tmp / "datafile.qcow2"
    # creating it zero-fills the data file: the decoy gets its marker only afterwards
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={data_decoy},data_file_raw=on", str(datafile), "1M"],
                   check=True)
    yield "data-file", datafile, "external data file", data_decoy
    flat_decoy = tmp / "decoy-flat.raw"
    flat = tmp / "descriptor.vmdk"
    flat.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                    f'createType="monolithicFlat"\nRW 2048 FLAT "{flat_decoy}" 0\n')
    yield "vmdk-extent", flat, "vmdk descriptor", flat_decoy


def test_hostile_and_broken_images_are_refused_and_leave_nothing(
        admin: Admin, libvirt_host: LibvirtHost, guest_image: ImageDisk,
        domain_names: DomainNames, tmp_path: Path, db: sessionmaker[Session]) -> None:
    library = tmp_path / "library"
    targets: list[tuple[Host, Hypervisor]] = [(record(libvirt_host), libvirt_host)]
    marker = b"VDI-DECOY-" + secrets.token_hex(16).encode()
    cases = list(hostile_files(tmp_path))
    for _, _, _, decoy in cases:  # the decoys get their content last (see data-file)
        decoy.write_bytes(marker * ((1 << 20) // len(marker)))
    digests = {decoy: sha(decoy) for _, _, _, decoy in cases}
    truncated = tmp_path / "truncated.qcow2"
    truncated.write_bytes(guest_image.path.read_bytes()[:guest_image.path.stat().st_size // 3])
    not_vmdk = tmp_path / "not-really.vmdk"
    not_vmdk.write_bytes(secrets.token_bytes(1 << 16))
    refusals = [(label, path, why) for label, path, why, _ in cases] + [
        ("truncated", truncated, "cut short"), ("not-a-vmdk", not_vmdk, "is not a vmdk")]
    for label, path, why in refusals:
        with pytest.raises(AdminRefused) as err:
            admin.import_image(f"{domain_names.prefix}{label}", path, ImportOptions(),
                               targets, library)
        assert why in str(err.value), (label, str(err.value))
        assert err.value.status == 2
    assert all(sha(decoy) == digest for decoy, digest in digests.items())
    volumes = [p for p in TEST_STORAGE_DIR.iterdir() if p.name.startswith(domain_names.prefix)]
    assert not any(holds(v, marker) for v in volumes)
    left = list(library.iterdir()) if library.exists() else []
    assert left == []  # nothing converted was kept (so no marker there either)
    with db() as s:
        refused = list(s.scalars(select(AuditRow).where(AuditRow.action == "image-import")))
        assert {r.outcome for r in refused} == {"refused"} and len(refused) == len(refusals)
        assert not list(s.scalars(select(ImageRow).where(
            ImageRow.id.startswith(domain_names.prefix))))


@pytest.fixture
def small_host(domain_names: DomainNames, tmp_path: Path) -> Iterator[LibvirtHost]:
    """A host whose storage pool lives on an 8 MiB tmpfs (the guest disk is ~15 MiB)."""
    folder = tmp_path / "small-storage"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], check=True)
    name = f"{domain_names.prefix}small"
    host = LibvirtHost(LIBVIRT_URI, storage_pool=name, storage_dir=folder, domain_type="qemu")
    try:
        yield host
    finally:
        host.close()
        for args in (["pool-destroy", name], ["pool-undefine", name]):
            subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, *args], capture_output=True)
        subprocess.run(["umount", str(folder)], check=True)


def test_an_image_larger_than_the_storage_left_is_refused(
        admin: Admin, small_host: LibvirtHost, guest_image: ImageDisk,
        domain_names: DomainNames, tmp_path: Path) -> None:
    target = Host(uri=small_host.uri, name="small", graphics_listen="127.0.0.1",
                  storage_pool="", storage_dir="", log_dir="")
    with pytest.raises(AdminRefused, match=r"host small: the image needs .* GiB and its "
                                           r"storage has .* GiB left"):
        admin.import_image(f"{domain_names.prefix}big", guest_image.path, ImportOptions(),
                           [(target, small_host)], tmp_path / "library")
    assert not any(small_host._storage.pool_dir.iterdir())  # nothing uploaded
    assert not (tmp_path / "library").exists() or not any((tmp_path / "library").iterdir())


def test_an_architecture_no_host_runs_is_refused(
        admin: Admin, domain_names: DomainNames, tmp_path: Path,
        db: sessionmaker[Session]) -> None:
    # a real x86_64-only host: a libvirtd whose machine has no aarch64 emulator
    arm = guest_disk(Firmware.UEFI, arch=Arch.AARCH64)
    with lone_host(f"{domain_names.prefix}x86", hidden_emulators=[AARCH64_EMULATOR]) as (
            ns, x86_only):
        facts = x86_only.host_info()
        assert Arch.X86_64 in facts.arches and Arch.AARCH64 not in facts.arches, facts
        target = Host(uri=ns.uri, name="x86only", graphics_listen=ns.address,
                      storage_pool="", storage_dir="", log_dir="")
        with pytest.raises(AdminRefused, match="no host runs aarch64 guests"):
            admin.import_image(f"{domain_names.prefix}arm", arm.path, ImportOptions(),
                               [(target, x86_only)], tmp_path / "library")
    assert not (tmp_path / "library").exists() or not any((tmp_path / "library").iterdir())
    with db() as s:
        assert not s.scalars(select(ImageRow).where(
            ImageRow.id == f"{domain_names.prefix}arm")).all()


def test_an_aarch64_image_lands_on_a_host_that_runs_aarch64(
        admin: Admin, libvirt_host: LibvirtHost, domain_names: DomainNames,
        tmp_path: Path) -> None:
    arm = guest_disk(Firmware.UEFI, arch=Arch.AARCH64)
    assert Arch.AARCH64 in libvirt_host.host_info().arches  # qemu-system-arm is installed
    # no --arch: read off the EFI partition (its BOOTAA64.EFI)
    done = admin.import_image(f"{domain_names.prefix}arm", arm.path, ImportOptions(),
                              [(record(libvirt_host), libvirt_host)], tmp_path / "library")
    traits = done.prepared.disk.traits
    assert (traits.arch, traits.firmware) == (Arch.AARCH64, Firmware.UEFI)
    [copy] = done.copies
    assert sha(Path(copy.files.disk_path)) == done.prepared.disk.digest
