"""The system administrator's operations for the web console: the same operations as the
`vdi` command (broker.admin), done as the signed-in administrator from their address,
audited there, on the database threads. Refusals are AdminError subclasses carrying the
operation's own explanation (`detail`): AdminInvalid (the values), AdminNotFound (no such
thing), AdminConflict (not possible as things are)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.admin import Admin, AdminRefused, PoolChanges
from broker.admin_views import (
    DesktopView,
    HostView,
    ImageView,
    PoolView,
    read_desktops,
    read_hosts,
    read_images,
)
from broker.blocking import Blocking
from broker.errors import BrokerError
from pools.failover import Moves
from pools.hosts import Host
from pools.policy_file import parse_policy
from pools.reclaim import PolicyError
from vdi.catalog import Catalog, CatalogError
from vdi.domain import DesktopState, Pool, PoolKind, Principal, utc_now

MAINTENANCE_MODES = ("on", "off", "drain")
T = TypeVar("T")


class AdminError(BrokerError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AdminInvalid(AdminError):
    code = "invalid"


class AdminNotFound(AdminError):
    code = "not_found"


class AdminConflict(AdminError):
    code = "conflict"


class SystemAdmin:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session],
                 wake_worker: Callable[[], None],
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._db = db
        self._catalog = Catalog(db)
        self._wake = wake_worker
        self._clock = clock

    def _admin(self, who: Principal, source: str) -> Admin:
        return Admin(self._db, actor=who.username, role=roles_text(who), source=source,
                     clock=self._clock)

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a database thread; the CLI's refusals become conflicts (the
        values were checked before), bad pool values invalid."""
        try:
            return await self._blocking.db(fn)
        except AdminRefused as e:
            raise AdminConflict(str(e)) from e
        except CatalogError as e:
            raise AdminInvalid(str(e)) from e

    # -- pools -------------------------------------------------------------------------

    def _view(self, pool: Pool) -> PoolView:
        admin = Admin(self._db, actor="-", clock=self._clock)
        try:
            return PoolView(pool, admin.pool_policy(pool.id).to_json(), None)
        except AdminRefused as e:
            return PoolView(pool, None, str(e))

    async def pools(self) -> list[PoolView]:
        return await self._blocking.db(
            lambda: [self._view(p) for p in self._catalog.pools()])

    async def pool(self, pool_id: str) -> PoolView:
        """Raises AdminNotFound."""
        def read() -> PoolView:
            pool = self._catalog.pool(pool_id)
            if pool is None:
                raise AdminNotFound(f"no such pool: {pool_id}")
            return self._view(pool)
        return await self._blocking.db(read)

    async def save_pool(self, who: Principal, source: str, pool_id: str,
                        changes: PoolChanges, policy: object | None, *, create: bool
                        ) -> PoolView:
        """Create (`create`) or change a pool, and replace its idle policy and spare
        schedule when `policy` is given (checked before anything is saved: a wrong
        policy changes nothing). Raises AdminInvalid, AdminNotFound, AdminConflict."""
        def save() -> PoolView:
            before = self._catalog.pool(pool_id)
            if create and before is not None:
                raise AdminConflict(f"pool {pool_id} exists already: change it instead")
            if not create and before is None:
                raise AdminNotFound(f"no such pool: {pool_id}")
            if create and (not changes.display_name or not changes.image):
                raise AdminInvalid("a new pool needs a name and an image")
            if changes.office not in (None, "none") and self._admin_reader().offices.office(
                    str(changes.office)) is None:
                raise AdminInvalid(f"office: no such street office: {changes.office}")
            if policy is not None:
                kind = changes.kind or (before.kind if before else PoolKind.FLOATING)
                size = changes.max_size or (before.max_size if before else 4)
                try:
                    parse_policy(policy, persistent=kind is PoolKind.DEDICATED,
                                 max_size=size)
                except PolicyError as e:
                    raise AdminInvalid(f"policy: {e}") from e
            admin = self._admin(who, source)
            pool, _ = admin.set_pool(pool_id, changes)
            if policy is not None:
                admin.set_pool_policy_data(pool_id, policy)
            return self._view(pool)
        view = await self._call(save)
        self._wake()
        return view

    # -- images ------------------------------------------------------------------------

    async def images(self) -> list[ImageView]:
        return await self._blocking.db(read_images, self._db, self._catalog)

    def _image_exists(self, image_id: str) -> None:
        if not self._admin_reader().images.versions(image_id):
            raise AdminNotFound(f"no such image: {image_id}")

    def _admin_reader(self) -> Admin:
        return Admin(self._db, actor="-", clock=self._clock)

    async def release(self, who: Principal, source: str, image_id: str, version: int
                      ) -> int | None:
        """Release a version to the pools that follow the image; the one before."""
        def release() -> int | None:
            self._image_exists(image_id)
            admin = self._admin(who, source)
            if version not in admin.images.published_versions(image_id):
                raise AdminNotFound(f"image {image_id} has no version {version} on a host")
            return admin.release_image(image_id, version)
        before = await self._call(release)
        self._wake()
        return before

    async def rollback(self, who: Principal, source: str, image_id: str) -> tuple[int, int]:
        def rollback() -> tuple[int, int]:
            self._image_exists(image_id)
            return self._admin(who, source).rollback_image(image_id)
        done = await self._call(rollback)
        self._wake()
        return done

    async def trial(self, who: Principal, source: str, image_id: str, pool_id: str,
                    version: int | None) -> None:
        """Pin a pool of this image to a version (a trial), or with None let it follow
        the released version again."""
        def pin() -> None:
            self._image_exists(image_id)
            pool = self._catalog.pool(pool_id)
            if pool is None:
                raise AdminNotFound(f"no such pool: {pool_id}")
            if pool.image != image_id:
                raise AdminConflict(f"pool {pool_id} runs image {pool.image}, not {image_id}")
            admin = self._admin(who, source)
            if version is None:
                admin.set_pool(pool_id, PoolChanges(follow_released=True))
                return
            if version not in admin.images.published_versions(image_id):
                raise AdminNotFound(f"image {image_id} has no version {version} on a host")
            admin.pin_pool(pool_id, image_id, version)
        await self._call(pin)
        self._wake()

    # -- hosts -------------------------------------------------------------------------

    async def hosts(self) -> list[HostView]:
        return await self._blocking.db(read_hosts, self._db, self._catalog)

    async def add_host(self, who: Principal, source: str, host: Host) -> None:
        """Register a host (or change how it is reached). Raises AdminInvalid."""
        def add() -> None:
            try:
                self._admin(who, source).add_host(host)
            except AdminRefused as e:
                raise AdminInvalid(str(e)) from e
        await self._call(add)
        self._wake()

    async def maintenance(self, who: Principal, source: str, name: str, mode: str
                          ) -> tuple[Host, Moves | None]:
        """`mode`: on, off, or drain (on, and every desktop asked to move off)."""
        if mode not in MAINTENANCE_MODES:
            raise AdminInvalid(f"mode: one of {', '.join(MAINTENANCE_MODES)}")

        def change() -> tuple[Host, Moves | None]:
            admin = self._admin(who, source)
            if admin.hosts.host(name) is None:
                raise AdminNotFound(f"no such host: {name}")
            return admin.set_maintenance(name, mode != "off", drain=mode == "drain")
        done = await self._call(change)
        self._wake()
        return done

    # -- desktops ----------------------------------------------------------------------

    async def desktops(self) -> list[DesktopView]:
        return await self._blocking.db(read_desktops, self._db, self._catalog)

    async def remove_desktop(self, who: Principal, source: str, desktop_id: str,
                             even_if_held: bool) -> str | None:
        """Queue a desktop's removal (domain and disk); the pool makes a fresh one when
        it needs one. A desktop a clerk holds only with `even_if_held`. Who held it."""
        def remove() -> str | None:
            d = self._catalog.desktop(desktop_id)
            if d is None or d.state is DesktopState.DELETED:
                raise AdminNotFound(f"no such desktop: {desktop_id}")
            if d.assigned_user and not even_if_held:
                raise AdminConflict(
                    f"desktop {d.id} belongs to {d.assigned_user}; its disk and everything "
                    "on it would be deleted: confirm with even_if_held")
            return self._admin(who, source).remove_desktop(desktop_id,
                                                           even_if_held=even_if_held)
        owner = await self._call(remove)
        self._wake()
        return owner

