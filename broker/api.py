"""The use cases the web layer calls, in one value built by the wiring (vdi.wiring).

The web layer sees only this: no engine, no stores, no hypervisor, no worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.access_policy import PolicyStore
from broker.api_tokens import ApiTokens
from broker.audit_trail import AuditTrail
from broker.blocking import Blocking
from broker.consoles import Consoles
from broker.dashboard import DashboardView
from broker.helpdesk import Helpdesk
from broker.image_imports import ImageImports
from broker.metering import Metering
from broker.portal import Portal
from broker.readonly_views import ReadOnlyViews
from broker.reclaims import ReclaimLog
from broker.security_admin import SecurityAdmin
from broker.signin import SignIn
from broker.system_admin import SystemAdmin

log = logging.getLogger(__name__)


class DatabaseDown(Exception):
    """The health check could not reach the database; the message says why."""


class Health:
    def __init__(self, blocking: Blocking, db: sessionmaker[Session]) -> None:
        self._blocking = blocking
        self._db = db

    async def check(self) -> None:
        """Returns when the database answers; raises DatabaseDown otherwise."""

        def ping() -> None:
            with self._db() as s:
                s.execute(text("SELECT 1"))

        try:
            await self._blocking.db(ping)
        except SQLAlchemyError as e:  # the detail goes to the log, not to the caller
            log.error("health check: the database does not answer: %s", e)
            raise DatabaseDown("the database does not answer") from e


@dataclass(frozen=True)
class BrokerApi:
    signin: SignIn
    portal: Portal
    consoles: Consoles
    reclaims: ReclaimLog
    health: Health
    image_imports: ImageImports
    audit_trail: AuditTrail
    helpdesk: Helpdesk
    views: ReadOnlyViews
    security: SecurityAdmin
    dashboard: DashboardView
    metering: Metering
    policy: PolicyStore
    api_tokens: ApiTokens
    system_admin: SystemAdmin
