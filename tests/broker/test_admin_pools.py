"""`Admin.set_pool` refuses a pool whose image no registered host holds (the import puts
an image only on hosts that run its architecture and firmware), on a real SQLite
database with FakeHypervisor hosts. The import's own refusal of an architecture no host
runs is checked against a real x86_64-only libvirtd in tests/pools/test_image_import.py."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy.orm import Session, sessionmaker

from broker.admin import Admin, AdminRefused, PoolChanges
from pools.fake_hypervisor import FakeHypervisor
from pools.hosts import Host
from pools.hypervisor import ImageDisk
from pools.images import ImageStore
from vdi.domain import Arch, Firmware, ImageTraits, OsFamily

ARM_HOST = "fake://kunpeng/system"
X86_HOST = "fake://x86/system"
NEW_POOL = PoolChanges(display_name="ARM window", image="arm-desk", min_ready=0,
                       entitled_groups=("cn=clerks",))


def host(uri: str, name: str) -> Host:
    return Host(uri=uri, name=name, graphics_listen="127.0.0.1", storage_pool="",
                storage_dir="", log_dir="")


@pytest.fixture
def admin(db: sessionmaker[Session], guest_image: ImageDisk) -> Admin:
    arm = dataclasses.replace(guest_image, traits=ImageTraits(
        Firmware.UEFI, OsFamily.LINUX, Arch.AARCH64))
    ImageStore(db).publish(FakeHypervisor(ARM_HOST), "arm-desk", arm)
    return Admin(db, actor="cli:test")


def test_a_pool_whose_image_no_registered_host_holds_is_refused(admin: Admin) -> None:
    admin.add_host(host(X86_HOST, "x86"))
    with pytest.raises(AdminRefused, match=r"pool arm: no registered host holds image "
                                           r"arm-desk v1 \(uefi, aarch64\); add a host that "
                                           r"runs aarch64 guests"):
        admin.set_pool("arm", NEW_POOL)
    assert admin.catalog.pool("arm") is None  # nothing half-made


def test_the_same_pool_is_made_once_a_host_that_holds_it_is_registered(admin: Admin) -> None:
    admin.add_host(host(X86_HOST, "x86"))
    admin.add_host(host(ARM_HOST, "kunpeng"))
    pool, created = admin.set_pool("arm", NEW_POOL)
    assert created and pool.image == "arm-desk"
    # a change that leaves the image alone is not checked again
    admin.set_pool("arm", PoolChanges(max_size=2))
