"""The admin's operations on pools, images, hosts and desktops: one place that the `vdi`
command calls today and the admin API will call tomorrow. Each checks, changes and
audits; refusals are AdminRefused with a message for the admin."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from broker.offices import OfficeError, OfficeStore
from pools.failover import Moves, evacuate
from pools.hosts import Host, HostError, HostRegistry
from pools.hypervisor import Hypervisor, HypervisorError, NetworkSpec
from pools.image_file import ImageRefused
from pools.images import ImageStore, ReleaseError
from pools.imports import HostCopy, ImageImporter, ImportOptions, Prepared, Progress, host_facts
from pools.jobs.queue import JobKind, active_job_desktops, enqueue
from pools.networks import NetworkError, NetworkStore
from pools.policy_file import PoolPolicy, parse_policy, read_policy_file
from pools.reclaim import PolicyError
from pools.shifts import ReclaimPolicy
from pools.spares import Level, SpareSchedule
from pools.worker import pool_spare_level
from vdi import desktops
from vdi.audit import AuditLog
from vdi.audit_chain import Verdict
from vdi.catalog import Catalog
from vdi.domain import DesktopState, Firmware, Office, Pool, PoolKind, utc_now
from vdi.models import DesktopRow, PoolRow


class AdminRefused(Exception):
    """The operation was not done; the message says why. `status` is the CLI's exit
    status (2: the request is wrong; 1: something failed on the way)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PoolChanges:
    """What pool-set was told; None: leave as it is."""

    display_name: str | None = None
    image: str | None = None
    kind: PoolKind | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    min_ready: int | None = None
    max_size: int | None = None
    entitled_groups: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None  # () : any host
    image_version: int | None = None
    follow_released: bool = False  # image_version back to the released one
    boot_timeout_s: int | None = None
    secure_boot: bool | None = None
    network: str | None = None
    user_data: str | None = None
    office: str | None = None  # an office's id; "none": the district's own


@dataclass(frozen=True)
class Imported:
    version: int
    prepared: Prepared
    copies: tuple[HostCopy, ...]


