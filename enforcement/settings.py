"""One settings object, read from the environment once (CONTRACT.md, "Configuration")."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """A configuration variable holds a value the service cannot use."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///./enforcement.db"
    redis_url: str | None = None
    policy_file: str | None = None
    smtp_url: str | None = None
    mail_dir: str = "./notices"
    mail_from: str = "trust-and-safety@taas.invalid"  # no mailbox: a deployment sets its own
    webhook_secret: str | None = None
    webhook_allow_private: bool = False
    default_rpm: int = 600
    default_tpd: int = 1_000_000
    notice_retries: int = 5
    notice_backoff_ms: int = 15_000
    notice_max_backoff_ms: int = 3_600_000
    sweep_seconds: float = 30.0
    worker_processes: int = 2
    worker_threads: int = 8
    worker_heartbeat_ms: int = 60_000
    # How long a PostgreSQL connection waits for a round trip's answer before it is closed as lost.
    database_timeout_ms: int = 30_000
    # How long the gate's and the broker's Redis clients wait to connect and for each reply.
    redis_timeout_ms: int = 5_000

    @property
    def embedded(self) -> bool:
        """No Redis: workers run as threads inside ``serve`` and the gate keeps state in process."""
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def boolean(name: str) -> bool:
            value = env.get(name, "").strip().lower()
            if value in _TRUE:
                return True
            if value in _FALSE:
                return False
            raise SettingsError(f"{name} must be true or false, not {value!r}")

        def positive_int(name: str, default: int) -> int:
            value = text(name)
            if value is None:
                return default
            try:
                number = int(value)
            except ValueError:
                raise SettingsError(f"{name} must be a whole number, not {value!r}") from None
            if number <= 0:
                raise SettingsError(f"{name} must be positive, not {number}")
            return number

        return cls(
            database_url=_database_url(text("ENFORCEMENT_DATABASE_URL") or cls.database_url),
            redis_url=_redis_url(text("ENFORCEMENT_REDIS_URL")),
            policy_file=text("ENFORCEMENT_POLICY_FILE"),
            smtp_url=_smtp_url(text("ENFORCEMENT_SMTP_URL")),
            mail_dir=text("ENFORCEMENT_MAIL_DIR") or cls.mail_dir,
            mail_from=_mail_from(text("ENFORCEMENT_MAIL_FROM")) or cls.mail_from,
            webhook_secret=text("ENFORCEMENT_WEBHOOK_SECRET"),
            webhook_allow_private=boolean("ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE"),
            default_rpm=positive_int("ENFORCEMENT_DEFAULT_RPM", cls.default_rpm),
            default_tpd=positive_int("ENFORCEMENT_DEFAULT_TPD", cls.default_tpd),
            notice_retries=positive_int("ENFORCEMENT_NOTICE_RETRIES", cls.notice_retries),
            notice_backoff_ms=positive_int("ENFORCEMENT_NOTICE_BACKOFF_MS", cls.notice_backoff_ms),
            notice_max_backoff_ms=positive_int(
                "ENFORCEMENT_NOTICE_MAX_BACKOFF_MS", cls.notice_max_backoff_ms
            ),
            sweep_seconds=float(positive_int("ENFORCEMENT_SWEEP_SECONDS", 30)),
            worker_processes=positive_int("ENFORCEMENT_WORKER_PROCESSES", cls.worker_processes),
            worker_threads=positive_int("ENFORCEMENT_WORKER_THREADS", cls.worker_threads),
            worker_heartbeat_ms=positive_int(
                "ENFORCEMENT_WORKER_HEARTBEAT_MS", cls.worker_heartbeat_ms
            ),
            database_timeout_ms=positive_int(
                "ENFORCEMENT_DATABASE_TIMEOUT_MS", cls.database_timeout_ms
            ),
            redis_timeout_ms=positive_int("ENFORCEMENT_REDIS_TIMEOUT_MS", cls.redis_timeout_ms),
        )


_DATABASE = "ENFORCEMENT_DATABASE_URL"


def _database_url(value: str) -> str:
    """A SQLAlchemy URL of a database this service runs on, with its driver installed."""
    from sqlalchemy.exc import ArgumentError

    from events.dialects import normalized_url

    try:
        url = normalized_url(value)  # as the engine will connect (postgresql:// is psycopg 3)
        url.port  # noqa: B018 - parsed on access: a port that is not a number raises
        backend = url.get_backend_name()
    except (ArgumentError, ValueError):
        raise SettingsError(f"{_DATABASE} is not a database URL") from None
    if backend not in ("sqlite", "postgresql"):
        raise SettingsError(
            f"{_DATABASE} must be a sqlite:/// or postgresql+psycopg:// URL, not {backend}"
        )
    try:
        url.get_dialect().import_dbapi()
    except (ArgumentError, ImportError):
        raise SettingsError(
            f"{_DATABASE} names the driver {url.get_driver_name()!r}, which is not installed "
            "(PostgreSQL is served with postgresql+psycopg://)"
        ) from None
    return value


def _redis_url(value: str | None) -> str | None:
    if value is None:
        return None
    from redis.connection import parse_url

    try:
        parse_url(value)  # type: ignore[no-untyped-call]
    except ValueError:
        raise SettingsError(
            "ENFORCEMENT_REDIS_URL must be a redis://, rediss:// or unix:// URL"
        ) from None
    return value


# local@domain in ASCII: a dot-atom local part (RFC 5322) and a host name.
_MAIL_FROM = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*"
)


def _mail_from(value: str | None) -> str | None:
    """The address notices are sent from, which the account replies to (their "How to appeal"
    says to reply): one plain ASCII address, ``appeals@taas.example``."""
    if value is None or _MAIL_FROM.fullmatch(value):
        return value
    raise SettingsError(
        "ENFORCEMENT_MAIL_FROM must be one plain e-mail address (local@domain, ASCII, no name)"
    )


def _smtp_url(value: str | None) -> str | None:
    """``smtp://[user:password@][host][:port]`` (or ``smtps://``, TLS from the start; no host:
    localhost; the port by default 25, or 465 for ``smtps``), refused
    at start-up when malformed rather than by every notice's delivery, as a failure recorded in
    the log. The message never repeats the value (it may hold a password)."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    name = "ENFORCEMENT_SMTP_URL"
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - parsed on access: a port that is not a number raises
    except ValueError:
        raise SettingsError(f"{name} is not a URL (its port must be a number)") from None
    if url.scheme not in ("smtp", "smtps"):
        raise SettingsError(
            f"{name} must be smtp://host:port or smtps://host:port, not "
            + (f"{url.scheme}://" if url.scheme else "a URL without a scheme")
        )
    # 'smtp:mail:587' or 'smtp:/mail' parse with no host at all: they would mean localhost.
    if not value.lower().startswith(f"{url.scheme}://") or url.path not in ("", "/") or url.query:
        raise SettingsError(f"{name} must be smtp://host:port or smtps://host:port, nothing more")
    return value  # '//' with no host: localhost
