"""The audit trail for the audit administrator: a page of it as JSON, an export as CSV,
and a check of its hash chain (broker.audit_trail). Reading it is itself recorded."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.audit_trail import MAX_EXPORT_ROWS, Filter
from vdi.domain import Permission
from web.access import Access, Call, route

READ = Access(Permission.READ_AUDIT)


async def trail(call: Call) -> Response:
    """Records newest first: ?days= (default 7), ?actor=, ?action=, ?outcome=, ?limit=
    (default 200, at most 1000), ?before=ID (the next page)."""
    f = Filter.parse(dict(call.request.query_params))
    rows = await call.api.audit_trail.read(call.signed_in.principal, f, call.source)
    return JSONResponse({"records": [
        {"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "role": r.role,
         "office": r.office, "action": r.action, "target": r.target, "source": r.source,
         "outcome": r.outcome, "detail": r.detail} for r in rows],
        "next": f"before={rows[-1].id}" if len(rows) == f.limit else None})


async def export(call: Call) -> Response:
    """The same filters, every matching record (up to 200,000), oldest first, as CSV."""
    params = {"limit": str(MAX_EXPORT_ROWS), **dict(call.request.query_params)}
    f = Filter.parse(params, limit_max=MAX_EXPORT_ROWS)
    text = await call.api.audit_trail.export(call.signed_in.principal, f, call.source)
    return Response(text.encode("utf-8"), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="audit.csv"'})


async def verify(call: Call) -> Response:
    verdict = await call.api.audit_trail.verify(call.signed_in.principal, call.source)
    return JSONResponse({"records": verdict.records, "intact": verdict.intact,
                         "problems": list(verdict.problems), "last_id": verdict.last_id,
                         "last_hash": verdict.last_hash})


routes: list[Route] = [
    route("/api/admin/audit", "GET", READ, trail),
    route("/api/admin/audit.csv", "GET", READ, export),
    route("/api/admin/audit/verify", "GET", READ, verify),
]
