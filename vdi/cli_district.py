"""The `vdi` commands for the district's organisation and its records: street offices,
and the audit trail (check and export). Parsers and handlers, called by vdi.cli."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from broker.access_policy import reset_policy, stored_policy
from broker.admin import Admin, AdminRefused
from broker.audit_trail import MAX_EXPORT_ROWS, Filter, as_csv, read_trail
from broker.errors import BadRequest
from vdi.audit import AuditLog
from vdi.domain import Office, utc_now
from vdi.settings import Settings

Command = Callable[[argparse.Namespace, Settings, Admin], int]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    os_ = sub.add_parser("office-set", help="create or change a street office: its clerks' "
                                            "and its helpdesk members' directory groups")
    os_.add_argument("office_id", help="1-32 lower-case letters, digits or '-'")
    os_.add_argument("--name", required=True, help="e.g. 东街街道办")
    os_.add_argument("--clerk-group", action="append", default=[], metavar="DN",
                     help="a group whose members are this office's clerks (repeat)")
    os_.add_argument("--helpdesk-group", action="append", default=[], metavar="DN",
                     help="a group whose members serve this office's clerks (repeat)")
    sub.add_parser("offices", help="list the street offices")
    au = sub.add_parser("audit", help="the audit trail")
    au_sub = au.add_subparsers(dest="audit_command", required=True)
    au_sub.add_parser("verify", help="check the trail's hash chain: names every record "
                                     "edited, deleted or reordered (exit 1 when any is)")
    ex = au_sub.add_parser("export", help="write the trail as CSV (UTF-8, for Excel and WPS)")
    ex.add_argument("--days", type=float, default=30.0)
    ex.add_argument("--actor")
    ex.add_argument("--action")
    ex.add_argument("--out", type=Path, help="the file to write (default: standard output)")
    ap = sub.add_parser("access-policy", help="show the security administrator's access "
                                              "policy, or put it back to this file's settings")
    ap.add_argument("--reset", action="store_true",
                    help="back to the configuration file (no admin networks, its session "
                         "limits and role groups): when the policy locked everyone out")
    ap.add_argument("--reason", help="why (recorded; with --reset)")


def _office_set(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    office = Office(args.office_id, args.name, tuple(args.clerk_group),
                    tuple(args.helpdesk_group))
    new = admin.set_office(office)
    print(f"office {office.id} {'created' if new else 'saved'}; pools join it with "
          f"pool-set --office {office.id}")
    return 0


def _offices(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    pools = admin.catalog.pools()
    for o in admin.offices.offices():
        mine = [p.id for p in pools if p.office == o.id]
        print(f"{o.id}\t{o.name}\tclerks: {'; '.join(o.clerk_groups) or '-'}\t"
              f"helpdesk: {'; '.join(o.helpdesk_groups) or '-'}\tpools: "
              f"{' '.join(mine) or '-'}")
    return 0


def _audit(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    if args.audit_command == "export":
        return _audit_export(args, admin)
    verdict = admin.verify_audit()
    if verdict.intact:
        print(f"audit trail: {verdict.records} records, chain intact"
              + (f"; last #{verdict.last_id} {verdict.last_hash}" if verdict.last_id else ""))
        return 0
    print(f"audit trail: {verdict.records} records read, the chain is BROKEN:")
    for problem in verdict.problems:
        print(f"  {problem}")
    return 1


def _audit_export(args: argparse.Namespace, admin: Admin) -> int:
    params = {"days": str(args.days), "limit": str(MAX_EXPORT_ROWS)}
    params.update({k: v for k, v in (("actor", args.actor), ("action", args.action)) if v})
    try:
        f = Filter.parse(params, limit_max=MAX_EXPORT_ROWS)
    except BadRequest as e:
        raise AdminRefused(str(e)) from e
    rows = read_trail(admin.db, utc_now(), f)
    text = as_csv(rows[::-1])
    admin.note("audit-export", "audit", f"{f.describe()}: {len(rows)} records")
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"{len(rows)} records written to {args.out}", file=sys.stderr)
    return 0


def _access_policy(args: argparse.Namespace, settings: Settings, admin: Admin) -> int:
    if args.reset:
        if not args.reason:
            raise AdminRefused("say why with --reason (it is recorded)")
        try:
            record = reset_policy(admin.db, AuditLog(admin.db), actor=admin.actor,
                                  reason=args.reason, now=utc_now())
        except BadRequest as e:
            raise AdminRefused(str(e)) from e
        print(f"access policy version {record.version}: back to the configuration file; "
              "every broker follows it within seconds")
        return 0
    record = stored_policy(admin.db)
    print(json.dumps({"version": record.version, "updated_by": record.updated_by,
                      "updated_at": record.updated_at.isoformat() if record.updated_at
                      else None, "policy": record.policy.to_json()},
                     ensure_ascii=False, indent=2))
    return 0


COMMANDS: dict[str, Command] = {"office-set": _office_set, "offices": _offices,
                                "audit": _audit, "access-policy": _access_policy}
