"""What the system administrator's console lists: pools with their policy, images with
their versions, hosts with their load, desktops with their clerk and age. Frozen values
read from the stores in one go each; nothing here changes anything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from pools.hosts import Host, HostRegistry, host_loads
from pools.images import ImageStore
from vdi.catalog import Catalog
from vdi.domain import DesktopState, Pool


@dataclass(frozen=True)
class PoolView:
    pool: Pool
    policy: dict[str, Any] | None  # calendar, shifts, spares; None: unusable as stored
    policy_error: str | None


@dataclass(frozen=True)
class VersionView:
    version: int
    digest: str
    firmware: str
    os_family: str
    arch: str
    secure_boot: bool
    disk_bytes: int
    imported_by: str
    imported_at: datetime
    hosts: tuple[str, ...]  # the hosts (names) that hold it
    state: str  # released | previous | available
    trial_pools: tuple[str, ...]  # the pools pinned to it


@dataclass(frozen=True)
class ImageView:
    id: str
    released: int | None
    following: tuple[str, ...]  # the pools that run whatever is released
    versions: tuple[VersionView, ...]


@dataclass(frozen=True)
class HostView:
    host: Host
    memory_used_mib: int
    vcpus_used: int
    desktops: int


@dataclass(frozen=True)
class DesktopView:
    id: str
    pool: str
    state: str
    power: str
    clerk: str | None
    host: str  # the host's name (its URI when unregistered)
    addresses: tuple[str, ...]
    image_version: int
    created_at: datetime
    error: str | None


def read_images(db: sessionmaker[Session], catalog: Catalog) -> list[ImageView]:
    store = ImageStore(db)
    names = {h.uri: h.name for h in HostRegistry(db).hosts()}
    held: dict[tuple[str, int], set[str]] = {}
    for image_id, version, host_uri, _ in store.listing():
        held.setdefault((image_id, version), set()).add(names.get(host_uri, host_uri))
    pools = catalog.pools()
    builds = store.versions()
    out = []
    for image_id in sorted({b.image_id for b in builds}):
        released = store.released_version(image_id)
        older = [b.version for b in builds if b.image_id == image_id
                 and released is not None and b.version < released]
        versions = tuple(VersionView(
            version=b.version, digest=b.digest, firmware=b.traits.firmware.value,
            os_family=b.traits.os_family.value, arch=b.traits.arch.value,
            secure_boot=b.traits.secure_boot, disk_bytes=b.disk_bytes,
            imported_by=b.imported_by, imported_at=b.imported_at,
            hosts=tuple(sorted(held.get((image_id, b.version), ()))),
            state="released" if b.version == released else
            "previous" if older and b.version == older[-1] else "available",
            trial_pools=tuple(p.id for p in pools
                              if p.image == image_id and p.image_version == b.version))
            for b in builds if b.image_id == image_id)
        out.append(ImageView(image_id, released, tuple(
            p.id for p in pools if p.image == image_id and p.image_version is None),
            versions))
    return out


def read_hosts(db: sessionmaker[Session], catalog: Catalog) -> list[HostView]:
    hosts = HostRegistry(db).hosts()
    with db() as s:
        loads = host_loads(s, hosts)
    counts: dict[str, int] = {}
    for d in catalog.desktops():
        if d.state is not DesktopState.DELETED:
            counts[d.host_uri] = counts.get(d.host_uri, 0) + 1
    return [HostView(h, loads[h.uri].memory_mib, loads[h.uri].vcpus, counts.get(h.uri, 0))
            for h in hosts]


def read_desktops(db: sessionmaker[Session], catalog: Catalog) -> list[DesktopView]:
    names = {h.uri: h.name for h in HostRegistry(db).hosts()}
    return [DesktopView(d.id, d.pool_id, d.state.value, d.power.value, d.assigned_user,
                        names.get(d.host_uri, d.host_uri), d.guest_addresses,
                        d.image_version, d.created_at,
                        d.error.splitlines()[0][:300] if d.error else None)
            for d in catalog.desktops() if d.state is not DesktopState.DELETED]
