"""the helpdesk's read-only views of a clerk's desktop, and its disconnects of a
clerk's consoles

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'helpdesk_views',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('session_hash', sa.String(length=64), nullable=False),
        sa.Column('viewer', sa.String(length=128), nullable=False),
        sa.Column('viewer_name', sa.String(length=200), nullable=False),
        sa.Column('desktop_id', sa.String(length=64), nullable=False),
        sa.Column('pool_id', sa.String(length=64), nullable=False),
        sa.Column('clerk', sa.String(length=128), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('granted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('alive_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_index('ix_helpdesk_views_clerk', 'helpdesk_views', ['clerk', 'closed_at'],
                    unique=False)
    op.create_table(
        'console_disconnects',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('desktop_id', sa.String(length=64), nullable=False),
        sa.Column('pool_id', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('by_user', sa.String(length=128), nullable=False),
        sa.Column('by_name', sa.String(length=200), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_console_disconnects_user', 'console_disconnects',
                    ['username', 'seen_at'], unique=False)
    op.create_index('ix_console_disconnects_desktop', 'console_disconnects',
                    ['desktop_id', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_console_disconnects_desktop', table_name='console_disconnects')
    op.drop_index('ix_console_disconnects_user', table_name='console_disconnects')
    op.drop_table('console_disconnects')
    op.drop_index('ix_helpdesk_views_clerk', table_name='helpdesk_views')
    op.drop_table('helpdesk_views')
