"""desktop uses (a clerk's console open on a desktop, from opening to closing), for
metering desktop-hours and sessions per office and pool

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'desktop_uses',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('desktop_id', sa.String(length=64), nullable=False),
        sa.Column('pool_id', sa.String(length=64), nullable=False),
        sa.Column('office', sa.String(length=64), nullable=True),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_desktop_uses_started', 'desktop_uses', ['started_at'], unique=False)
    op.create_index('ix_desktop_uses_open', 'desktop_uses', ['desktop_id', 'ended_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_desktop_uses_open', table_name='desktop_uses')
    op.drop_index('ix_desktop_uses_started', table_name='desktop_uses')
    op.drop_table('desktop_uses')
