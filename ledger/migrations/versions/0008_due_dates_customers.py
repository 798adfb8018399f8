"""positions: due date and account manager; customers: VINR's names for the ids (issue 20)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:30:00.000000

Aging, worklists and digests select open invoices by `dueDate` and by manager, so both are
columns of the position, kept by every write. `customers` caches VINR's customer (name, email,
metadata) so the dashboard and alerts name a customer rather than show `cust_...`. Existing
positions get their due date and manager at the next write of their invoice (a reconciliation
re-reads every open one); until then they have none.
"""

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('invoice_positions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('due_date', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('account_manager', sa.String(), nullable=True))
        batch_op.create_index(batch_op.f('ix_invoice_positions_due_date'), ['due_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_invoice_positions_account_manager'), ['account_manager'], unique=False)
    op.create_table(
        'customers',
        sa.Column('id', sa.String(length=100), nullable=False),
        sa.Column('name', sa.String(), nullable=True),
        sa.Column('email', sa.String(), nullable=True),
        sa.Column('account_manager', sa.String(), nullable=True),
        sa.Column('metadata', sa.JSON(), nullable=False),
        sa.Column('refreshed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_customers')),
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customers_account_manager'), ['account_manager'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customers_account_manager'))
    op.drop_table('customers')
    with op.batch_alter_table('invoice_positions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invoice_positions_account_manager'))
        batch_op.drop_index(batch_op.f('ix_invoice_positions_due_date'))
        batch_op.drop_column('account_manager')
        batch_op.drop_column('due_date')
