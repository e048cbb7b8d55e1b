"""Pools and desktops as the database records them (no hypervisor here)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vdi.domain import (
    ConsoleEndpoint,
    ConsoleKind,
    Desktop,
    DesktopState,
    Pool,
    PoolKind,
    Power,
    utc_now,
)
from vdi.models import DesktopRow, PoolRow

USER_DATA_MAX = 64 * 1024  # a NoCloud seed is a small volume


class CatalogError(ValueError):
    """A pool definition is invalid; the message says which field."""


def pool_from_row(row: PoolRow) -> Pool:
    return Pool(id=row.id, display_name=row.display_name, kind=PoolKind(row.kind),
                image=row.image, vcpus=row.vcpus, memory_mib=row.memory_mib,
                min_ready=row.min_ready, max_size=row.max_size,
                entitled_groups=tuple(row.entitled_groups), image_version=row.image_version,
                hosts=tuple(row.hosts or ()), console=ConsoleKind(row.console_kind),
                boot_timeout_s=row.boot_timeout_s, secure_boot=row.secure_boot,
                network=row.network, user_data=row.user_data or "", office=row.office)


def desktop_from_row(row: DesktopRow) -> Desktop:
    return Desktop(id=row.id, pool_id=row.pool_id, state=DesktopState(row.state),
                   host_uri=row.host_uri, domain_name=row.domain_name,
                   assigned_user=row.assigned_user, console=console_of(row),
                   created_at=row.created_at,
                   last_input_at=row.last_input_at, image_version=row.image_version,
                   error=row.error, power=Power(row.power or Power.ON.value),
                   guest_addresses=tuple((row.guest_addresses or "").split()))


def console_of(row: DesktopRow) -> ConsoleEndpoint | None:
    if row.console_host is None or row.console_port is None:
        return None
    return ConsoleEndpoint(ConsoleKind(row.console_kind), row.console_host, row.console_port)


class Catalog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def pools(self) -> list[Pool]:
        with self._sessions() as s:
            return [pool_from_row(r) for r in s.scalars(select(PoolRow).order_by(PoolRow.id))]

    def pool(self, pool_id: str) -> Pool | None:
        with self._sessions() as s:
            row = s.get(PoolRow, pool_id)
            return pool_from_row(row) if row else None

    def save_pool(self, pool: Pool) -> None:
        """Create or update a pool definition. Raises CatalogError for bad values."""
        validate_pool(pool)
        with self._sessions.begin() as s:
            row = s.get(PoolRow, pool.id)
            if row is None:
                row = PoolRow(id=pool.id, created_at=utc_now())
                s.add(row)
            row.display_name = pool.display_name
            row.kind = pool.kind.value
            row.image = pool.image
            row.vcpus = pool.vcpus
            row.memory_mib = pool.memory_mib
            row.min_ready = pool.min_ready
            row.max_size = pool.max_size
            row.entitled_groups = list(pool.entitled_groups)
            row.image_version = pool.image_version
            row.hosts = list(pool.hosts)
            row.console_kind = pool.console.value
            row.boot_timeout_s = pool.boot_timeout_s
            row.secure_boot = pool.secure_boot
            row.network = pool.network
            row.user_data = pool.user_data or None
            row.office = pool.office

    def desktops(self, pool_id: str | None = None,
                 states: Sequence[DesktopState] | None = None) -> list[Desktop]:
        q = select(DesktopRow).order_by(DesktopRow.created_at)
        if pool_id is not None:
            q = q.where(DesktopRow.pool_id == pool_id)
        if states is not None:
            q = q.where(DesktopRow.state.in_([st.value for st in states]))
        with self._sessions() as s:
            return [desktop_from_row(r) for r in s.scalars(q)]

    def desktop(self, desktop_id: str) -> Desktop | None:
        with self._sessions() as s:
            row = s.get(DesktopRow, desktop_id)
            return desktop_from_row(row) if row else None


def validate_pool(pool: Pool) -> None:
    if not pool.id or not pool.id.replace("-", "").isalnum() or len(pool.id) > 32:
        raise CatalogError("pool id: 1-32 letters, digits or '-'")
    if pool.vcpus < 1 or pool.memory_mib < 64:
        raise CatalogError("pool needs at least 1 vCPU and 64 MiB of memory")
    if pool.min_ready < 0 or pool.max_size < 1 or pool.min_ready > pool.max_size:
        raise CatalogError("pool sizes: 0 <= min_ready <= max_size, max_size >= 1")
    if not pool.image:
        raise CatalogError("pool needs an image")
    if not 10 <= pool.boot_timeout_s <= 3600:
        raise CatalogError("pool boot timeout: 10 to 3600 seconds")
    kind, _, name = pool.network.partition(":")
    if pool.network not in ("none", "user") and (kind not in ("network", "bridge") or not name
                                   or len(pool.network) > 80 or not name.isprintable()
                                   or " " in name):
        raise CatalogError("pool network: none, network:NAME, bridge:NAME or user")
    if len(pool.user_data.encode()) > USER_DATA_MAX:
        raise CatalogError(f"pool user-data: at most {USER_DATA_MAX // 1024} KiB")
    if pool.image_version is not None and pool.image_version < 1:
        raise CatalogError("pool image version: 1 or more, or none for the released one")
