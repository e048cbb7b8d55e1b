"""image imports started through the API (their progress for the admin console); a
pool's user-data for its desktops' NoCloud seeds; pools without a network card unless
given one (QEMU user-mode networking lets a guest reach the host's loopback services)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'image_imports',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('image_id', sa.String(length=64), nullable=False),
        sa.Column('source', sa.String(length=1024), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('stage', sa.String(length=64), nullable=False),
        sa.Column('percent', sa.Integer(), nullable=False),
        sa.Column('message', sa.Text(), nullable=True),
        sa.Column('version', sa.Integer(), nullable=True),
        sa.Column('started_by', sa.String(length=128), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('user_data', sa.Text(), nullable=True))
        batch_op.alter_column('network', existing_type=sa.String(length=80),
                              server_default='none', existing_nullable=False)
    op.execute("UPDATE pools SET network = 'none' WHERE network = 'user'")


def downgrade() -> None:
    op.execute("UPDATE pools SET network = 'user' WHERE network = 'none'")
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.alter_column('network', existing_type=sa.String(length=80),
                              server_default='user', existing_nullable=False)
        batch_op.drop_column('user_data')
    op.drop_table('image_imports')
