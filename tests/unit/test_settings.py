"""Configuration URLs are checked when read: a malformed one is one sentence, not a traceback,
and every form that connects is accepted."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from enforcement.bootstrap import bootstrap
from enforcement.notices import email
from enforcement.notices.email import EmailSender
from enforcement.settings import Settings, SettingsError
from events.dialects import normalized_url


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///./enforcement.db",
        "sqlite://",
        "sqlite+pysqlite:///x.db",
        "postgresql+psycopg://u:p@h:5432/db?sslmode=require",
        "postgresql+psycopg://u@/db?host=/var/run/postgresql",
        # no driver, or psycopg2 (not installed): the engine connects with psycopg 3
        "postgresql://u@h/db",
        "postgresql+psycopg2://u@h/db",
    ],
)
def test_every_database_url_the_engine_connects_with_is_accepted(url: str) -> None:
    assert Settings.from_env({"ENFORCEMENT_DATABASE_URL": url}).database_url == url


def test_postgresql_urls_are_connected_through_psycopg_3() -> None:
    for url in ("postgresql://u@h/db", "postgresql+psycopg2://u@h/db"):
        assert normalized_url(url).drivername == "postgresql+psycopg"
    assert normalized_url("sqlite://").drivername == "sqlite"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"ENFORCEMENT_DATABASE_URL": "notaurl"},
            "^ENFORCEMENT_DATABASE_URL is not a database URL",
        ),
        ({"ENFORCEMENT_DATABASE_URL": "postgresql+psycopg://u@h:port/db"}, "not a database URL"),
        ({"ENFORCEMENT_DATABASE_URL": "mysql://u@h/db"}, "must be a sqlite"),
        ({"ENFORCEMENT_DATABASE_URL": "postgresql+pg8000://u@h/db"}, "'pg8000', which is not"),
        ({"ENFORCEMENT_REDIS_URL": "localhost:6379"}, "must be a redis://"),
        ({"ENFORCEMENT_SMTP_URL": "bogus"}, "not a URL without a scheme"),
        ({"ENFORCEMENT_SMTP_URL": "http://mail:25"}, "not http://"),
        (
            {"ENFORCEMENT_SMTP_URL": "smtp://u:secret@mail:port"},
            r"^ENFORCEMENT_SMTP_URL is not a URL \(its port must be a number\)",
        ),
        ({"ENFORCEMENT_SMTP_URL": "smtp:mail.example.com:587"}, "nothing more"),
        ({"ENFORCEMENT_SMTP_URL": "smtps:/mail.example.com"}, "nothing more"),
        ({"ENFORCEMENT_SMTP_URL": "smtp://mail.example.com/inbox"}, "nothing more"),
    ],
)
def test_a_url_that_cannot_be_used_is_refused_with_a_reason(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "value",
    [
        "Trust <appeals@taas.example>",
        "appeals@taas.example, x@evil.example",
        "appeals",
        "appeals@",
        "@taas.example",
        "appéals@taas.example",
        "appeals@taas..example",
        "appeals@taas.example\r\nBcc: x@evil.example",
    ],
)
def test_a_sender_address_that_is_not_one_plain_address_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="ENFORCEMENT_MAIL_FROM must be one plain"):
        Settings.from_env({"ENFORCEMENT_MAIL_FROM": value})


def test_the_sender_address_is_the_deployments_or_one_nobody_receives() -> None:
    assert Settings.from_env({}).mail_from == "trust-and-safety@taas.invalid"
    for value in ("appeals@taas.example", "t&s+notices@mail.taas-1.example"):
        assert Settings.from_env({"ENFORCEMENT_MAIL_FROM": value}).mail_from == value


def test_redis_urls_of_every_scheme_are_accepted() -> None:
    for url in ("redis://h:6379/0", "rediss://h:6380/1?ssl_cert_reqs=none", "unix:///tmp/r.sock"):
        assert Settings.from_env({"ENFORCEMENT_REDIS_URL": url}).redis_url == url


def test_smtp_urls_with_and_without_tls_or_a_login_are_accepted() -> None:
    for url in (
        "smtp://localhost:2525",
        "smtps://mail.example.com",
        "smtps://mail.example.com/",
        "smtp://u:p@mail:587",
        "smtp://:25",
    ):
        assert Settings.from_env({"ENFORCEMENT_SMTP_URL": url}).smtp_url == url


def test_a_refused_smtp_url_does_not_repeat_its_password() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"ENFORCEMENT_SMTP_URL": "smtp://u:secret@mail:port"})
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "connects_to"),
    [
        ("smtps://mail.example.com", ("SMTP_SSL", "mail.example.com", 465)),
        ("smtp://mail.example.com", ("SMTP", "mail.example.com", 25)),
        ("smtp://:2525", ("SMTP", "localhost", 2525)),
        ("smtps://mail.example.com:4650", ("SMTP_SSL", "mail.example.com", 4650)),
    ],
)
def test_the_sender_connects_where_the_smtp_url_says(
    url: str, connects_to: tuple[str, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """smtps:// is TLS from the connection's start, on its own port (465), not on 25."""
    opened: list[tuple[str, str, int]] = []

    def fake(kind: str) -> Any:
        class Connection:
            def __init__(self, host: str, port: int, deadline: object, **tls: object) -> None:
                opened.append((kind, host, port))

            def __enter__(self) -> Connection:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def send_message(self, message: EmailMessage) -> None:
                return None

            def sendmail(self, sender: str, to: list[str], message: bytes) -> None:
                return None

        return Connection

    monkeypatch.setattr(email, "_SMTP", fake("SMTP"))
    monkeypatch.setattr(email, "_SMTPS", fake("SMTP_SSL"))
    email.EmailSender(url, "/nonexistent").send(EmailMessage(), "evt")
    assert opened == [connects_to]


