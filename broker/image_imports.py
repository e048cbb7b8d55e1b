"""Image imports started through the API (the admin console): the same import as
`vdi image-import` (broker.admin), run in the background, its progress kept in the
`image_imports` table for the console to show.

Only files in the import folder (settings `image_import_dir`) can be imported this way,
named relative to it: a request naming any other path (`..`, an absolute path, a
symbolic link out of the folder, a device) is refused. An admin's browser could
otherwise make the broker read any file of the host (a disk device, another desktop's
disk) into a desktop image."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from broker.admin import Admin, AdminRefused
from broker.errors import BadRequest
from pools.hosts import Host
from pools.hypervisor import Hypervisor
from pools.imports import ImportOptions
from vdi.domain import Principal, utc_now
from vdi.models import ImageImportRow

log = logging.getLogger(__name__)
# a running import whose progress stopped this long is lost (its broker stopped): above
# the longest stage that reports nothing (qemu-img check of a large file, 10 min)
STALE = timedelta(minutes=20)
PROGRESS_EVERY_S = 1.0  # progress is written at most this often
IMPORTS_AT_ONCE = 2  # per broker process


class ImportNotFound(LookupError):
    """No import of that id."""


@dataclass(frozen=True)
class ImportStatus:
    id: int
    image_id: str
    source: str
    state: str  # running | done | failed | interrupted
    stage: str
    percent: int
    message: str | None
    version: int | None
    started_by: str
    started_at: datetime


Targets = Callable[[], list[tuple[Host, Hypervisor]]]


class ImageImports:
    def __init__(self, db: sessionmaker[Session], *, folder: Path, library: Path,
                 targets: Targets, clock: Callable[[], datetime] = utc_now) -> None:
        self._db = db
        self.folder = folder
        self._library = library
        self._targets = targets
        self._clock = clock
        self._tasks: set[asyncio.Future[None]] = set()
        # Imports take minutes (copy, check, convert, hash, upload): threads of their own,
        # so they never hold the threads the event loop lends to sign-ins and the rest.
        # A third import at once waits its turn, shown as its first stage at 0 %.
        self._threads = ThreadPoolExecutor(max_workers=IMPORTS_AT_ONCE,
                                           thread_name_prefix="vdi-import")

    def source_file(self, name: str) -> Path:
        """The import folder's file `name`. Raises BadRequest for anything else."""
        if not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise BadRequest("Name a file in the import folder.")
        folder = self.folder.resolve()
        path = (folder / name).resolve()
        if folder not in path.parents or not path.is_file():
            raise BadRequest("Name a file in the import folder.")
        return path

    async def files(self) -> list[str]:
        """The names of the import folder's files an import may name (subfolders too,
        at most 500), sorted; an absent folder has none."""
        def scan() -> list[str]:
            folder = self.folder.resolve()
            if not folder.is_dir():
                return []
            names: list[str] = []
            for path in sorted(folder.rglob("*")):
                if len(names) >= 500:
                    break
                with contextlib.suppress(BadRequest, OSError):
                    name = str(path.relative_to(folder))
                    self.source_file(name)
                    names.append(name)
            return names
        return await asyncio.to_thread(scan)

    async def start(self, who: Principal, image_id: str, file_name: str,
                    options: ImportOptions) -> int:
        """Check the request, record the import and run it in the background; its id.
        Raises BadRequest for a file outside the import folder."""
        source = self.source_file(file_name)
        now = self._clock()
        row = ImageImportRow(image_id=image_id[:64], source=file_name[:1024], state="running",
                             stage="check", percent=0, started_by=who.username,
                             started_at=now, updated_at=now)

        def record() -> int:
            with self._db.begin() as s:
                s.add(row)
                s.flush()
                return int(row.id)
        loop = asyncio.get_running_loop()
        import_id = await loop.run_in_executor(self._threads, record)
        task = asyncio.ensure_future(loop.run_in_executor(
            self._threads, self._run, import_id, who, image_id, source, options))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return import_id

    def _run(self, import_id: int, who: Principal, image_id: str, source: Path,
             options: ImportOptions) -> None:
        last = 0.0

        def progress(stage: str, percent: float) -> None:
            nonlocal last
            if time.monotonic() - last < PROGRESS_EVERY_S and percent < 100:
                return
            last = time.monotonic()
            self._write(import_id, stage=stage, percent=int(percent))

        admin = Admin(self._db, actor=who.username, source="api", clock=self._clock)
        try:
            done = admin.import_image(image_id, source, options, self._targets(),
                                      self._library, progress)
        except AdminRefused as e:
            self._write(import_id, state="failed", message=str(e))
            return
        except Exception as e:  # recorded for the admin, and logged: never lost
            log.exception("image import %d failed", import_id)
            self._write(import_id, state="failed", message=f"import failed: {e}")
            return
        message = f"v{done.version} on {', '.join(c.host.name for c in done.copies)}"
        try:
            if admin.images.released_version(image_id) is None:
                admin.release_image(image_id, done.version)
                message += "; released"
        except AdminRefused as e:
            message += f"; not released: {e}"
        self._write(import_id, state="done", stage="done", percent=100,
                    version=done.version, message=message)

    def _write(self, import_id: int, **values: object) -> None:
        with contextlib.suppress(Exception), self._db.begin() as s:
            row = s.get(ImageImportRow, import_id)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)
                row.updated_at = self._clock()

    def status(self, import_id: int) -> ImportStatus:
        """Raises ImportNotFound."""
        with self._db() as s:
            row = s.get(ImageImportRow, import_id)
            if row is None:
                raise ImportNotFound(str(import_id))
            state = row.state
            if state == "running" and self._clock() - row.updated_at > STALE:
                state = "interrupted"  # its broker stopped; import the file again
            return ImportStatus(row.id, row.image_id, row.source, state, row.stage,
                                row.percent, row.message, row.version, row.started_by,
                                row.started_at)

    async def drain(self) -> None:
        """Wait for the imports running in this process (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Wait for the running imports, then release their threads."""
        await self.drain()
        self._threads.shutdown(wait=True)
