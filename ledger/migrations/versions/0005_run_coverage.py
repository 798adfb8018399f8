"""reconciliation runs: what each run covered, and the differences webhooks closed before it corrected

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:00:00.000000
"""

from datetime import UTC

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reconciliation_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('covered_until', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('caught_up', sa.Integer(), server_default='0', nullable=False))

    # The runs already recorded, by the rule the code now follows (reconcile.run.coverage_after):
    # coverage advances to a completed run's start only when its window reached back to it.
    runs = sa.table('reconciliation_runs', sa.column('id', sa.Integer), sa.column('status', sa.String),
                    sa.column('dry_run', sa.Boolean), sa.column('window_start', sa.BigInteger),
                    sa.column('started_at', sa.DateTime(timezone=True)), sa.column('covered_until', sa.BigInteger))
    connection = op.get_bind()
    covered = None
    rows = connection.execute(sa.select(runs.c.id, runs.c.window_start, runs.c.started_at)
                              .where(runs.c.status == 'completed', runs.c.dry_run.is_(False))
                              .order_by(runs.c.id)).all()
    for run_id, window_start, started_at in rows:
        if window_start is None or (covered is not None and window_start <= covered):
            if started_at.tzinfo is None:  # SQLite hands back naive UTC
                started_at = started_at.replace(tzinfo=UTC)
            covered = int(started_at.timestamp())
        connection.execute(sa.update(runs).where(runs.c.id == run_id).values(covered_until=covered))


def downgrade() -> None:
    with op.batch_alter_table('reconciliation_runs', schema=None) as batch_op:
        batch_op.drop_column('caught_up')
        batch_op.drop_column('covered_until')
