"""Fixtures shared by every test file: real Redis and PostgreSQL on this machine.

Tests never flush shared state: each gets its own arq queue name and its own ids, so several
test runs (or helpers) on one machine do not interfere.
"""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from vinr_recon.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
WEBHOOK_SECRET = "whsec_test_" + "k" * 24
API_TOKEN = "ledger-token-" + "t" * 20


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings built explicitly (never from the developer's environment or `.env`)."""
    return Settings(
        _env_file=None,
        vinr_webhook_secret=SecretStr(WEBHOOK_SECRET),
        ledger_api_token=SecretStr(API_TOKEN),
        redis_url=REDIS_URL,
        queue_name=unique("arq:queue:test"),
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