def test_the_sender_itself_refuses_a_url_that_is_not_smtp() -> None:
    """Settings refuse such a URL; a sender given one anyway connects nowhere (not as SMTP)."""
    with pytest.raises(ValueError, match="must be smtp:// or smtps://, not http"):
        EmailSender("http://127.0.0.1:1", "/nonexistent").send(EmailMessage(), "evt")


def test_the_contracts_configuration_table_names_and_defaults() -> None:
    """CONTRACT.md, "Configuration": each variable under its name, and the defaults when the
    environment sets none."""
    default = Settings.from_env({})
    assert (default.database_url, default.redis_url, default.policy_file) == (
        "sqlite:///./enforcement.db",
        None,
        None,
    )
    assert (default.smtp_url, default.mail_dir, default.webhook_secret) == (None, "./notices", None)
    assert default.embedded and not default.webhook_allow_private
    assert (default.default_rpm, default.default_tpd) == (600, 1_000_000)

    named = Settings.from_env(
        {
            "ENFORCEMENT_POLICY_FILE": "/etc/enforcement/policy.toml",
            "ENFORCEMENT_MAIL_DIR": "/var/spool/notices",
            "ENFORCEMENT_WEBHOOK_SECRET": "s3cret",
            "ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE": "true",
            "ENFORCEMENT_DEFAULT_RPM": "60",
            "ENFORCEMENT_DEFAULT_TPD": "5000",
        }
    )
    assert (named.policy_file, named.mail_dir) == (
        "/etc/enforcement/policy.toml",
        "/var/spool/notices",
    )
    assert (named.webhook_secret, named.webhook_allow_private) == ("s3cret", True)
    assert (named.default_rpm, named.default_tpd) == (60, 5000)


