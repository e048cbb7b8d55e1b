"""pools.image_file: what a district's image file is, and why a hostile or broken one is
refused, with real qemu-img on files the tests make.

Hostile images point only at decoy files made here, each holding a random marker: the
decoys must be unchanged afterwards and the converted output must not hold a marker.
(`qemu-img create -o data_file=F` zero-fills F, so that image is made before its decoy
gets its content.)
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from pathlib import Path

import pytest

from pools import image_file
from pools.image_file import ImageRefused
from vdi.domain import Firmware, OsFamily

SECTOR = 512


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Decoy:
    """A file a hostile image points at: random marker content, hash remembered."""

    def __init__(self, path: Path, size: int = 1 << 20) -> None:
        self.path = path
        self.marker = b"VDI-DECOY-" + secrets.token_hex(16).encode()
        self.size = size

    def fill(self) -> Decoy:
        body = (self.marker + b"\n") * (self.size // (len(self.marker) + 1))
        self.path.write_bytes(body.ljust(self.size, b"\0"))
        self.digest = sha(self.path)
        return self

    def unchanged(self) -> bool:
        return sha(self.path) == self.digest


def mbr_disk(path: Path, sfdisk_script: str, size_mib: int = 4) -> Path:
    """A raw disk with a partition table (no filesystem needed to read how it boots)."""
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["sfdisk", "-q", str(path)], input=sfdisk_script, text=True, check=True,
                   capture_output=True, timeout=30)
    return path


def assert_refused(path: Path, why: str, fmt: str | None = None) -> str:
    with pytest.raises(ImageRefused) as err:
        image_file.inspect(path, fmt)
    assert why in str(err.value), str(err.value)
    return str(err.value)


# --- hostile and broken files ---------------------------------------------------------


def test_qcow2_with_a_backing_file_on_a_host_file_is_refused(tmp_path: Path) -> None:
    decoy = Decoy(tmp_path / "host-secret.raw").fill()
    evil = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(decoy.path), "-F", "raw", str(evil))
    assert_refused(evil, "backing file")
    assert decoy.unchanged()


def test_qcow2_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    decoy = Decoy(tmp_path / "other-desktop.raw")
    evil = tmp_path / "datafile.qcow2"
    # creating it zero-fills the data file: the decoy gets its content only afterwards
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             f"data_file={decoy.path},data_file_raw=on", str(evil), "1M")
    decoy.fill()
    assert_refused(evil, "external data file")
    assert decoy.unchanged()


def test_vmdk_descriptor_pointing_at_a_host_file_is_refused(tmp_path: Path) -> None:
    decoy = Decoy(tmp_path / "flat-target.raw").fill()
    evil = tmp_path / "disk.vmdk"
    evil.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                    'createType="monolithicFlat"\n\n'
                    f'RW 2048 FLAT "{decoy.path}" 0\n')
    assert_refused(evil, "vmdk descriptor")
    assert decoy.unchanged()


def test_a_file_that_is_not_the_vmdk_it_claims_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "windows10.vmdk"
    fake.write_bytes(secrets.token_bytes(1 << 16))
    assert_refused(fake, "is not a vmdk image")


def test_a_truncated_qcow2_is_refused(tmp_path: Path, guest_disk_file: Path) -> None:
    cut = tmp_path / "cut.qcow2"
    data = guest_disk_file.read_bytes()
    cut.write_bytes(data[:len(data) // 3])
    message = assert_refused(cut, "cut")
    assert "damaged" in message or "not a readable" in message


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.qcow2").write_bytes(b"")
    assert_refused(tmp_path / "empty.qcow2", "is empty")
    assert_refused(tmp_path / "missing.qcow2", "cannot read")


def test_a_disk_without_a_partition_table_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "fs-only.raw"
    raw.write_bytes(bytes(1 << 20))
    image_file.inspect(raw)  # a readable raw file ...
    qcow = tmp_path / "fs-only.qcow2"
    image_file.convert(raw, "raw", qcow)
    with pytest.raises(ImageRefused, match="no partition table"):  # ... but no whole disk
        image_file.boot_layout(image_file.first_sectors(qcow))


def test_a_raw_file_holding_a_qcow2_header_is_not_taken_as_raw(tmp_path: Path) -> None:
    src = tmp_path / "disguised.img"
    qemu_img("create", "-q", "-f", "qcow2", str(src), "1M")
    assert_refused(src, "is not a raw image (its content is qcow2)")


# --- good files: each format converts, and says how it boots ----------------------------


@pytest.mark.parametrize("fmt", ["raw", "vmdk", "vhdx", "qcow2"])
def test_each_format_converts_to_a_standalone_qcow2(tmp_path: Path, fmt: str) -> None:
    raw = mbr_disk(tmp_path / "disk.raw", "label: dos\nstart=2048, type=83, bootable\n")
    src = raw
    if fmt != "raw":
        src = tmp_path / f"disk.{fmt}"
        qemu_img("convert", "-f", "raw", "-O", fmt, str(raw), str(src))
    checked = image_file.inspect(src)
    assert (checked.format, checked.disk_bytes) == (fmt, 4 << 20)
    seen: list[float] = []
    out = tmp_path / "out.qcow2"
    image_file.convert(src, fmt, out, seen.append)
    assert image_file.inspect(out).format == "qcow2"
    assert not (tmp_path / "out.qcow2.part").exists()
    assert seen and seen[-1] == 100.0
    layout = image_file.boot_layout(image_file.first_sectors(out))
    assert layout == image_file.BootLayout(Firmware.BIOS, OsFamily.LINUX)


# --- the partition table: pure ------------------------------------------------------------

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
MS_RESERVED = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
MS_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


@pytest.mark.parametrize("script, expected", [
    ("label: dos\nstart=2048, type=83, bootable\n", (Firmware.BIOS, OsFamily.LINUX)),
    ("label: dos\nstart=2048, size=2048, type=7, bootable\nstart=4096, type=7\n",
     (Firmware.BIOS, OsFamily.WINDOWS)),
    ("label: dos\nstart=2048, type=ef\n", (Firmware.UEFI, OsFamily.LINUX)),
    (f"label: gpt\nstart=2048, size=2048, type={ESP}\nstart=4096, type={LINUX_FS}\n",
     (Firmware.UEFI, OsFamily.LINUX)),
    (f"label: gpt\nstart=2048, size=2048, type={BIOS_BOOT}\nstart=4096, type={LINUX_FS}\n",
     (Firmware.BIOS, OsFamily.LINUX)),
    (f"label: gpt\nstart=2048, size=1024, type={ESP}\nstart=3072, size=1024, "
     f"type={MS_RESERVED}\nstart=4096, type={MS_DATA}\n", (Firmware.UEFI, OsFamily.WINDOWS)),
], ids=["mbr-linux", "mbr-ntfs", "mbr-efi-partition", "gpt-esp", "gpt-bios-boot",
        "gpt-windows"])
def test_boot_layout_from_the_partition_table(tmp_path: Path, script: str,
                                              expected: tuple[Firmware, OsFamily]) -> None:
    disk = mbr_disk(tmp_path / "d.raw", script)
    head = disk.read_bytes()[:34 * SECTOR]
    assert image_file.boot_layout(head) == image_file.BootLayout(*expected)


def test_a_damaged_gpt_is_refused(tmp_path: Path) -> None:
    disk = mbr_disk(tmp_path / "d.raw", f"label: gpt\nstart=2048, type={ESP}\n")
    head = bytearray(disk.read_bytes()[:34 * SECTOR])
    head[SECTOR:SECTOR + 8] = b"NOT PART"
    with pytest.raises(ImageRefused, match="GPT partition table is damaged"):
        image_file.boot_layout(bytes(head))


def test_qcow2_header_problems() -> None:
    clean = b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(64) + bytes(8) + bytes(20) + (
        112).to_bytes(4, "big")
    assert image_file.qcow2_problems(clean.ljust(120, b"\0")) == []
    backed = bytearray(clean.ljust(120, b"\0"))
    backed[8:16] = (4096).to_bytes(8, "big")
    assert any("backing file" in p for p in image_file.qcow2_problems(bytes(backed)))
    data_file = bytearray(clean.ljust(120, b"\0"))
    data_file[72:80] = (1 << 2).to_bytes(8, "big")
    assert any("external data file" in p for p in image_file.qcow2_problems(bytes(data_file)))
    assert image_file.qcow2_problems(b"QFI\xfb") == ["the qcow2 header is cut short"]


def test_vmdk_descriptor_problems() -> None:
    own = 'createType="monolithicSparse"\nRW 8192 SPARSE "disk.vmdk"\n'
    assert image_file.vmdk_problems(own) == []
    assert image_file.vmdk_problems(own.replace("monolithicSparse", "twoGbMaxExtentSparse"))
    delta = own + 'parentFileNameHint="/var/lib/other.vmdk"\n'
    assert any("delta disk" in p for p in image_file.vmdk_problems(delta))
    two = own + 'RW 8192 FLAT "/etc/shadow" 0\n'
    assert any("extents name other files" in p for p in image_file.vmdk_problems(two))


@pytest.fixture(scope="module")
def guest_disk_file() -> Path:
    from harness.guest import guest_disk

    return guest_disk().path


def test_a_vmdk_hiding_a_descriptor_behind_no_capacity_is_refused(tmp_path: Path) -> None:
    decoy = Decoy(tmp_path / "decoy.raw").fill()
    text = ('# Disk DescriptorFile\n#x createType="monolithicFlat"\n'
            'createType="monolithicSparse"\nRDONLY 100 SPARSE\n'
            f'RW +2048 FLAT "{decoy.path}" 0\n').encode()
    header = (b"KDMV" + (1).to_bytes(4, "little") + (3).to_bytes(4, "little")
              + (0).to_bytes(8, "little")  # capacity 0
              + (128).to_bytes(8, "little") + (1).to_bytes(8, "little")  # grain, desc offset
              + (20).to_bytes(8, "little"))  # descriptor size in sectors
    evil = tmp_path / "disguised.vmdk"
    evil.write_bytes(header.ljust(512, b"\0") + text.ljust(20 * 512, b"\0"))
    message = assert_refused(evil, "disguised.vmdk")
    assert "no capacity" in message or "other files" in message, message
    assert decoy.unchanged()


def test_the_private_copy_takes_regular_files_only(tmp_path: Path) -> None:
    import os

    real = tmp_path / "disk.img"
    real.write_bytes(b"x" * 10_000)
    image_file.private_copy(real, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == real.read_bytes()
    os.symlink(real, tmp_path / "link.img")
    with pytest.raises(ImageRefused, match="cannot read"):  # not followed
        image_file.private_copy(tmp_path / "link.img", tmp_path / "copy2")
    os.mkfifo(tmp_path / "pipe.img")  # opened without blocking, then refused
    with pytest.raises(ImageRefused, match="not a regular file"):
        image_file.private_copy(tmp_path / "pipe.img", tmp_path / "copy3")
    assert not (tmp_path / "copy2").exists() and not (tmp_path / "copy3").exists()
