"""A directory outage while clerks work: sessions are kept (an outage must not throw
every clerk out), and after one failed re-check the directory is left alone for the
backoff, so requests do not each wait for a lookup's deadline. Broker logic on the fake
directory (held to slapd by tests/broker/auth); the real slapd's outage is in
tests/web/test_login_path.py."""

from __future__ import annotations

from broker.auth.directory import DirectoryUnavailable, DirectoryUser
from broker.auth.fake_directory import FakeDirectory
from pools.hypervisor import ImageDisk
from tests.web.conftest import STAFF_GROUP, BrokerFactory, start_with_fake_host, window_pool


class OutageDirectory(FakeDirectory):
    """The fake directory, with lookups that fail while `down` and are counted."""

    def __init__(self) -> None:
        super().__init__({"zhangsan": ("pw", "张三", (STAFF_GROUP,))})
        self.down = False
        self.lookups = 0

    def lookup(self, username: str) -> DirectoryUser | None:
        self.lookups += 1
        if self.down:
            raise DirectoryUnavailable("the directory does not answer")
        return super().lookup(username)


def test_an_outage_keeps_sessions_and_is_asked_once_per_backoff(
        broker_factory: BrokerFactory, fake_image: ImageDisk) -> None:
    directory = OutageDirectory()
    fake = start_with_fake_host(broker_factory, fake_image, pools=(window_pool(),),
                                directory=directory, session_recheck_s=0)
    fake.broker.wait_ready("window")
    me = fake.broker.login("zhangsan", "pw")
    assert me.client.get("/api/session").status_code == 200
    assert directory.lookups == 1  # re-checked at once (bound 0) and confirmed
    directory.down = True
    for _ in range(5):  # every request is due, but only the first one asks
        assert me.client.get("/api/session").status_code == 200
    assert directory.lookups == 2
    # a console is still granted on the session as last confirmed
    assert me.connect_when_ready("window")["console"].startswith("/console/")
    assert directory.lookups == 2
