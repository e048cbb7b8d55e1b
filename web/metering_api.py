"""Metering (broker.metering): desktop-hours and sessions per office or pool over a range
of the district's days, as JSON and as CSV, and desktops in use through one day (the
dashboard's chart)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.errors import BadRequest
from broker.metering import STEPS_S, Report, parse_day, parse_range
from vdi.domain import Permission
from web.access import Access, Call, route

READ = Access(Permission.READ_METERING)


def report_json(r: Report) -> dict[str, object]:
    return {
        "from": r.first.isoformat(), "to": r.last.isoformat(), "by": r.by,
        "lines": [{"key": line.key, "name": line.name, "sessions": line.sessions,
                   "hours": round(line.hours, 4), "clerks": line.clerks} for line in r.lines],
        "total": {"sessions": r.total_sessions, "hours": round(r.total_hours, 4)},
        "daily": [{"day": day.isoformat(),
                   "hours": {k: round(v, 4) for k, v in sorted(r.daily[day].items())}}
                  for day in sorted(r.daily)]}


async def report(call: Call) -> Response:
    """?from=YYYY-MM-DD&to=YYYY-MM-DD (inclusive; default the last 30 days) &by=office|pool."""
    metering = call.api.metering
    first, last, by = parse_range(dict(call.request.query_params), metering.today())
    return JSONResponse(report_json(await metering.report(first, last, by)))


async def export(call: Call) -> Response:
    metering = call.api.metering
    first, last, by = parse_range(dict(call.request.query_params), metering.today())
    text = await metering.export(call.signed_in.principal, first, last, by, call.source)
    name = f"metering-{by}-{first.isoformat()}-{last.isoformat()}.csv"
    return Response(text.encode("utf-8"), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}"'})


async def usage(call: Call) -> Response:
    """?day=YYYY-MM-DD (default today) &step_s= (60, 300, 900, 1800 or 3600; default 300):
    desktops in use at each step of the day, up to now."""
    metering = call.api.metering
    params = call.request.query_params
    day = parse_day(params["day"], "day") if "day" in params else metering.today()
    raw_step = params.get("step_s", "300")
    if raw_step not in {str(s) for s in STEPS_S}:
        raise BadRequest("step_s must be one of " + ", ".join(str(s) for s in STEPS_S) + ".")
    points = await metering.in_use(day, int(raw_step))
    return JSONResponse({"day": day.isoformat(), "step_s": int(raw_step),
                         "points": [{"at": at.isoformat(), "in_use": n} for at, n in points]})


routes: list[Route] = [
    route("/api/admin/metering", "GET", READ, report),
    route("/api/admin/metering.csv", "GET", READ, export),
    route("/api/admin/usage", "GET", Access(Permission.VIEW_SERVICE), usage),
]
