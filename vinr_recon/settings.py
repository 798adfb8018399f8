"""The one settings object, read from the environment (and `.env`) at each entry point."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from vinr.client import VinrClient


def _split(value: SecretStr | None) -> list[str]:
    if value is None:
        return []
    return [part.strip() for part in value.get_secret_value().split(",") if part.strip()]


class Settings(BaseSettings):
    """Contract section 7. Secrets are `SecretStr`, so a repr or a log line shows `**********`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    vinr_webhook_secret: SecretStr | None = None
    vinr_webhook_tolerance: int = Field(300, ge=0)
    vinr_webhook_max_body: int = Field(1024 * 1024, gt=0)
    vinr_api_key: SecretStr | None = None
    vinr_api_base: str = "https://sandbox.api.vinr.com/v1"
    # Requests per second the REST client allows itself (VINR's live limit; 0: unpaced), so a
    # reconciliation never leans on 429s to learn the limit.
    vinr_api_rate: float = Field(100.0, ge=0)
    redis_url: str = "redis://localhost:6379/0"
    # With Sentinels (host:port, comma-separated) the service follows the primary they name;
    # REDIS_URL then gives only the database, credentials and TLS. Checked by `check_redis`.
    redis_sentinels: str | None = None
    redis_sentinel_master: str = "mymaster"
    # A delivery is acknowledged only once its write reached this many replicas (Redis WAIT).
    redis_min_replicas: int = 0
    queue_name: str = "arq:queue"
    database_url: str = "sqlite:///vinr-ledger.db"
    ledger_api_token: SecretStr | None = None
    metrics_token: SecretStr | None = None
    # The port of `vinr-recon worker`'s own /metrics, on HOST (0: none); --metrics-port overrides it.
    worker_metrics_port: int = Field(9101, ge=0, le=65535)
    public_url: str | None = None
    allowed_hosts: str | None = None
    reconcile_at: str = Field("02:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    # A run sweeps every invoice, not just the window, when the last full sweep is older than
    # this (0: never): it finds what neither the window nor the Events API's 30 days can.
    reconcile_full_sweep_days: int = Field(7, ge=0)
    smtp_url: SecretStr | None = None
    alert_email_from: str = "vinr-recon@localhost"
    alert_default_recipient: str | None = None
    alert_webhook_url: SecretStr | None = None
    # Time of day (UTC, HH:MM) of each account manager's digest email; unset or blank: no digest.
    alert_digest_at: str | None = Field(None, pattern=r"^(([01]\d|2[0-3]):[0-5]\d)?$")
    fulfilment_url: str | None = None
    fulfilment_secret: SecretStr | None = None
    # How people read money in the reports, the dashboard and the alerts (a Babel locale such as
    # de_DE: `1.960,00 €`); none: `EUR 1,960.00`, the same for every reader.
    money_locale: str | None = None
    log_level: str = "INFO"
    # Where `vinr-recon serve` listens when --host/--port are not given (the image sets 0.0.0.0).
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # A folder of secret files, one per setting, named after it (/run/secrets/vinr_webhook_secret,
    # any case), as Docker and Kubernetes mount them; the environment and .env still win
    # (`load_settings` reads them twice: SECRETS_DIR says where the others are).
    secrets_dir: str | None = None
    # The receiver at the socket (receiver/server.py, receiver/limits.py): head cap, deadlines in
    # seconds (head plus body stay within VINR's 10 s), open connections, body bytes in flight.
    receiver_max_header_bytes: int = Field(16 * 1024, gt=0)
    receiver_header_timeout: float = Field(5.0, gt=0)
    receiver_body_timeout: float = Field(5.0, gt=0)
    receiver_max_connections: int = Field(1000, gt=0)
    receiver_body_budget: int = Field(16 * 1024 * 1024, gt=0)

    @field_validator("vinr_api_key", "smtp_url", "alert_webhook_url", "alert_default_recipient", "fulfilment_url",
                     "fulfilment_secret", mode="before")
    @classmethod
    def _unset_when_blank(cls, value: object) -> object:
        """`VINR_API_KEY=` (as .env.example leaves it) or blanks is no key: unset, so a worker says at
        start-up that the nightly run is off rather than scheduling one that can only fail; and so
        for a channel's settings, decided here once rather than at each place that reads them."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(text, str) and not text.strip() else value

    @field_validator("database_url")
    @classmethod
    def _ledger_url(cls, value: str) -> str:
        """sqlite:///path (its folder must exist) or postgresql://...; said at start, not at first use."""
        import os

        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL: use sqlite:///path/to/ledger.db or postgresql://user@host/db") from None
        backend = url.get_backend_name()
        if backend not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"unsupported database {backend!r}: use sqlite:///path/to/ledger.db or postgresql://...")
        if backend == "sqlite" and url.database and url.database != ":memory:":
            folder = os.path.dirname(os.path.abspath(url.database))
            if not os.path.isdir(folder):
                raise ValueError(f"the SQLite file's folder {folder} does not exist")
        return value

    @field_validator("host")
    @classmethod
    def _interface(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value.strip()):
            raise ValueError("an interface address or host name to listen on (e.g. 0.0.0.0, ::, 127.0.0.1)")
        return value.strip()

    @field_validator("money_locale")
    @classmethod
    def _known_locale(cls, value: str | None) -> str | None:
        from babel import Locale, UnknownLocaleError

        if value is None or not value.strip():
            return None
        try:
            Locale.parse(value.strip().replace("-", "_"))
        except (UnknownLocaleError, ValueError):
            raise ValueError("not a locale Babel knows (e.g. de_DE, fr_FR, en_GB)") from None
        return value.strip()

    @property
    def webhook_secrets(self) -> list[str]:
        """Every configured endpoint secret; several while the merchant rolls one."""
        return _split(self.vinr_webhook_secret)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """`REDIS_SENTINELS` as (host, port) pairs (`[::1]:26379` for IPv6); empty without it.
        `ConfigurationError` for an entry that is not host:port."""
        addresses = []
        for entry in (self.redis_sentinels or "").split(","):
            entry = entry.strip()
            if not entry:
                continue
            host, _, port = entry.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigurationError("REDIS_SENTINELS must be host:port entries, comma-separated "
                                         "(e.g. sentinel-1:26379,sentinel-2:26379)")
            addresses.append((host, int(port)))
        if self.redis_sentinels and self.redis_sentinels.strip() and not addresses:
            raise ConfigurationError("REDIS_SENTINELS holds nothing but blanks and commas (see .env.example)")
        return addresses

    @property
    def api_tokens(self) -> list[str]:
        return _split(self.ledger_api_token)

    @property
    def metrics_tokens(self) -> list[str]:
        """The bearer token(s) `/metrics` asks for; none: it answers anyone, as before."""
        return _split(self.metrics_token)

    @property
    def public_origin(self) -> str | None:
        """`PUBLIC_URL` as an origin (`https://recon.example.com`, lower case, no default port), or None."""
        if not self.public_url or not self.public_url.strip():
            return None
        parts = urlsplit(self.public_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigurationError("PUBLIC_URL must be an origin like https://recon.example.com (no path)")
        port = parts.port
        default = {"http": 80, "https": 443}[parts.scheme]
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")

    @property
    def trusted_hosts(self) -> list[str]:
        """`ALLOWED_HOSTS`, comma-separated (`*.example.com` allowed); empty: any Host."""
        return [host.strip().lower() for host in (self.allowed_hosts or "").split(",") if host.strip()]


class ConfigurationError(Exception):
    """A setting a command needs is missing; the message names it and never shows a value."""


def load_settings() -> Settings:
    """The settings of this process; a `ConfigurationError` naming each variable that is wrong
    and what it wants (the value only when it is no secret)."""
    try:
        settings = Settings()
        # SECRETS_DIR (from the environment or .env, as any setting) says where the others may
        # be; the files come last, so what the first read found still wins.
        secrets_dir = _secrets_dir(settings.secrets_dir)
        return settings if secrets_dir is None else Settings(_secrets_dir=secrets_dir)
    except ValidationError as exc:
        raise ConfigurationError("; ".join(_explain(error) for error in exc.errors())) from None


def _secrets_dir(value: str | None) -> str | None:
    """SECRETS_DIR as a folder that exists, or None when unset; a mistyped mount is said at start
    (pydantic-settings would only warn, and every secret would then look unset)."""
    if value is None or not value.strip():
        return None
    if not os.path.isdir(value):
        what = "is not a folder" if os.path.exists(value) else "does not exist"
        raise ConfigurationError(f"SECRETS_DIR: {value} {what} (a folder of secret files, e.g. /run/secrets)")
    return value


def _explain(error: ErrorDetails) -> str:
    name = str(error["loc"][0]) if error.get("loc") else "a setting"
    field = Settings.model_fields.get(name)
    # A URL may carry a password (postgresql://user:password@host/db): never echoed either.
    secret = name.endswith("_url") or (field is not None and "SecretStr" in str(field.annotation))
    message = error["msg"].removeprefix("Value error, ")
    given = "" if secret or error.get("input") is None else f" (got {str(error['input'])[:60]!r})"
    return f"{name.upper()}: {message}{given}"


def _blank(value: object) -> bool:
    """Set, but nothing after parsing: `" "`, `","`, `" , "`."""
    return isinstance(value, SecretStr) and bool(value.get_secret_value()) and not _split(value)


def require(settings: Settings, *names: str) -> None:
    """Refuse to start, naming the variables, when a command's required settings are unset (or a
    secret list holds nothing after parsing, which is no secret either)."""
    blank = [name.upper() for name in names if _blank(getattr(settings, name))]
    if blank:
        raise ConfigurationError(f"{', '.join(blank)} holds nothing but blanks and commas (see .env.example)")
    missing = [name.upper() for name in names if not getattr(settings, name)]
    if missing:
        raise ConfigurationError(f"{', '.join(missing)} must be set (see .env.example)")


# A bearer token shorter than this is guessable enough to refuse: 32 characters of token_hex are 128 bits.
MIN_TOKEN_LENGTH = 32


def check_redis(settings: Settings) -> None:
    """What every process that talks to Redis refuses: a malformed REDIS_SENTINELS, a blank
    REDIS_SENTINEL_MASTER, a negative REDIS_MIN_REPLICAS."""
    settings.sentinel_addresses  # raises for a malformed list
    if not settings.redis_sentinel_master.strip():
        raise ConfigurationError("REDIS_SENTINEL_MASTER must name the primary the Sentinels watch (e.g. mymaster)")
    if settings.redis_min_replicas < 0:
        raise ConfigurationError("REDIS_MIN_REPLICAS must be 0 or more (replicas a write must reach)")


def check_receiver(settings: Settings) -> None:
    """What `vinr-recon serve` refuses to start without: a webhook secret; tokens (when set) of
    at least 32 characters each, and not blank; a well-formed PUBLIC_URL and ALLOWED_HOSTS;
    well-formed Redis settings (`check_redis`)."""
    require(settings, "vinr_webhook_secret")
    check_redis(settings)
    for name in ("ledger_api_token", "metrics_token"):
        value = getattr(settings, name)
        if _blank(value):
            raise ConfigurationError(f"{name.upper()} holds nothing but blanks and commas (see .env.example)")
        if any(len(token) < MIN_TOKEN_LENGTH for token in _split(value)):
            raise ConfigurationError(f"{name.upper()}: every token must be at least {MIN_TOKEN_LENGTH} characters "
                                     "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    settings.public_origin  # raises for a malformed PUBLIC_URL
    for pattern in settings.trusted_hosts:
        if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
            raise ConfigurationError("ALLOWED_HOSTS: a wildcard must look like *.example.com")


def vinr_client(settings: Settings, **kwargs: Any) -> VinrClient:
    """A client for `VINR_API_BASE` with `VINR_API_KEY`; `ConfigurationError` if the key is unset.
    The provider's client takes a base URL and a key: these are the two settings it reads."""
    from vinr.client import VinrClient  # httpx: imported only by a command that talks to VINR

    require(settings, "vinr_api_key")
    assert settings.vinr_api_key is not None  # for the type checker; `require` made sure
    kwargs.setdefault("rate", settings.vinr_api_rate)
    return VinrClient(settings.vinr_api_base, settings.vinr_api_key, **kwargs)
