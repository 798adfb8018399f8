"""vinr_recon.settings as a process reads them (the environment and `.env`): what an empty value means."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vinr_recon.settings import load_settings
from worker.nightly import nightly_cron

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


@pytest.fixture
def env_example(tmp_path, monkeypatch) -> Path:
    """A working folder whose `.env` is .env.example as copied, and no setting in the environment."""
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            monkeypatch.delenv(line.split("=", 1)[0].strip(), raising=False)
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    return tmp_path / ".env"


def test_an_empty_vinr_api_key_is_unset_so_a_worker_schedules_no_nightly_run_that_would_fail(env_example,
                                                                                             monkeypatch):
    """.env.example says `VINR_API_KEY=`: a worker started with it applies webhooks, says the nightly
    run is off, and schedules none (it would fail at RECONCILE_AT for want of the key)."""
    assert "\nVINR_API_KEY=\n" in env_example.read_text()
    settings = load_settings()
    assert settings.vinr_api_key is None
    assert nightly_cron(settings) == []
    for blank in ("", "   "):
        monkeypatch.setenv("VINR_API_KEY", blank)
        assert load_settings().vinr_api_key is None
        assert nightly_cron(load_settings()) == []


def test_a_vinr_api_key_schedules_the_nightly_run(env_example, monkeypatch):
    monkeypatch.setenv("VINR_API_KEY", "vinr_test_" + "k" * 32)
    settings = load_settings()
    assert settings.vinr_api_key is not None and settings.vinr_api_key.get_secret_value() == "vinr_test_" + "k" * 32
    (job,) = nightly_cron(settings)
    assert (job.hour, job.minute) == (2, 0)


@pytest.mark.parametrize("name", ["SMTP_URL", "ALERT_WEBHOOK_URL", "ALERT_DEFAULT_RECIPIENT", "FULFILMENT_URL",
                                  "FULFILMENT_SECRET"])
async def test_a_blank_channel_setting_is_unset_for_everything_that_reads_it(env_example, monkeypatch, name):
    """Blank is decided once, in the settings: no channel is staged for it, the worker's notifier
    lacks it, and (ALERT_DEFAULT_RECIPIENT) no email is addressed to a blank recipient."""
    from ledger.outbox import configured_channels
    from worker.notices import Notifier

    monkeypatch.setenv(name, "   ")
    settings = load_settings()
    assert getattr(settings, name.lower()) is None
    assert not configured_channels(settings)
    notifier = Notifier(settings)
    try:
        assert [notifier.missing(channel) is not None for channel in ("email", "chat", "fulfilment")] == [True] * 3
    finally:
        await notifier.aclose()
