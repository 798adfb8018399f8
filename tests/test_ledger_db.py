"""ledger.db's pure parts: the PgBouncer parameter of DATABASE_URL, and which failures say the
database is away (retried for as long as it lasts) rather than refusing what was asked."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from ledger.db import TRANSACTION_POOLING_ARGS, async_url, is_connection_failure, pool_mode
from ledger.posting import CannotApply


def test_the_pgbouncer_parameter_is_ours_and_never_reaches_the_driver():
    url = "postgresql://app:s3cret@pgbouncer:6432/ledger?pgbouncer=transaction&ssl=require"
    assert async_url(url) == "postgresql+asyncpg://app:s3cret@pgbouncer:6432/ledger?ssl=require"
    assert pool_mode(url) == "transaction"
    assert pool_mode("postgresql://app@db:5432/ledger") is None
    with pytest.raises(ValueError, match="pgbouncer='statement'"):
        pool_mode("postgresql://app@pgbouncer:6432/ledger?pgbouncer=statement")


def test_transaction_pooling_keeps_no_statement_past_its_transaction():
    assert TRANSACTION_POOLING_ARGS["statement_cache_size"] == 0
    assert TRANSACTION_POOLING_ARGS["prepared_statement_cache_size"] == 0
    assert TRANSACTION_POOLING_ARGS["prepared_statement_name_func"]() == ""  # unnamed


class _PostgresError(Exception):
    """Shaped as asyncpg's errors are: a SQLSTATE on the exception."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _wrapped(cause: BaseException, *, invalidated: bool = False) -> OperationalError:
    error = OperationalError("SELECT 1", {}, cause, connection_invalidated=invalidated)
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("failure", [
    ConnectionRefusedError(111, "Connect call failed"),
    ConnectionResetError(104, "reset by peer"),
    _wrapped(Exception("connection was closed in the middle of operation"), invalidated=True),
    _wrapped(_PostgresError("57P01")),  # terminating connection due to administrator command
    _wrapped(_PostgresError("57P03")),  # the database system is starting up
    _wrapped(_PostgresError("08P01")),  # PgBouncer: no server to give the client
    _wrapped(_PostgresError("53300")),  # too many connections
], ids=["refused", "reset", "invalidated", "admin-shutdown", "starting-up", "pgbouncer", "too-many"])
def test_a_database_that_is_away_is_a_connection_failure(failure):
    assert is_connection_failure(failure)


@pytest.mark.parametrize("failure", [
    TimeoutError(),  # a lock held elsewhere looks the same: the tries bound it
    IntegrityError("INSERT", {}, _PostgresError("23505")),
    _wrapped(_PostgresError("40P01")),  # a deadlock: retried, but within the tries
    CannotApply("currency changed"),
    ValueError("a bug"),
], ids=["timeout", "unique", "deadlock", "cannot-apply", "bug"])
def test_a_database_that_refuses_or_a_bug_is_not(failure):
    assert not is_connection_failure(failure)
