"""notifications and company logins

user.auth_source (local | ldap), notify_channel (a project's webhooks and mail addresses) and delivery (one
event to one channel, with its status).

Revision ID: 0005_notify_ldap
Revises: 0004_gray_releases
Create Date: 2026-12-04 07:50:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0005_notify_ldap'
down_revision = '0004_gray_releases'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user') as batch:
        batch.add_column(sa.Column('auth_source', sa.String(length=16), nullable=False, server_default='local'))
    op.create_table(
        'notify_channel',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('project_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('target', sa.String(length=1024), nullable=False),
        sa.Column('secret', sa.String(length=255), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['created_by_id'], ['user.id']),
        sa.ForeignKeyConstraint(['project_id'], ['project.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('notify_channel') as batch:
        batch.create_index(batch.f('ix_notify_channel_project_id'), ['project_id'], unique=False)
    op.create_table(
        'delivery',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ticket_id', sa.Integer(), nullable=True),
        sa.Column('channel_id', sa.Integer(), nullable=True),
        sa.Column('channel_label', sa.String(length=255), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('facts', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('attempted_at', sa.DateTime(), nullable=True),
        sa.Column('sent_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['channel_id'], ['notify_channel.id']),
        sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('delivery') as batch:
        batch.create_index(batch.f('ix_delivery_channel_id'), ['channel_id'], unique=False)
        batch.create_index(batch.f('ix_delivery_status'), ['status'], unique=False)
        batch.create_index(batch.f('ix_delivery_ticket_id'), ['ticket_id'], unique=False)


def downgrade():
    with op.batch_alter_table('delivery') as batch:
        batch.drop_index(batch.f('ix_delivery_ticket_id'))
        batch.drop_index(batch.f('ix_delivery_status'))
        batch.drop_index(batch.f('ix_delivery_channel_id'))
    op.drop_table('delivery')
    with op.batch_alter_table('notify_channel') as batch:
        batch.drop_index(batch.f('ix_notify_channel_project_id'))
    op.drop_table('notify_channel')
    with op.batch_alter_table('user') as batch:
        batch.drop_column('auth_source')
