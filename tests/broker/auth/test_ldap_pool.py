"""The kept (pooled) service-account connections of LdapDirectory, against the real slapd.

What must hold: a login opens one new connection (the user's bind) instead of two; a
connection that carried a user's bind is never used again; a kept connection the server
dropped is replaced inside the same login; old idle ones are not used; close() ends them.
A counting relay in front of slapd shows every TCP connection the adapter opens.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import broker.auth.ldap as ldap_module
from broker.auth.directory import DirectoryUnavailable, InvalidCredentials
from broker.auth.ldap import LdapDirectory
from harness.ldap_server import DEMO_PASSWORD, GROUP_BASE, SERVICE_DN, SlapdServer
from harness.relay import LoopbackRelay
from vdi.settings import Settings

pytestmark = pytest.mark.real


class CountingRelay(LoopbackRelay):
    """A loopback TCP relay to slapd that counts the connections it accepts and can drop
    every relayed connection at once (a server restart, an idle timeout)."""

    scheme = "ldap"

    def __init__(self, backend_port: int) -> None:
        self.accepted = 0
        super().__init__(backend_port, name="counting-relay")

    def admit(self, conn: socket.socket) -> socket.socket | None:
        with self._lock:
            self.accepted += 1
        return conn


@pytest.fixture
def relay(slapd: SlapdServer) -> Iterator[CountingRelay]:
    r = CountingRelay(slapd.port)
    yield r
    r.stop()


def through(relay: CountingRelay, slapd: SlapdServer, **changes: Any) -> LdapDirectory:
    return LdapDirectory(Settings(**slapd.settings_overrides(ldap_url=relay.url, **changes)))


def test_a_login_opens_one_connection_after_the_first(relay: CountingRelay,
                                                      slapd: SlapdServer) -> None:
    directory = through(relay, slapd)
    directory.authenticate("zhangsan", DEMO_PASSWORD)
    assert relay.accepted == 2  # the service connection (kept) and zhangsan's bind
    for name in ("lisi", "sunqi", "wangwu", "zhaoliu"):
        directory.authenticate(name, DEMO_PASSWORD)
    assert relay.accepted == 2 + 4  # one per login: the user's own bind
    assert directory.kept_connections == 1
    directory.close()


def test_kept_connections_are_bound_as_the_service_account_only(relay: CountingRelay,
                                                                 slapd: SlapdServer) -> None:
    directory = through(relay, slapd)
    with pytest.raises(InvalidCredentials):
        directory.authenticate("lisi", "wrong-password")
    # each login is answered from the service account's view of the directory: had a
    # user's bind been kept, lisi (who may read only her own entry) could not find
    # zhaoliu, nor read the groups that make him an admin
    directory.authenticate("lisi", DEMO_PASSWORD)
    zhaoliu = directory.authenticate("zhaoliu", DEMO_PASSWORD)
    assert f"cn=vdi-admins,{GROUP_BASE}".lower() in zhaoliu.groups
    for conn, _since in directory._idle:
        assert conn.extend.standard.who_am_i() == f"dn:{SERVICE_DN}"
    directory.close()


def test_a_dropped_kept_connection_is_replaced_within_the_login(relay: CountingRelay,
                                                                slapd: SlapdServer) -> None:
    directory = through(relay, slapd)
    directory.authenticate("zhangsan", DEMO_PASSWORD)
    relay.drop_all()  # the server went away and came back while the connection sat idle
    user = directory.authenticate("lisi", DEMO_PASSWORD)
    assert user.display_name == "李四"
    assert relay.accepted == 2 + 2  # a new service connection and lisi's bind
    directory.close()


def test_the_directory_gone_for_good_is_still_unavailable(relay: CountingRelay,
                                                          slapd: SlapdServer) -> None:
    directory = through(relay, slapd, ldap_timeout_s=1.0)
    directory.authenticate("zhangsan", DEMO_PASSWORD)
    relay.stop()  # nobody listens any more and the kept connection is cut
    with pytest.raises(DirectoryUnavailable):
        directory.authenticate("lisi", DEMO_PASSWORD)
    assert directory.kept_connections == 0


def test_connections_idle_too_long_are_not_used(relay: CountingRelay, slapd: SlapdServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldap_module, "SERVICE_IDLE_S", 0.5)
    directory = through(relay, slapd)
    directory.authenticate("zhangsan", DEMO_PASSWORD)
    time.sleep(0.7)
    directory.authenticate("lisi", DEMO_PASSWORD)
    assert relay.accepted == 2 + 2  # the old one was closed, a new one opened
    assert directory.kept_connections == 1
    directory.close()


def test_parallel_logins_keep_at_most_the_pool_size(relay: CountingRelay,
                                                    slapd: SlapdServer) -> None:
    directory = through(relay, slapd, ldap_timeout_s=5.0)
    names = ["zhangsan", "lisi", "sunqi", "wangwu", "zhaoliu"] * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        users = list(pool.map(lambda n: directory.authenticate(n, DEMO_PASSWORD), names))
    assert [u.username for u in users] == names
    assert 1 <= directory.kept_connections <= 8
    # service connections: at most one per thread at a time; one user bind per login
    assert relay.accepted <= len(names) + 8
    directory.close()
    assert directory.kept_connections == 0
    assert directory.authenticate("lisi", DEMO_PASSWORD).username == "lisi"  # works again
    directory.close()


def test_the_pool_size_bounds_what_is_kept(relay: CountingRelay, slapd: SlapdServer) -> None:
    directory = LdapDirectory(Settings(**slapd.settings_overrides(ldap_url=relay.url,
                                                                  ldap_timeout_s=5.0)),
                              service_pool_size=2)
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda n: directory.authenticate(n, DEMO_PASSWORD), ["lisi"] * 30))
    assert directory.kept_connections <= 2
    directory.close()
