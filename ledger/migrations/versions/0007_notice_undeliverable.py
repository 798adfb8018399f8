"""outbox: `undeliverable`, a notice whose channel the delivering worker has not configured

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:15:00.000000

Every process now stages what a fact owes on every channel (issue 19); a notice the worker
cannot deliver (its channel not configured, no recipient) is `undeliverable`, apart from `dead`
(tried, and failed), so the dead-notice gauge counts only what went wrong.
"""

from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_outbox_status'), type_='check')
        batch_op.create_check_constraint('status', "status IN ('pending', 'sent', 'dead', 'undeliverable')")


def downgrade() -> None:
    op.execute("UPDATE outbox SET status = 'dead' WHERE status = 'undeliverable'")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_outbox_status'), type_='check')
        batch_op.create_check_constraint('status', "status IN ('pending', 'sent', 'dead')")
