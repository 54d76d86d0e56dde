"""Settings, read from the environment (and an optional `.env` file)."""

import ipaddress
import json
import logging
import os
import secrets
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

# HS256 wants a key of at least 256 bits (RFC 7518, section 3.2); anything shorter, or one of
# the values that tutorials and templates ship with, is treated as a placeholder.
MIN_SECRET_KEY_LENGTH = 32
PLACEHOLDER_SECRET_KEYS = frozenset(
    {
        "changeme",
        "change-me",
        "changethis",
        "change-this",
        "secret",
        "secret-key",
        "secret_key",
        "your-secret-key",
        "your_secret_key",
        "please-change-me",
        "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",
    }
)
SECRET_KEY_FILE = "secret_key"
GENERATE_HINT = 'python3 -c "import secrets; print(secrets.token_urlsafe(48))"'


class ConfigurationError(RuntimeError):
    """The settings cannot run the service; the message says what to change."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # MongoDB. Unset MONGODB_URL means the embedded development store (see db.py).
    mongodb_url: str | None = None
    mongodb_db: str = "social_api"
    mongodb_timeout_ms: Annotated[int, Field(ge=100, le=120_000)] = 5_000

    # The embedded development store, used only while MONGODB_URL is unset.
    data_dir: Path = Path(".data")
    embedded_storage: Literal["sqlite", "memory"] = "sqlite"
    # A fixed loopback port, so that a connection string saved in mongosh or Compass keeps
    # working across restarts; 0 takes any free port (the tests do).
    embedded_port: Annotated[int, Field(ge=0, le=65_535)] = 27018
    # Set by `social-api serve --workers N` for its worker processes so that they share the
    # one embedded store the supervisor runs; not meant to be set by hand.
    embedded_store_url: str | None = None

    # Authentication.
    secret_key: SecretStr | None = None
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_expire_minutes: Annotated[int, Field(ge=1, le=60 * 24 * 30)] = 30
    bcrypt_rounds: Annotated[int, Field(ge=4, le=31)] = 12
    refresh_token_expire_days: Annotated[int, Field(ge=1, le=365)] = 14

    # Login throttling: failed password checks within the window, per email and per client
    # address, after which further attempts answer 429 until the window has passed.
    login_max_failures_per_email: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    login_max_failures_per_address: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    login_failure_window_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 900
    # Reverse proxies whose X-Forwarded-For names the client: IPs or networks, comma-separated
    # (or a JSON list). None by default: the client is the peer that connected.
    trusted_proxies: Annotated[list[str], NoDecode] = []

    # Account recovery and email verification (service/mail.py).
    password_reset_expire_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] = 30
    email_verification_expire_hours: Annotated[int, Field(ge=1, le=30 * 24)] = 48
    # Unverified users may read, log in and out, but not write posts or votes (403).
    require_verified_email: bool = False
    # Mails asked for (forgot-password, a fresh verification mail) within the login
    # throttle's window, per email and per client address, after which 429 until it passes.
    mail_requests_per_email: Annotated[int, Field(ge=1, le=1_000_000)] = 3
    mail_requests_per_address: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    # Where the links in the mails point: the app that serves /reset-password and
    # /verify-email and posts their token to this API.
    public_base_url: str = "http://127.0.0.1:8000"

    # Outgoing mail. Required with MONGODB_URL; on the embedded store, without SMTP_HOST, each
    # mail is written as an .eml file under DATA_DIR/outbox/ instead.
    smtp_host: str | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65_535)] = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 30.0
    mail_from: str = "Social API <no-reply@localhost>"
    # A message the SMTP server could not take (down, or a 4xx answer) is tried again after
    # MAIL_RETRY_SECONDS, then twice as long each time, at most an hour apart; after
    # MAIL_MAX_ATTEMPTS tries it is marked failed (`social-api outbox --retry` queues it again).
    mail_max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    mail_retry_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # How often each API process looks for messages due, besides when it queues one itself.
    mail_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0

    # HTTP surface.
    # Origins allowed to call the API from a browser; none by default. A comma-separated list
    # (or a JSON list): CORS_ORIGINS=https://app.example.com,https://admin.example.com
    cors_origins: Annotated[list[str], NoDecode] = []
    docs_enabled: bool = True
    # Requests with a larger body are refused with 413 before it is read. A post of 20,000
    # characters is at most about 120 kB of JSON even with every character escaped.
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024

    metrics_enabled: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"

    @field_validator(
        "mongodb_url",
        "embedded_store_url",
        "secret_key",
        "smtp_host",
        "smtp_username",
        "smtp_password",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `MONGODB_URL=` in a compose file or .env means "not set", not "connect to ''".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        networks: list[str] = []
        for item in value:
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (such as 10.0.0.0/8)"
                ) from None
            # In canonical form (10.1.2.3/8 is 10.0.0.0/8): uvicorn's matcher would take a
            # network with host bits for a literal that never matches.
            networks.append(str(network))
        return networks

    @property
    def trusted_proxy_networks(self) -> list[str]:
        """TRUSTED_PROXIES, each IPv4 network also as a dual-stack listener reports its peers
        (::ffff:10.0.0.1)."""
        networks = list(self.trusted_proxies)
        for item in self.trusted_proxies:
            network = ipaddress.ip_network(item)
            if isinstance(network, ipaddress.IPv4Network):
                mapped = ipaddress.IPv6Address(f"::ffff:{network.network_address}")
                networks.append(f"{mapped}/{96 + network.prefixlen}")
        return networks

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
            raise ValueError("must be an http:// or https:// address, without query or fragment")
        return value.rstrip("/")

    @field_validator("mail_from")
    @classmethod
    def _sender(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address or any(not c.isprintable() for c in value):
            raise ValueError("must be an address, or a name and <address>, on one line")
        return value

    @property
    def embedded(self) -> bool:
        """True when the service runs on the embedded development store."""
        return self.mongodb_url is None

    @property
    def mail_to_files(self) -> bool:
        """True when mails are written as files (the embedded store without SMTP_HOST)."""
        return self.smtp_host is None

    def check_mail(self) -> "Settings":
        """Return these settings, or refuse when mail would have nowhere to go: with a real
        MongoDB there is no development directory to write them to, and none is dropped."""
        if self.smtp_host is None and not self.embedded:
            raise ConfigurationError(
                "SMTP_HOST is not set. It is required with MONGODB_URL (password resets and "
                "verification mails go through it); set SMTP_HOST, and SMTP_PORT, "
                "SMTP_SECURITY, SMTP_USERNAME and SMTP_PASSWORD as the server needs"
            )
        return self

    def with_secret_key(self) -> "Settings":
        """Return these settings with a usable secret key, or refuse with a clear message.

        With a real MongoDB the key must be given and must not be a placeholder. On the
        embedded development store a missing key is generated once and kept next to the
        data, so tokens survive a restart and every worker process signs with the same key.
        """
        if self.secret_key is not None:
            key = self.secret_key.get_secret_value()
            weak = key.lower() in PLACEHOLDER_SECRET_KEYS or len(key) < MIN_SECRET_KEY_LENGTH
            if weak and not self.embedded:
                raise ConfigurationError(
                    "SECRET_KEY is a placeholder or shorter than "
                    f"{MIN_SECRET_KEY_LENGTH} characters; refusing to sign tokens with it "
                    f"on a real MongoDB. Generate one with: {GENERATE_HINT}"
                )
            if weak:
                logger.warning("SECRET_KEY is weak; acceptable only for local development")
            return self
        if not self.embedded:
            raise ConfigurationError(
                "SECRET_KEY is not set. It is required with MONGODB_URL; generate one with: "
                f"{GENERATE_HINT}"
            )
        return self.model_copy(update={"secret_key": SecretStr(load_or_create_secret(self))})


def private_dir(path: Path) -> Path:
    """Create a directory only its owner can enter (it holds a key and password hashes)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir leaves an existing directory as it was
    return path


def load_or_create_secret(settings: Settings) -> str:
    """Read the embedded store's signing key, creating it first if it does not exist yet."""
    path = private_dir(settings.data_dir) / SECRET_KEY_FILE
    if not path.exists():
        # Write a private temporary file, then link it into place: link() fails if another
        # worker won the race, and every worker then reads the same winning key.
        candidate = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(candidate, path)
            logger.info("Generated a signing key in %s", path.resolve())
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    key = path.read_text().strip()
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigurationError(f"{path} holds no usable key; delete it to generate a new one")
    return key


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
