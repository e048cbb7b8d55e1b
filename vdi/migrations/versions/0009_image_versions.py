"""golden images are whole disks: each imported build's traits (firmware, OS family,
architecture, drivers, agent) in image_versions; the per-host records lose the kernel,
initrd and command line of direct kernel boot; pools get a boot timeout and secure boot

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'image_versions',
        sa.Column('image_id', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('firmware', sa.String(length=8), nullable=False),
        sa.Column('os_family', sa.String(length=16), nullable=False),
        sa.Column('arch', sa.String(length=16), nullable=False),
        sa.Column('virtio', sa.Boolean(), nullable=False),
        sa.Column('agent', sa.Boolean(), nullable=False),
        sa.Column('boot_delay_s', sa.Integer(), nullable=False),
        sa.Column('secure_boot', sa.Boolean(), nullable=False),
        sa.Column('disk_bytes', sa.BigInteger(), nullable=False),
        sa.Column('file_bytes', sa.BigInteger(), nullable=False),
        sa.Column('source', sa.String(length=1024), nullable=False),
        sa.Column('source_format', sa.String(length=16), nullable=False),
        sa.Column('imported_by', sa.String(length=128), nullable=False),
        sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('image_id', 'version'),
    )
    # Images published before this revision booted a kernel handed to QEMU; they cannot
    # boot as disks: their records go (the volumes stay on the hosts until removed), and
    # pools that ran them wait for an imported version (`vdi image-import`).
    op.execute("DELETE FROM images")
    op.execute("DELETE FROM image_releases")
    # (the first import gets a version above those of the desktops made from them:
    # pools.images.ImageStore, so their spares are remade on it)
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('kernel_path')
        batch_op.drop_column('initrd_path')
        batch_op.drop_column('cmdline')
        batch_op.alter_column('disk_bytes', existing_type=sa.Integer(),
                              type_=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('boot_timeout_s', sa.Integer(), nullable=False,
                                      server_default='300'))
        batch_op.add_column(sa.Column('secure_boot', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('secure_boot')
        batch_op.drop_column('boot_timeout_s')
    op.execute("DELETE FROM images")
    op.execute("DELETE FROM image_releases")
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kernel_path', sa.String(length=1024), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('initrd_path', sa.String(length=1024), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('cmdline', sa.String(length=1024), nullable=False,
                                      server_default=''))
        batch_op.alter_column('disk_bytes', existing_type=sa.BigInteger(),
                              type_=sa.Integer(), existing_nullable=False)
    op.drop_table('image_versions')
