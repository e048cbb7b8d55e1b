from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.pg_server import PgServer
from vdi.db import migrate


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the module, migrated to the newest schema.
    If it cannot start, the tests using it fail with the start script's output."""
    with PgServer() as server:
        migrate(server.url)
        yield server
