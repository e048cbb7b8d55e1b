"""messages from the helpdesk to a clerk at their desktop, shown on the desktop's page
until acknowledged

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'helpdesk_messages',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('desktop_id', sa.String(length=64), nullable=False),
        sa.Column('pool_id', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('sender', sa.String(length=128), nullable=False),
        sa.Column('sender_name', sa.String(length=200), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_helpdesk_messages_user', 'helpdesk_messages',
                    ['username', 'seen_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_helpdesk_messages_user', table_name='helpdesk_messages')
    op.drop_table('helpdesk_messages')