def test_the_bounds_on_waiting_for_postgresql_and_redis() -> None:
    """docs/operations.md, "When PostgreSQL or Redis goes silent": additions to the contract's
    configuration, in milliseconds, refused when not a positive whole number."""
    default = Settings.from_env({})
    assert (default.database_timeout_ms, default.redis_timeout_ms) == (30_000, 5_000)
    named = Settings.from_env(
        {"ENFORCEMENT_DATABASE_TIMEOUT_MS": "2500", "ENFORCEMENT_REDIS_TIMEOUT_MS": "750"}
    )
    assert (named.database_timeout_ms, named.redis_timeout_ms) == (2500, 750)
    for name in ("ENFORCEMENT_DATABASE_TIMEOUT_MS", "ENFORCEMENT_REDIS_TIMEOUT_MS"):
        with pytest.raises(SettingsError, match=f"{name} must be positive"):
            Settings.from_env({name: "0"})


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        *((v, True) for v in ("1", "true", "yes", "on", " TRUE ", "On")),
        *((v, False) for v in ("0", "false", "no", "off", "", " ", "No", "OFF")),
    ],
)
def test_a_yes_or_no_setting_reads_every_spelling(value: str, allowed: bool) -> None:
    env = {"ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE": value}
    assert Settings.from_env(env).webhook_allow_private is allowed


def test_a_yes_or_no_setting_that_is_neither_is_refused_naming_it() -> None:
    with pytest.raises(
        SettingsError,
        match=r"^ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE must be true or false, not 'maybe'$",
    ):
        Settings.from_env({"ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE": "Maybe"})


def test_the_worker_tuning_names_and_defaults() -> None:
    """README, "Worker tuning (additions)": each variable under its name, and its default."""
    default = Settings.from_env({})
    assert (default.notice_retries, default.notice_backoff_ms, default.notice_max_backoff_ms) == (
        5,
        15_000,
        3_600_000,
    )
    assert default.sweep_seconds == 30.0 and isinstance(default.sweep_seconds, float)
    assert (default.worker_processes, default.worker_threads, default.worker_heartbeat_ms) == (
        2,
        8,
        60_000,
    )
    named = Settings.from_env(
        {
            "ENFORCEMENT_NOTICE_RETRIES": "1",
            "ENFORCEMENT_NOTICE_BACKOFF_MS": "250",
            "ENFORCEMENT_NOTICE_MAX_BACKOFF_MS": "4000",
            "ENFORCEMENT_SWEEP_SECONDS": "7",
            "ENFORCEMENT_WORKER_PROCESSES": "3",
            "ENFORCEMENT_WORKER_THREADS": " 16 ",
            "ENFORCEMENT_WORKER_HEARTBEAT_MS": "9000",
        }
    )
    assert (named.notice_retries, named.notice_backoff_ms, named.notice_max_backoff_ms) == (
        1,
        250,
        4000,
    )
    assert named.sweep_seconds == 7.0 and isinstance(named.sweep_seconds, float)
    assert (named.worker_processes, named.worker_threads, named.worker_heartbeat_ms) == (
        3,
        16,
        9000,
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("ten", "^ENFORCEMENT_WORKER_THREADS must be a whole number, not 'ten'$"),
        ("2.5", "^ENFORCEMENT_WORKER_THREADS must be a whole number, not '2.5'$"),
        ("0", "^ENFORCEMENT_WORKER_THREADS must be positive, not 0$"),
        ("-3", "^ENFORCEMENT_WORKER_THREADS must be positive, not -3$"),
    ],
)
def test_a_number_setting_that_is_not_a_positive_whole_number_is_refused(
    value: str, says: str
) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({"ENFORCEMENT_WORKER_THREADS": value})


def test_the_settings_are_read_from_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENFORCEMENT_DEFAULT_RPM", "42")
    assert Settings.from_env().default_rpm == 42
    # ``bootstrap()`` without settings (``serve``, ``worker``, the CLI) reads them there too
    monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    container = bootstrap()
    try:
        assert container.settings == Settings.from_env()
        assert container.settings.default_rpm == 42
    finally:
        container.close()


def test_settings_made_in_code_have_the_environments_defaults_and_never_change() -> None:
    """Tests and tools build ``Settings(database_url=…)`` directly: every other field is what
    an empty environment gives, and nothing can change it once made."""
    made = Settings()
    assert made == Settings.from_env({})
    with pytest.raises(FrozenInstanceError):
        made.worker_threads = 1  # type: ignore[misc]
