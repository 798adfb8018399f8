"""outbox: `undeliverable`, the uncollectible alert and the daily digest; runs: adoption

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 11:45:00.000000

Every process now stages what a fact owes on every channel (issue 19); a notice the delivering
worker cannot deliver (its channel not configured, no recipient) is `undeliverable`, apart from
`dead` (tried, and failed). A backfill holds the alerts it stages (`held`) until it has
applied every event it found: those whose invoice it then shows paid or void are `resolved`,
never sent (issue 20). Two new kinds (issue 20): `uncollectible` (dunning gave up) and
`digest` (an account manager's morning list). A run may adopt an account's history quietly:
`adopt` marks it, `adopted` counts the invoices whose history it booked without notices.
"""

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

STATUSES = "'pending', 'sent', 'dead', 'undeliverable', 'held', 'resolved'"
KINDS = "'payment_failed', 'paid', 'drift', 'uncollectible', 'digest'"


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.alter_column('status', type_=sa.String(20), existing_type=sa.String(10), existing_nullable=False)
        batch_op.drop_constraint(op.f('ck_outbox_status'), type_='check')
        batch_op.create_check_constraint('status', f"status IN ({STATUSES})")
        batch_op.drop_constraint(op.f('ck_outbox_kind'), type_='check')
        batch_op.create_check_constraint('kind', f"kind IN ({KINDS})")
    with op.batch_alter_table('reconciliation_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('adopt', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('adopted', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('reconciliation_runs', schema=None) as batch_op:
        batch_op.drop_column('adopted')
        batch_op.drop_column('adopt')
    op.execute("UPDATE outbox SET status = 'dead' WHERE status = 'undeliverable'")
    op.execute("UPDATE outbox SET status = 'pending' WHERE status = 'held'")
    op.execute("UPDATE outbox SET status = 'sent' WHERE status = 'resolved'")
    op.execute("DELETE FROM outbox WHERE kind IN ('uncollectible', 'digest')")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_outbox_kind'), type_='check')
        batch_op.create_check_constraint('kind', "kind IN ('payment_failed', 'paid', 'drift')")
        batch_op.drop_constraint(op.f('ck_outbox_status'), type_='check')
        batch_op.create_check_constraint('status', "status IN ('pending', 'sent', 'dead')")
        batch_op.alter_column('status', type_=sa.String(10), existing_type=sa.String(20), existing_nullable=False)
