"""Golden image versions: publish the files to a host and remember where they are."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pools.hypervisor import Hypervisor, ImageFiles, image_digest
from vdi.domain import utc_now
from vdi.models import ImageRow


class ImageNotPublished(LookupError):
    """No version of the image is published on that host."""


class ImageStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def publish(self, host: Hypervisor, image_id: str, source_dir: Path,
                version: int | None = None) -> tuple[int, ImageFiles]:
        """Upload the image files to the host and record them. Without a version, the
        same build as the newest version is that version (idempotent); another build
        becomes a new version. Blocks (hashes and uploads the files)."""
        digest = image_digest(source_dir)
        if version is None:
            latest = self.latest_version(host.uri, image_id)
            if latest and self._digest(host.uri, image_id, latest) == digest:
                return self.files(host.uri, image_id, latest)
            version = latest + 1
        files = host.publish_image(image_id, version, source_dir)
        with self._sessions.begin() as s:
            row = s.get(ImageRow, (image_id, host.uri, version))
            if row is None:
                s.add(ImageRow(id=image_id, host_uri=host.uri, version=version,
                               disk_path=files.disk_path, kernel_path=files.kernel_path,
                               initrd_path=files.initrd_path, cmdline=files.cmdline,
                               disk_bytes=files.disk_bytes, digest=digest,
                               published_at=utc_now()))
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
            return row.version, ImageFiles(disk_path=row.disk_path, kernel_path=row.kernel_path,
                                           initrd_path=row.initrd_path, cmdline=row.cmdline,
                                           disk_bytes=row.disk_bytes)
