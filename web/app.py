"""The Starlette application factory. The web layer is handed the use cases (BrokerApi)
by whoever runs it (vdi.wiring); it builds nothing of the broker itself."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from broker.api import BrokerApi
from vdi.settings import Settings
from web import (
    admin_api,
    admin_hosts_api,
    admin_pools_api,
    api,
    assets,
    audit_api,
    console,
    helpdesk_api,
    idle_api,
    metering_api,
    openapi,
    pages,
    security_api,
    tokens_api,
)
from web.assets import Assets

HERE = Path(__file__).parent
App = Starlette


def all_routes(bundles: Assets) -> list[BaseRoute]:
    return [
        *api.routes, *idle_api.routes, *admin_api.routes, *admin_pools_api.routes,
        *admin_hosts_api.routes, *audit_api.routes, *helpdesk_api.routes,
        *security_api.routes, *metering_api.routes, *tokens_api.routes, *openapi.routes,
        *pages.routes, *console.routes,
        *assets.routes(bundles),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def create_app(settings: Settings,
               running: Callable[[], AbstractAsyncContextManager[BrokerApi]]) -> App:
    """The app; `running()` yields the use cases for as long as the app serves."""
    bundles = Assets()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running() as broker_api:
            app.state.api = broker_api
            yield

    app = Starlette(routes=all_routes(bundles), lifespan=lifespan)
    app.state.assets = bundles
    app.state.settings = settings
    return app
