"""Golden image versions: publish the files to a host and remember where they are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pools.hypervisor import Hypervisor, ImageDisk, ImageFiles
from vdi.domain import Arch, Firmware, ImageTraits, OsFamily, Pool, utc_now
from vdi.models import DesktopRow, ImageReleaseRow, ImageRow, ImageVersionRow, PoolRow


@dataclass(frozen=True)
class ImageVersion:
    """One imported build of an image."""

    image_id: str
    version: int
    digest: str
    traits: ImageTraits
    disk_bytes: int
    source: str
    imported_by: str
    imported_at: datetime


def traits_of(row: ImageVersionRow) -> ImageTraits:
    return ImageTraits(firmware=Firmware(row.firmware), os_family=OsFamily(row.os_family),
                       arch=Arch(row.arch), virtio=row.virtio, agent=row.agent,
                       boot_delay_s=row.boot_delay_s, secure_boot=row.secure_boot)


class ImageNotPublished(LookupError):
    """No version of the image is published on that host."""


class ReleaseError(ValueError):
    """A release or rollback cannot be done; the message says why."""


class ImageStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record_version(self, image_id: str, disk: ImageDisk, source: str, source_format: str,
                       by: str, file_bytes: int) -> int:
        """The version number of this build (the digest), recorded with its traits: the
        one it has already, else a new one above every other. Idempotent."""
        with self._sessions.begin() as s:
            same = s.scalars(select(ImageVersionRow).where(
                ImageVersionRow.image_id == image_id,
                ImageVersionRow.digest == disk.digest)).first()
            if same is not None:
                return same.version
            version = self._next_version(s, image_id)
            t = disk.traits
            s.add(ImageVersionRow(
                image_id=image_id, version=version, digest=disk.digest,
                firmware=t.firmware.value, os_family=t.os_family.value, arch=t.arch.value,
                virtio=t.virtio, agent=t.agent, boot_delay_s=t.boot_delay_s,
                secure_boot=t.secure_boot, disk_bytes=disk.disk_bytes, file_bytes=file_bytes,
                source=source[:1024], source_format=source_format, imported_by=by,
                imported_at=utc_now()))
            return version

    @staticmethod
    def _next_version(s: Session, image_id: str) -> int:
        """Above every version this image had: recorded, published, or held by a desktop
        of a pool of it (builds from before migration 0009 left only those), so a new
        build never shares a number with an older one and its spares are remade."""
        newest = max(
            int(s.scalar(select(func.max(ImageVersionRow.version)).where(
                ImageVersionRow.image_id == image_id)) or 0),
            int(s.scalar(select(func.max(ImageRow.version)).where(
                ImageRow.id == image_id)) or 0),
            int(s.scalar(select(func.max(DesktopRow.image_version))
                         .join(PoolRow, PoolRow.id == DesktopRow.pool_id)
                         .where(PoolRow.image == image_id)) or 0))
        return newest + 1

    def traits(self, image_id: str, version: int) -> ImageTraits | None:
        with self._sessions() as s:
            row = s.get(ImageVersionRow, (image_id, version))
            return traits_of(row) if row else None

    def versions(self, image_id: str | None = None) -> list[ImageVersion]:
        """Every imported build (of one image), oldest first."""
        q = select(ImageVersionRow).order_by(ImageVersionRow.image_id, ImageVersionRow.version)
        if image_id is not None:
            q = q.where(ImageVersionRow.image_id == image_id)
        with self._sessions() as s:
            return [ImageVersion(r.image_id, r.version, r.digest, traits_of(r), r.disk_bytes,
                                 r.source, r.imported_by, r.imported_at) for r in s.scalars(q)]

    def publish(self, host: Hypervisor, image_id: str, disk: ImageDisk,
                version: int | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[int, ImageFiles]:
        """Upload the image's disk to the host (the host reads it back and checks the
        digest) and record it there. Without a version: the one this build has (recorded
        if new). Idempotent. Raises ReleaseError when `version` holds another build.
        Blocks (uploads the disk)."""
        if version is None:
            version = self.record_version(image_id, disk, str(disk.path), "qcow2", "system",
                                          disk.path.stat().st_size)
        known = self._digest(host.uri, image_id, version)
        if known is not None and known != disk.digest:
            raise ReleaseError(f"image {image_id!r} v{version} on {host.uri} is another "
                               "build; import this one as a new version")
        if known == disk.digest:
            return self.files(host.uri, image_id, version)
        files = host.publish_image(image_id, version, disk, progress)
        with self._sessions.begin() as s:
            row = s.get(ImageRow, (image_id, host.uri, version))
            if row is None:
                s.add(ImageRow(id=image_id, host_uri=host.uri, version=version,
                               disk_path=files.disk_path, disk_bytes=files.disk_bytes,
                               digest=disk.digest, published_at=utc_now()))
        return version, files

    def _digest(self, host_uri: str, image_id: str, version: int) -> str | None:
        with self._sessions() as s:
            row = s.get(ImageRow, (image_id, host_uri, version))
            return row.digest if row else None

    def latest_version(self, host_uri: str, image_id: str) -> int:
        with self._sessions() as s:
            return s.scalar(select(func.max(ImageRow.version)).where(
                ImageRow.id == image_id, ImageRow.host_uri == host_uri)) or 0

    def files(self, host_uri: str, image_id: str, version: int | None = None
              ) -> tuple[int, ImageFiles]:
        """The newest (or given) version's files on the host; raises ImageNotPublished."""
        with self._sessions() as s:
            q = select(ImageRow).where(ImageRow.id == image_id, ImageRow.host_uri == host_uri)
            if version is not None:
                q = q.where(ImageRow.version == version)
            row = s.scalars(q.order_by(ImageRow.version.desc())).first()
            if row is None:
                raise ImageNotPublished(f"image {image_id!r} is not published on {host_uri}")
            meta = s.get(ImageVersionRow, (image_id, row.version))
            if meta is None:
                raise ImageNotPublished(f"image {image_id!r} v{row.version} was never "
                                        "imported (import it with vdi image-import)")
            return row.version, ImageFiles(disk_path=row.disk_path, disk_bytes=row.disk_bytes,
                                           traits=traits_of(meta))

    def listing(self) -> list[tuple[str, int, str, datetime]]:
        """(image, version, host, published at) of every published version."""
        with self._sessions() as s:
            return [(r.id, r.version, r.host_uri, r.published_at) for r in s.scalars(
                select(ImageRow).order_by(ImageRow.id, ImageRow.version, ImageRow.host_uri))]

    # -- releases: which version the pools that follow an image run ---------------------

    def released_version(self, image_id: str) -> int | None:
        with self._sessions() as s:
            row = s.get(ImageReleaseRow, image_id)
            return row.version if row else None

    def published_versions(self, image_id: str) -> list[int]:
        with self._sessions() as s:
            return sorted(set(s.scalars(select(ImageRow.version).where(
                ImageRow.id == image_id))))

    def release(self, image_id: str, version: int, by: str) -> int | None:
        """Make `version` the one the pools following `image_id` run (a rollout, or a
        rollback when it is older). Returns the version released before, if any.
        Raises ReleaseError for a version that was never published."""
        if version not in self.published_versions(image_id):
            raise ReleaseError(f"image {image_id!r} has no published version {version}")
        with self._sessions.begin() as s:
            row = s.get(ImageReleaseRow, image_id)
            before = row.version if row else None
            if row is None:
                row = ImageReleaseRow(image_id=image_id)
                s.add(row)
            row.previous_version = before
            row.version = version
            row.released_at = utc_now()
            row.released_by = by
        return before

    def rollback(self, image_id: str, by: str) -> tuple[int, int]:
        """Release the newest published version older than the released one. Returns
        (from, to). Raises ReleaseError when there is nothing older."""
        current = self.released_version(image_id)
        if current is None:
            raise ReleaseError(f"image {image_id!r} has no released version to roll back")
        older = [v for v in self.published_versions(image_id) if v < current]
        if not older:
            raise ReleaseError(f"image {image_id!r} has no version older than {current}")
        self.release(image_id, older[-1], by)
        return current, older[-1]

    def hosts_ready_for(self, pool: Pool, host_uris: list[str]) -> set[str]:
        """The hosts that hold the image version `pool` would get there."""
        with self._sessions() as s:  # one read, whatever the number of hosts
            published = {(uri, version) for uri, version in s.execute(
                select(ImageRow.host_uri, ImageRow.version).where(ImageRow.id == pool.image))}
            release = s.get(ImageReleaseRow, pool.image)
        wanted = pool.image_version or (release.version if release else None)
        if wanted is not None:
            return {uri for uri in host_uris if (uri, wanted) in published}
        newest: dict[str, int] = {}  # nothing released: each host's newest version
        for uri, version in published:
            newest[uri] = max(version, newest.get(uri, 0))
        return {uri for uri in host_uris if uri in newest}

    def target_version(self, pool: Pool, host_uri: str) -> int:
        """The version new desktops of `pool` get on that host: the pool's pinned one,
        else the image's released one, else the newest published there (0: none)."""
        if pool.image_version is not None:
            return pool.image_version
        released = self.released_version(pool.image)
        if released is not None:
            return released
        return self.latest_version(host_uri, pool.image)
