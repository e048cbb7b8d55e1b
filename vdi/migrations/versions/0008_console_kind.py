"""consoles by kind: desktops' VNC-named endpoint columns become console_kind/host/port,
pools say which console their desktops get, a console token may open several channels

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# job payload keys of the endpoint a create step found (pools/jobs/steps.py)
_PAYLOAD_KEYS = (("vnc_host", "console_host"), ("vnc_port", "console_port"))


def _rename_payload_keys(renames: tuple[tuple[str, str], ...]) -> None:
    """Jobs still to run keep the endpoint their create step recorded."""
    bind = op.get_bind()
    jobs = sa.table('jobs', sa.column('id', sa.Integer), sa.column('payload', sa.JSON),
                    sa.column('state', sa.String))
    for job_id, payload in bind.execute(sa.select(jobs.c.id, jobs.c.payload).where(
            jobs.c.state.in_(['pending', 'running']))):
        data = payload if isinstance(payload, dict) else json.loads(payload or "{}")
        if not any(old in data for old, _ in renames):
            continue
        for old, new in renames:
            if old in data:
                data[new] = data.pop(old)
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(payload=data))


def upgrade() -> None:
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.alter_column('vnc_host', new_column_name='console_host',
                              existing_type=sa.String(length=255), existing_nullable=True)
        batch_op.alter_column('vnc_port', new_column_name='console_port',
                              existing_type=sa.Integer(), existing_nullable=True)
        batch_op.add_column(sa.Column('console_kind', sa.String(length=16), nullable=False,
                                      server_default='vnc'))
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('console_kind', sa.String(length=16), nullable=False,
                                      server_default='vnc'))
    with op.batch_alter_table('console_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channels', sa.Integer(), nullable=False,
                                      server_default='1'))
        batch_op.add_column(sa.Column('uses', sa.Integer(), nullable=False,
                                      server_default='0'))
    op.execute("UPDATE console_tokens SET uses = 1 WHERE used_at IS NOT NULL")
    _rename_payload_keys(_PAYLOAD_KEYS)


def downgrade() -> None:
    _rename_payload_keys(tuple((new, old) for old, new in _PAYLOAD_KEYS))
    with op.batch_alter_table('console_tokens', schema=None) as batch_op:
        batch_op.drop_column('uses')
        batch_op.drop_column('channels')
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('console_kind')
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.drop_column('console_kind')
        batch_op.alter_column('console_port', new_column_name='vnc_port',
                              existing_type=sa.Integer(), existing_nullable=True)
        batch_op.alter_column('console_host', new_column_name='vnc_host',
                              existing_type=sa.String(length=255), existing_nullable=True)
