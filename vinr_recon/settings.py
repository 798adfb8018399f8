"""The one settings object, read from the environment (and `.env`) at each entry point."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _split(value: SecretStr | None) -> list[str]:
    if value is None:
        return []
    return [part.strip() for part in value.get_secret_value().split(",") if part.strip()]


def _present(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value().strip())


class Settings(BaseSettings):
    """Contract section 7. Secrets are `SecretStr`, so a repr or a log line shows `**********`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    vinr_webhook_secret: SecretStr | None = None
    vinr_webhook_tolerance: int = Field(300, ge=0)
    vinr_webhook_max_body: int = Field(1024 * 1024, gt=0)
    vinr_api_key: SecretStr | None = None
    vinr_api_base: str = "https://sandbox.api.vinr.com/v1"
    redis_url: str = "redis://localhost:6379/0"
    queue_name: str = "arq:queue"
    database_url: str = "sqlite:///vinr-ledger.db"
    ledger_api_token: SecretStr | None = None
    reconcile_at: str = Field("02:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    smtp_url: SecretStr | None = None
    alert_email_from: str = "vinr-recon@localhost"
    alert_default_recipient: str | None = None
    alert_webhook_url: SecretStr | None = None
    fulfilment_url: str | None = None
    fulfilment_secret: SecretStr | None = None
    log_level: str = "INFO"

    @property
    def webhook_secrets(self) -> list[str]:
        """Every configured endpoint secret; several while the merchant rolls one."""
        return _split(self.vinr_webhook_secret)

    @property
    def api_tokens(self) -> list[str]:
        return _split(self.ledger_api_token)

    def notice_channels(self):
        """The alert and callback channels configured (`ledger.outbox.Channels`): the ledger stages
        notices for these only. `ConfigurationError` for a callback URL without its secret."""
        from ledger.outbox import Channels

        if self.fulfilment_url and not _present(self.fulfilment_secret):
            raise ConfigurationError("FULFILMENT_SECRET must be set with FULFILMENT_URL (see .env.example)")
        if _present(self.smtp_url) and not self.smtp_url.get_secret_value().startswith(("smtp://", "smtps://")):
            raise ConfigurationError("SMTP_URL must look like smtp://user:password@host:port (or smtps://)")
        return Channels(email=_present(self.smtp_url), chat=_present(self.alert_webhook_url),
                        fulfilment=bool(self.fulfilment_url))


class ConfigurationError(Exception):
    """A setting a command needs is missing; the message names it and never shows a value."""


def require(settings: Settings, *names: str) -> None:
    """Refuse to start, naming the variables, when a command's required settings are unset."""
    missing = [name.upper() for name in names if not getattr(settings, name)]
    if missing:
        raise ConfigurationError(f"{', '.join(missing)} must be set (see .env.example)")
