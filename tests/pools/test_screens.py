"""A desktop's screen for the helpdesk: QEMU's PPM dump made a PNG by the broker's own
strict parser (damaged or hostile dumps refused, never a crash), and a real guest's
screen on the real libvirtd: a PNG of the screen's size whose pixels are not all one
colour (the guest's shell is drawn there)."""

from __future__ import annotations

import contextlib
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pools.hypervisor import DesktopSpec, ImageFiles
from pools.libvirt.host import LibvirtHost
from pools.screens import BadScreenDump, png_size, ppm_to_png
from tests.conftest import DomainNames


def pixels_of(png: bytes) -> bytes:
    """The filtered rows of a PNG (its IDAT data inflated): all zero for a black
    screen whatever the filters; the pixels themselves for a PNG this module wrote."""
    at, idat = 8, b""
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            idat += png[at + 8:at + 8 + length]
        at += 12 + length
    return zlib.decompress(idat)


def test_a_dump_becomes_a_png_with_the_same_pixels() -> None:
    ppm = b"P6\n# QEMU\n3 2\n255\n" + bytes(range(18))
    png = ppm_to_png(ppm)
    assert png_size(png) == (3, 2)
    assert pixels_of(png) == b"\x00" + bytes(range(9)) + b"\x00" + bytes(range(9, 18))


@pytest.mark.parametrize("dump, why", [
    (b"P3 1 1 255\n0 0 0", "not a binary PPM"),
    (b"P6 0 1 255\n", "is not one a desktop has"),
    (b"P6 9000 10 255\n", "is not one a desktop has"),
    (b"P6 1 1 65535\n" + b"\x00" * 6, "256 expected"),
    (b"P6 2 2 255\n" + b"\x00" * 11, "11 bytes of pixels for 2x2: 12 expected"),
    (b"P6 2 2 255\n" + b"\x00" * 13, "13 bytes of pixels"),
    (b"", "not a binary PPM"),
])
def test_damaged_dumps_are_refused(dump: bytes, why: str) -> None:
    with pytest.raises(BadScreenDump, match=why):
        ppm_to_png(dump)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_give_a_png_or_a_refusal(data: bytes) -> None:
    with contextlib.suppress(BadScreenDump):  # a refusal is fine; any other error is not
        ppm_to_png(data)


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 40), height=st.integers(1, 40), data=st.data())
def test_any_well_formed_dump_becomes_a_png_of_its_size(width: int, height: int,
                                                      data: st.DataObject) -> None:
    pixels = data.draw(st.binary(min_size=width * height * 3, max_size=width * height * 3))
    png = ppm_to_png(f"P6 {width} {height} 255\n".encode() + pixels)
    assert png_size(png) == (width, height)
    rows = pixels_of(png)
    row = width * 3
    assert b"".join(rows[y * (row + 1) + 1:(y + 1) * (row + 1)] for y in range(height)) \
        == pixels


@pytest.mark.real
def test_a_real_guests_screen(libvirt_host: LibvirtHost, libvirt_image: ImageFiles,
                              domain_names: DomainNames, tmp_path: Path) -> None:
    name = domain_names.new("screen")
    libvirt_host.create_desktop(DesktopSpec(name=name, desktop_id=name, pool_id="window",
                                            vcpus=1, memory_mib=256, image=libvirt_image))
    try:
        libvirt_host.wait_until_up(name, libvirt_image.traits, 180)
        png = libvirt_host.screenshot(name)
        width, height = png_size(png)
        assert width >= 640 and height >= 400, (width, height)
        rows = pixels_of(png)
        assert len(set(rows[1:width * 3 * 40])) > 2, "the top of the screen is blank"
        # what virsh's own screenshot makes of the same screen has the same size
        out = tmp_path / "virsh.img"
        subprocess.run(["virsh", "-c", libvirt_host.uri, "screenshot", name, str(out)],
                       check=True, capture_output=True, timeout=30)
        dump = out.read_bytes()
        theirs = png_size(dump) if dump.startswith(b"\x89PNG") else png_size(ppm_to_png(dump))
        assert theirs == (width, height)
    finally:
        libvirt_host.destroy_desktop(name)
