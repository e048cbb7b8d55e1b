"""The architecture a UEFI disk boots on, read off its EFI partition's bootloaders
(pools.esp), on FAT12, FAT16 and FAT32 file systems made by mkfs.vfat and filled by
mtools as installers fill them (long names, folders per vendor), and on the project's
own x86_64 and aarch64 disks; damaged or hostile bytes give no answer, never an error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.guest import GUEST_DIR, build_guest
from pools import image_file
from pools.esp import bootloader_arches
from vdi.domain import Arch


def fat(tmp: Path, bits: int, files: list[str], mib: int = 40) -> bytes:
    """A FAT file system of `bits` holding empty files at these paths."""
    img = tmp / f"fat{bits}.img"
    subprocess.run(["mkfs.vfat", "-F", str(bits), "-C", str(img), str(mib * 1024)],
                   check=True, capture_output=True)
    made: set[str] = set()
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder.upper() not in made:  # FAT names are case-blind
                subprocess.run(["mmd", "-i", str(img), f"::/{folder}"], check=True,
                               capture_output=True)
                made.add(folder.upper())
        empty = tmp / "empty"
        empty.write_bytes(b"x" * 1000)
        subprocess.run(["mcopy", "-i", str(img), str(empty), f"::/{path}"], check=True,
                       capture_output=True)
    return img.read_bytes()


WINDOWS = ["EFI/Microsoft/Boot/bootmgfw.efi", "EFI/Microsoft/Boot/BCD", "EFI/Boot/bootx64.efi"]
KYLIN_ARM = ["EFI/kylin/grubaa64.efi", "EFI/kylin/shimaa64.efi", "EFI/kylin/mmaa64.efi",
             "EFI/BOOT/BOOTAA64.EFI", "EFI/BOOT/fbaa64.efi"]
DEBIAN_NO_FALLBACK = ["EFI/debian/grubx64.efi", "EFI/debian/shimx64.efi"]


@pytest.mark.parametrize("bits, mib", [(12, 4), (16, 40), (32, 64)])
@pytest.mark.parametrize("files, expected", [
    (WINDOWS, {Arch.X86_64}),
    (KYLIN_ARM, {Arch.AARCH64}),
    (DEBIAN_NO_FALLBACK, {Arch.X86_64}),
    (["EFI/Microsoft/Boot/bootmgfw.efi"], set()),  # no name says an architecture
    (["boot/grub/grub.cfg"], set()),  # no /EFI at all
    (WINDOWS + KYLIN_ARM, {Arch.X86_64, Arch.AARCH64}),
], ids=["windows", "kylin-arm", "debian", "no-suffix", "no-efi", "both"])
def test_the_bootloaders_say_the_architecture(tmp_path: Path, bits: int, mib: int,
                                              files: list[str], expected: set[Arch]) -> None:
    assert bootloader_arches(fat(tmp_path, bits, files, mib)) == expected


def test_a_folder_beyond_the_bytes_read_gives_no_answer(tmp_path: Path) -> None:
    data = fat(tmp_path, 32, KYLIN_ARM, 64)
    assert bootloader_arches(data) == {Arch.AARCH64}
    assert bootloader_arches(data[:4096]) == frozenset()  # the boot sector and FAT only
    assert bootloader_arches(b"") == frozenset()


@pytest.mark.parametrize("disk, expected", [
    ("uefi.qcow2", {Arch.X86_64}), ("aarch64.qcow2", {Arch.AARCH64}),
])
def test_the_projects_own_disks(disk: str, expected: set[Arch]) -> None:
    path = build_guest(GUEST_DIR) / disk
    extent = image_file.esp_extent(image_file.first_sectors(path))
    assert extent is not None
    start, sectors = extent
    assert start == 2048 and sectors == 40 * 2048  # as deploy/guest/build-image.sh lays it
    assert bootloader_arches(image_file.first_sectors(path, sectors, skip=start)) == expected


def test_a_bios_disk_has_no_efi_partition() -> None:
    path = build_guest(GUEST_DIR) / "bios.qcow2"
    assert image_file.esp_extent(image_file.first_sectors(path)) is None


@pytest.fixture(scope="module")
def kylin16(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small FAT16 partition of an ARM Kylin install: the bytes the fuzzing damages."""
    return fat(tmp_path_factory.mktemp("fuzz"), 16, KYLIN_ARM, 16)[:2 << 20]


@settings(max_examples=300, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 2 << 20), st.integers(0, 255)), max_size=40),
       cut=st.integers(0, 2 << 20))
def test_damaged_file_systems_never_raise(kylin16: bytes, flips: list[tuple[int, int]],
                                          cut: int) -> None:
    data = bytearray(kylin16)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    found = bootloader_arches(bytes(data[:cut]))
    assert found <= {Arch.X86_64, Arch.AARCH64}


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=8192))
def test_any_bytes_never_raise(data: bytes) -> None:
    assert bootloader_arches(data) <= {Arch.X86_64, Arch.AARCH64}
