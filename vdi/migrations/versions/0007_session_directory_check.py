"""sessions: when the directory was last asked about the session's user

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True))
    # a session opened before this release counts as checked when it was opened
    op.execute("UPDATE sessions SET checked_at = created_at")
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.alter_column('checked_at', existing_type=sa.DateTime(timezone=True),
                              nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('checked_at')
