"""clerks waiting for a desktop: a first-come, first-served queue per pool; the guest's
addresses as its agent tells them; networks per department, and the pool's network

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'waiters',
        sa.Column('pool_id', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('pool_id', 'username'),
    )
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('guest_addresses', sa.String(length=255),
                                      nullable=True))
    op.create_table(
        'networks',
        sa.Column('name', sa.String(length=16), nullable=False),
        sa.Column('subnet', sa.String(length=43), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('network', sa.String(length=80), nullable=False,
                                      server_default='user'))


def downgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('network')
    op.drop_table('networks')
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.drop_column('guest_addresses')
    op.drop_table('waiters')
