"""The broker as its own process for the login storm: `python -m bench.login_broker`.

The real app (vdi.wiring.build_app) in uvicorn, configured like production from `VDI_*`
environment variables (the database URL with its password never goes on a command
line), with one difference: its only host is an in-memory FakeHypervisor at
`VDI_LIBVIRT_URI`, because the storm measures the login, assignment and token path,
not libvirt. The pool worker runs as usual. Access logging is off (as behind a reverse
proxy that logs); errors still go to stderr.
"""

from __future__ import annotations

import logging
import os

import uvicorn
from sqlalchemy import select

from pools.fake_hypervisor import FakeHypervisor
from vdi.db import make_engine, session_factory
from vdi.models import DesktopRow
from vdi.settings import load_settings
from vdi.wiring import build_app


def main() -> None:
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(environ=dict(os.environ))
    host = FakeHypervisor(settings.libvirt_uri)
    # the seeded desktops run on this host, as the worker would have left them (else the
    # reconciler would rightly find their domains gone and remake them)
    engine = make_engine(settings.effective_database_url)
    try:
        with session_factory(engine)() as s:
            for row in s.scalars(select(DesktopRow).where(DesktopRow.host_uri == host.uri)):
                host.adopt(row.domain_name, row.id, row.pool_id, row.console_port or 5900)
    finally:
        engine.dispose()
    app = build_app(settings, hosts={host.uri: host})
    uvicorn.run(app, host=settings.listen_host, port=settings.listen_port,
                log_level="warning", access_log=False, lifespan="on",
                ws_max_size=settings.max_ws_frame_bytes, proxy_headers=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
