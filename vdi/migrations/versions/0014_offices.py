"""street offices (街道办) as records: their clerks' and helpdesk members' directory
groups; a pool may belong to one

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'offices',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('clerk_groups', sa.JSON(), nullable=False),
        sa.Column('helpdesk_groups', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('office', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('office')
    op.drop_table('offices')