class Admin:
    def __init__(self, db: sessionmaker[Session], *, actor: str, role: str = "sysadmin",
                 source: str = "cli", clock: Callable[[], datetime] = utc_now) -> None:
        self._db = db
        self._actor = actor
        self._role = role
        self._source = source
        self._clock = clock
        self.db = db
        self.catalog = Catalog(db)
        self.images = ImageStore(db)
        self.hosts = HostRegistry(db)
        self.networks = NetworkStore(db)
        self.offices = OfficeStore(db, clock)

    def _audit(self, action: str, target: str, detail: str, outcome: str = "ok") -> None:
        AuditLog(self._db, self._clock).record(
            actor=self._actor, role=self._role, action=action, target=target,
            source=self._source, outcome=outcome, detail=detail)

    def _pool(self, pool_id: str) -> Pool:
        pool = self.catalog.pool(pool_id)
        if pool is None:
            raise AdminRefused(f"no such pool: {pool_id}")
        return pool

    # -- audit -------------------------------------------------------------------------

    @property
    def actor(self) -> str:
        """Who the operations are recorded as done by."""
        return self._actor

    def note(self, action: str, target: str, detail: str) -> None:
        """Record an action of this admin's that changes nothing (an export, a check)."""
        self._audit(action, target, detail)

    def verify_audit(self) -> Verdict:
        """Check the audit trail's hash chain; the check itself is recorded after it."""
        verdict = AuditLog(self._db, self._clock).verify()
        self._audit("audit-verify", "audit", f"{verdict.records} records, "
                    + ("intact" if verdict.intact else f"{len(verdict.problems)} problem(s)"),
                    "ok" if verdict.intact else "broken")
        return verdict

    # -- images ------------------------------------------------------------------------

    def import_image(self, image_id: str, source: Path, options: ImportOptions,
                     targets: list[tuple[Host, Hypervisor]], library: Path,
                     progress: Progress = lambda stage, pct: None) -> Imported:
        """Check, convert and describe a golden image file, and upload it to every host
        that runs it (pools.imports). Audited, refusals too. Raises AdminRefused: status 2
        when the file or options are refused, 1 when a host failed."""
        importer = ImageImporter(self.images, library)
        try:
            prepared = importer.prepare(image_id, source, options, progress)
            facts = host_facts(targets)
            if not facts:
                raise AdminRefused("no host answers: the image was not imported", 1)
            version, able = importer.admit(prepared, facts, self._actor)
            copies = list(importer.publish(prepared, version, able, progress))
        except ImageRefused as e:
            self._audit("image-import", image_id, f"refused: {e}", "refused")
            raise AdminRefused(str(e)) from e
        except (HypervisorError, ReleaseError, OSError) as e:
            self._audit("image-import", image_id, f"failed: {e}", "failed")
            raise AdminRefused(str(e), 1) from e
        t = prepared.disk.traits
        self._audit("image-import", image_id,
                    f"v{version} sha256:{prepared.disk.digest[:16]} from {source} "
                    f"({prepared.source_format}; {t.firmware.value}, {t.os_family.value}, "
                    f"{t.arch.value}) on {', '.join(c.host.name for c in copies)}")
        return Imported(version=version, prepared=prepared, copies=tuple(copies))

    def pin_pool(self, pool_id: str, image_id: str, version: int) -> None:
        """A trial: the pool runs this version whatever is released."""
        pool = self._pool(pool_id)
        self.catalog.save_pool(dataclasses.replace(pool, image_version=version))
        self._audit("pool-pin-image", pool.id, f"{image_id} v{version}")

    def release_image(self, image_id: str, version: int) -> int | None:
        """Roll a version out; returns the version released before."""
        try:
            before = self.images.release(image_id, version, by=self._actor)
        except ReleaseError as e:
            raise AdminRefused(str(e)) from e
        self._audit("image-release", image_id, f"v{before} -> v{version}")
        return before

    def rollback_image(self, image_id: str) -> tuple[int, int]:
        try:
            was, now = self.images.rollback(image_id, by=self._actor)
        except ReleaseError as e:
            raise AdminRefused(str(e)) from e
        self._audit("image-rollback", image_id, f"v{was} -> v{now}")
        return was, now

    # -- pools -------------------------------------------------------------------------

    def set_pool(self, pool_id: str, changes: PoolChanges) -> tuple[Pool, bool]:
        """Create a pool, or change only what `changes` names: leaving out the kind must
        never turn a dedicated pool floating (its clerks' disks would be reverted).
        Returns (the pool, created)."""
        before = self.catalog.pool(pool_id)
        if before is None and (not changes.display_name or not changes.image):
            raise AdminRefused(f"pool {pool_id} is new: --name and --image are needed")
        base = before or Pool(id=pool_id, display_name="", kind=PoolKind.FLOATING, image="",
                              vcpus=1, memory_mib=256, min_ready=1, max_size=4,
                              entitled_groups=())
        given: dict[str, Any] = {
            f.name: getattr(changes, f.name) for f in dataclasses.fields(changes)
            if f.name != "follow_released" and getattr(changes, f.name) is not None}
        if changes.follow_released:
            given["image_version"] = None
        if changes.office == "none":
            given["office"] = None
        elif changes.office is not None and self.offices.office(changes.office) is None:
            raise AdminRefused(f"no such office: {changes.office} (vdi office-set first)")
        pool = dataclasses.replace(base, **given)
        if pool.secure_boot:
            self._check_secure_boot(pool)
        if before is None or (pool.image, pool.image_version) != (before.image,
                                                                  before.image_version):
            self._check_some_host_runs(pool)
        if before is not None and pool.kind != before.kind:
            held = [d for d in self.catalog.desktops(pool.id)
                    if d.state is not DesktopState.DELETED]
            if held:
                raise AdminRefused(
                    f"pool {pool.id} has {len(held)} desktop(s); it cannot change from "
                    f"{before.kind.value} to {pool.kind.value} (remove them first with "
                    "desktop-remove)")
        self.catalog.save_pool(pool)
        # the names of what changed, never the values (user-data may hold a domain-join
        # account's password)
        self._audit("pool-set", pool.id, "created" if before is None else "changed: "
                    + ", ".join(sorted(given)))
        return pool, before is None

    def set_office(self, office: Office) -> bool:
        """Create or change a street office. True when new. Raises AdminRefused."""
        try:
            new = self.offices.save(office)
        except OfficeError as e:
            raise AdminRefused(str(e)) from e
        self._audit("office-set", office.id, ("created" if new else "changed") + (
            f": {len(office.clerk_groups)} clerk group(s), {len(office.helpdesk_groups)} "
            "helpdesk group(s)"))
        return new

    def set_network(self, spec: NetworkSpec) -> bool:
        """Create or change a department's network (defined on each host when a desktop
        of a pool on it is made there). True when new. Raises AdminRefused."""
        try:
            new = self.networks.save(spec)
        except NetworkError as e:
            raise AdminRefused(str(e)) from e
        self._audit("network-set", spec.name, f"{spec.mode} {spec.subnet}"
                    + (" (new)" if new else ""))
        return new

    def _check_some_host_runs(self, pool: Pool) -> None:
        """A pool's image must be imported and held by a registered host: the import puts
        it only on hosts that run its architecture and firmware, so an aarch64 pool where
        no host runs aarch64 is refused here, not left to fail desktop after desktop."""
        builds = self.images.versions(pool.image)
        hosts = [h.uri for h in self.hosts.hosts()]
        if not builds or not hosts or self.images.hosts_ready_for(pool, hosts):
            return  # held by a registered host (or not imported yet, or no host recorded)
        wanted = pool.image_version or self.images.released_version(pool.image)
        build = next((b for b in builds if b.version == wanted), builds[-1])
        t = build.traits
        raise AdminRefused(
            f"pool {pool.id}: no registered host holds image {pool.image} v{build.version}"
            f" ({t.firmware.value}, {t.arch.value}); add a host that runs {t.arch.value} "
            "guests and import the image there")

    def _check_secure_boot(self, pool: Pool) -> None:
        """Secure boot only for an image whose imported builds can do it."""
        builds = self.images.versions(pool.image)
        if pool.image_version is not None:
            builds = [b for b in builds if b.version == pool.image_version]
        unable = [f"v{b.version}" for b in builds if not (
            b.traits.secure_boot and b.traits.firmware is Firmware.UEFI)]
        if unable:
            raise AdminRefused(f"pool {pool.id}: secure boot needs a UEFI image imported "
                               f"with --secure-boot; image {pool.image} "
                               f"{', '.join(unable)} is not")

    def pool_policy(self, pool_id: str) -> PoolPolicy:
        """The pool's idle policy and spare levels as stored, defaults filled in."""
        pool = self._pool(pool_id)
        with self._db() as s:
            row = s.get(PoolRow, pool.id)
            assert row is not None
            stored, spares = row.reclaim_policy, row.spare_schedule
        try:
            return PoolPolicy(ReclaimPolicy.from_json(stored, persistent=pool.persistent),
                              SpareSchedule.from_json(spares, pool.max_size) if spares
                              else None)
        except PolicyError as e:
            raise AdminRefused(f"pool {pool.id}: the stored policy is unusable ({e}); the "
                               "broker applies the defaults for its kind until a good one "
                               "is set", 1) from e

    def set_pool_policy(self, pool_id: str, file: Path) -> None:
        """Replace the pool's policy from a file, checked whole first: a file with one
        wrong value changes nothing."""
        pool = self._pool(pool_id)
        try:
            policy = read_policy_file(file, persistent=pool.persistent, max_size=pool.max_size)
        except PolicyError as e:
            raise AdminRefused(f"{file}: {e}") from e
        self._store_policy(pool, policy, f"from {file.name}")

    def set_pool_policy_data(self, pool_id: str, data: object) -> PoolPolicy:
        """Replace the pool's policy from its JSON form (the policy file's tables: calendar,
        shifts, spares), checked whole first by the same rules as the file."""
        pool = self._pool(pool_id)
        try:
            policy = parse_policy(data, persistent=pool.persistent, max_size=pool.max_size)
        except PolicyError as e:
            raise AdminRefused(f"policy: {e}") from e
        self._store_policy(pool, policy, "from the admin console")
        return policy

    def _store_policy(self, pool: Pool, policy: PoolPolicy, origin: str) -> None:
        with self._db.begin() as s:
            s.execute(update(PoolRow).where(PoolRow.id == pool.id).values(
                reclaim_policy=policy.reclaim.to_json(),
                spare_schedule=policy.spares.to_json() if policy.spares else None))
        self._audit("pool-policy", pool.id, origin)

    def spare_levels(self) -> list[tuple[Pool, Level]]:
        """Each pool with the spare level it should have now, and why."""
        now = self._clock()
        out = []
        for p in self.catalog.pools():
            with self._db() as s:
                level, _ = pool_spare_level(s, p, now)
            out.append((p, level))
        return out

    # -- hosts -------------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        try:
            self.hosts.add(host)
        except HostError as e:
            raise AdminRefused(str(e)) from e
        self._audit("host-add", host.uri, f"name {host.name}")

    def set_maintenance(self, name: str, on: bool, *, drain: bool = False
                        ) -> tuple[Host, Moves | None]:
        """Maintenance on or off; a drain also asks for every desktop to move off (the
        worker does the moves). Returns the host and, for a drain, the moves asked."""
        try:
            host = self.hosts.set_maintenance(name, on or drain)
        except HostError as e:
            raise AdminRefused(str(e)) from e
        self._audit("host-drain" if drain else "host-maintenance", host.uri,
                    f"maintenance {'on' if on or drain else 'off'}")
        if not drain:
            return host, None
        with self._db.begin() as s:
            return host, evacuate(s, host, self._clock(), live=True)

    # -- desktops ----------------------------------------------------------------------

    def remove_desktop(self, desktop_id: str, *, even_if_held: bool) -> str | None:
        """Queue the removal of a desktop (its domain and disk). A desktop a clerk holds
        is removed only with `even_if_held`. Returns who held it."""
        with self._db.begin() as s:
            row = s.get(DesktopRow, desktop_id)
            if row is None or row.state == DesktopState.DELETED.value:
                raise AdminRefused(f"no such desktop: {desktop_id}")
            if row.assigned_user and not even_if_held:
                raise AdminRefused(
                    f"desktop {row.id} belongs to {row.assigned_user}; its disk and "
                    "everything on it would be deleted. Add --yes to do it.")
            if row.id in active_job_desktops(s):
                raise AdminRefused(f"desktop {row.id} is being worked on; try again in a "
                                   "minute")
            owner, asked_at = row.assigned_user, self._clock()
            # compare-and-set: a clerk who got this desktop since it was read must not
            # lose it without the --yes that names them
            if not desktops.start_removal(s, row.id, state=DesktopState(row.state),
                                          owner=owner, now=asked_at):
                raise AdminRefused(f"desktop {row.id} changed meanwhile (a clerk may have "
                                   "just got it); look again with `vdi desktops` and repeat")
            enqueue(s, JobKind.REMOVE, row.id, asked_at)
        self._audit("desktop-remove", desktop_id, f"held by {owner or 'nobody'}")
        return owner
