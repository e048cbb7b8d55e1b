"""A throwaway PostgreSQL server, started by deploy/postgres/start-postgres.sh.

    with PgServer() as pg:
        migrate(pg.url)

The server listens on a free loopback port and keeps its cluster in a temporary
directory that stop() deletes. The role's password is random and reaches the script
through its environment only. If the server cannot start, PgError carries the script's
output: tests that need it fail, they are never skipped. The benchmarks use it too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from harness.ldap_server import free_loopback_port

REPO = Path(__file__).resolve().parent.parent
PG_DEPLOY = REPO / "deploy" / "postgres"
DATABASE = "vdi"
ROLE = "vdi"


class PgError(RuntimeError):
    """PostgreSQL could not be started or stopped; the message holds the script's output."""


class PgServer:
    """Starts on construction; stop() (or leaving the `with` block) removes everything.

    `options` are extra server settings (`-c name=value ...`), e.g. a higher
    max_connections for a benchmark.
    """

    START_ATTEMPTS = 3  # a new port each time: another process may grab a "free" port

    def __init__(self, *, timeout_s: float = 60.0, options: str = "") -> None:
        self._timeout_s = timeout_s
        self.password = secrets.token_urlsafe(18)
        self._env = {**os.environ, "VDI_PG_PASSWORD": self.password,
                     "VDI_PG_DATABASE": DATABASE, "VDI_PG_USER": ROLE,
                     "VDI_PG_OPTIONS": options}
        # the server runs as the `postgres` OS user: /tmp is searchable by everyone
        self.run_dir = Path(tempfile.mkdtemp(prefix="vdi-pg-", dir="/tmp"))
        outputs = []
        for _attempt in range(self.START_ATTEMPTS):
            self.port = free_loopback_port()
            result = self._script("start-postgres.sh", str(self.run_dir), str(self.port))
            if result.returncode == 0:
                return
            outputs.append(f"port {self.port}, exit {result.returncode}:\n{result.stdout}")
            if "Address already in use" not in result.stdout:
                break
        try:
            self.stop()
        except PgError as e:
            outputs.append(str(e))
        raise PgError("start-postgres.sh failed\n" + "\n".join(outputs))

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver); holds the password: never log it."""
        return f"postgresql+psycopg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def safe_url(self) -> str:
        return self.url.replace(self.password, "***")

    def restart(self) -> None:
        """Stop the server and start it again on the same port with the same data:
        every client connection is cut."""
        for name, args in (("stop-postgres.sh", [str(self.run_dir)]),
                           ("start-postgres.sh", [str(self.run_dir), str(self.port)])):
            result = self._script(name, *args)
            if result.returncode != 0:
                raise PgError(f"{name} failed during a restart:\n{result.stdout}")

    def protect_audit(self) -> str:
        """Run deploy/postgres/protect-audit.sh (after migrating): the audit table gets
        an owner of its own. Its output; PgError when it fails."""
        result = self._script("protect-audit.sh", str(self.run_dir), str(self.port))
        if result.returncode != 0:
            raise PgError(f"protect-audit.sh failed:\n{result.stdout}")
        return result.stdout

    def stop(self) -> None:
        """Stop the server and delete its directory. Idempotent."""
        if not self.run_dir.exists():
            return
        result = self._script("stop-postgres.sh", str(self.run_dir))
        if result.returncode != 0:
            raise PgError(f"stop-postgres.sh failed ({self.run_dir} kept):\n{result.stdout}")
        shutil.rmtree(self.run_dir)

    def _script(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(PG_DEPLOY / name), *args], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=self._timeout_s, check=False,
                env=self._env)
        except subprocess.TimeoutExpired as e:
            raise PgError(f"{name} did not finish in {self._timeout_s} s: {e.output}") from e

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
