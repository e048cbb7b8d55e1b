"""The Starlette application factory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from broker.auth.directory import Directory
from pools.hypervisor import Hypervisor
from vdi.settings import Settings
from web import api, assets, console, idle_api, pages
from web.assets import Assets
from web.services import Services, build_services, start_background, stop_background

HERE = Path(__file__).parent


def create_app(settings: Settings, *, directory: Directory | None = None,
               hosts: dict[str, Hypervisor] | None = None, run_worker: bool = True) -> Starlette:
    """Build the app; shared resources come to life in the lifespan, not here."""
    bundles = Assets()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services: Services = build_services(settings, directory=directory, hosts=hosts)
        app.state.services = services
        await start_background(services, run_worker=run_worker)
        logging.getLogger(__name__).info("broker ready at %s", settings.public_url)
        try:
            yield
        finally:
            await stop_background(services)

    routes = [
        *api.routes, *idle_api.routes, *pages.routes, *console.routes, *assets.routes(bundles),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.assets = bundles
    return app
