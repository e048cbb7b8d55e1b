"""the audit trail becomes tamper-evident: each record hash-chained to the one before it
(SM3 where OpenSSL offers it, else SHA-256; the records already there are chained as they
are, in id order), the office of the actor recorded, and UPDATE and DELETE of audit rows
refused by the database itself (triggers; on PostgreSQL also TRUNCATE)

A later migration that rebuilds the audit table (SQLite's batch mode copies a table to
change it) must create these triggers again.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from vdi.audit_chain import Content, chain_hash, preferred_algorithm

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

REFUSAL = "audit records are append-only"


def upgrade() -> None:
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.add_column(sa.Column('office', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('hash_alg', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('hash', sa.String(length=64), nullable=True))
    _chain_existing()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE FUNCTION vdi_audit_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$ LANGUAGE plpgsql""")
        op.execute("CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION vdi_audit_append_only()")
        op.execute("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
                   "FOR EACH STATEMENT EXECUTE FUNCTION vdi_audit_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_no_{event.lower()} BEFORE {event} ON audit "
                       f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END")


def _chain_existing() -> None:
    conn = op.get_bind()
    audit = sa.table("audit", *(sa.column(c) for c in (
        "id", "at", "actor", "role", "office", "action", "target", "source", "outcome",
        "detail", "hash_alg", "prev_hash", "hash")))
    algorithm = preferred_algorithm()
    prev = ""
    rows = conn.execute(sa.select(audit).order_by(audit.c.id)).mappings().all()
    for r in rows:
        at = r["at"]
        if isinstance(at, str):  # SQLite hands back text through a plain table
            at = datetime.fromisoformat(at)
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        content = Content(id=r["id"], at=at, actor=r["actor"], role=r["role"], office=None,
                          action=r["action"], target=r["target"], source=r["source"],
                          outcome=r["outcome"], detail=r["detail"] or "")
        digest = chain_hash(algorithm, prev, content)
        conn.execute(sa.update(audit).where(audit.c.id == r["id"]).values(
            detail=content.detail, hash_alg=algorithm, prev_hash=prev, hash=digest))
        prev = digest


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_no_truncate ON audit")
        op.execute("DROP TRIGGER audit_append_only ON audit")
        op.execute("DROP FUNCTION vdi_audit_append_only()")
    else:
        op.execute("DROP TRIGGER audit_no_update")
        op.execute("DROP TRIGGER audit_no_delete")
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_column('hash')
        batch_op.drop_column('prev_hash')
        batch_op.drop_column('hash_alg')
        batch_op.drop_column('office')
