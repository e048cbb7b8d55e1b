from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.ldap_server import SlapdServer


@pytest.fixture(scope="session")
def slapd() -> Iterator[SlapdServer]:
    """The real OpenLDAP server with the demo directory, shared by the session.

    If it cannot start, every test using it fails with the start script's output.
    """
    with SlapdServer() as server:
        yield server
