"""The audit trail for the audit administrator (web and CLI): read it, export it as CSV,
check its chain. Reading is itself on record: who looked at what, and who exported it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.access import roles_text
from broker.blocking import Blocking
from broker.errors import BadRequest
from vdi.audit import AuditLog
from vdi.audit_chain import Verdict
from vdi.domain import Principal, utc_now
from vdi.models import AuditRow

MAX_ROWS = 1000  # one page of the trail
MAX_EXPORT_ROWS = 200_000
MAX_DAYS = 400
# what makes a spreadsheet (Excel, WPS) read a cell as a formula; full-width forms too
FORMULA_STARTS = frozenset("=+-@\t\r\n＝＋－＠")
COLUMNS = ("id", "at", "actor", "role", "office", "action", "target", "source", "outcome",
           "detail", "hash_alg", "hash")


@dataclass(frozen=True)
class Filter:
    """Which records: of the last `days`, by actor, action or outcome (exact), older than
    record `before` (paging back), at most `limit`."""

    days: float = 7.0
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    before: int | None = None
    limit: int = 200

    @classmethod
    def parse(cls, params: dict[str, str], *, limit_max: int = MAX_ROWS) -> Filter:
        """From a request's query; raises BadRequest naming what is wrong."""
        raw_limit, raw_before = params.get("limit", "200"), params.get("before") or None
        if not all(v.isascii() and v.isdigit() and len(v) <= 12
                   for v in (raw_limit, raw_before) if v is not None):
            raise BadRequest("limit and before must be whole numbers.")
        try:
            days = float(params.get("days", "7"))
        except ValueError:
            raise BadRequest("days must be a number.") from None
        limit, before = int(raw_limit), int(raw_before) if raw_before else None
        if not math.isfinite(days) or not 0 < days <= MAX_DAYS:
            raise BadRequest(f"days must be more than 0 and at most {MAX_DAYS}.")
        if not 0 < limit <= limit_max or (before is not None and before < 1):
            raise BadRequest(f"limit must be 1 to {limit_max}; before a record id.")
        texts = {k: params.get(k) or None for k in ("actor", "action", "outcome")}
        if any(v is not None and (len(v) > 128 or "\0" in v) for v in texts.values()):
            raise BadRequest("A filter is too long.")
        return cls(days=days, before=before, limit=limit, **texts)

    def describe(self) -> str:
        parts = [f"{self.days:g} days"] + [f"{k}={v}" for k, v in (
            ("actor", self.actor), ("action", self.action), ("outcome", self.outcome),
            ("before", self.before)) if v is not None]
        return ", ".join(parts)


def read_trail(db: sessionmaker[Session], now: datetime, f: Filter) -> list[AuditRow]:
    """Records matching `f`, newest first. Blocks on the database."""
    q = select(AuditRow).where(AuditRow.at >= now - timedelta(days=f.days))
    for column, value in ((AuditRow.actor, f.actor), (AuditRow.action, f.action),
                          (AuditRow.outcome, f.outcome)):
        if value is not None:
            q = q.where(column == value)
    if f.before is not None:
        q = q.where(AuditRow.id < f.before)
    with db() as s:
        return list(s.scalars(q.order_by(AuditRow.id.desc()).limit(f.limit)))


def cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: a value starting with = + - @ (or a tab
    or carriage return) is a formula to Excel and WPS, so it gets a leading apostrophe
    (a lone "-", the trail's "none", is left as it is)."""
    text = "" if value is None else value.isoformat() if isinstance(value, datetime) \
        else str(value)
    formula = len(text) > 1 and text[0] in FORMULA_STARTS
    return "'" + text if formula else text


def as_csv(rows: list[AuditRow]) -> str:
    """UTF-8 CSV with a byte-order mark (Excel and WPS then read Chinese right)."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([cell(getattr(r, c)) for c in COLUMNS])
    return out.getvalue()


class AuditTrail:
    def __init__(self, *, blocking: Blocking, db: sessionmaker[Session], audit: AuditLog,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._blocking = blocking
        self._db = db
        self._audit = audit
        self._clock = clock

    async def _noted(self, who: Principal, action: str, source: str, detail: str,
                     outcome: str = "ok") -> None:
        await self._blocking.db(lambda: self._audit.record(
            actor=who.username, role=roles_text(who), action=action, target="audit",
            source=source, outcome=outcome, detail=detail))

    async def read(self, who: Principal, f: Filter, source: str) -> list[AuditRow]:
        """A page of the trail for the caller (who must hold READ_AUDIT)."""
        rows = await self._blocking.db(lambda: read_trail(self._db, self._clock(), f))
        await self._noted(who, "audit-read", source, f"{f.describe()}: {len(rows)} records")
        return rows

    async def export(self, who: Principal, f: Filter, source: str) -> str:
        """The records as CSV, oldest first."""
        rows = await self._blocking.db(lambda: read_trail(self._db, self._clock(), f))
        await self._noted(who, "audit-export", source, f"{f.describe()}: {len(rows)} records")
        return as_csv(rows[::-1])

    async def verify(self, who: Principal, source: str) -> Verdict:
        verdict = await self._blocking.db(self._audit.verify)
        await self._noted(who, "audit-verify", source, f"{verdict.records} records, " + (
            "intact" if verdict.intact else f"{len(verdict.problems)} problem(s)"),
            "ok" if verdict.intact else "broken")
        return verdict
