"""Email notices: SMTP to ``ENFORCEMENT_SMTP_URL``, or ``.eml`` files when it is unset."""

from __future__ import annotations

import functools
import io
import os
import smtplib
import socket
import ssl
import time
from contextlib import suppress
from email.charset import QP, Charset
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.policy import SMTPUTF8
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import ParseResult, urlparse

from enforcement.files import replace_durably
from enforcement.notices.deadline import Deadline, DeadlineReader
from enforcement.notices.templates import RenderedNotice
from enforcement.settings import Settings
from events import RecordedEvent

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

SENDER_ADDRESS = Settings.mail_from  # ENFORCEMENT_MAIL_FROM's default
SENDER_NAME = "TaaS Trust & Safety"
# UTF-8 text as quoted-printable: ASCII stays readable in the raw message, and no line is too
# long for SMTP whatever a description holds.
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP
_UTF8_FILE = SMTPUTF8.clone(linesep="\n")  # headers in UTF-8, lines as every .eml has them


class EmailRefused(Exception):
    """The mail server may not be used as configured (it would take the login in cleartext):
    retrying will not help."""


def build_message(
    notice: RecordedEvent, rendered: RenderedNotice, to: str, sender: str = SENDER_ADDRESS
) -> Message:
    """The notice as a ``text/plain`` e-mail. For an ASCII address it is built on the
    ``compat32`` policy, which stores headers as given (``EmailMessage``'s default policy
    parses every header it is given: about 0.7 ms a message against 0.15). An address with
    other characters needs SMTPUTF8, which ``smtplib`` does only for a message on the default
    policy: that message is built on it. ``sender`` is the address the account replies to
    (``ENFORCEMENT_MAIL_FROM``)."""
    message: Message
    if to.isascii():
        # A Charset instance is documented (Python 3.5+); typeshed types only names.
        message = MIMEText(rendered.text, "plain", _UTF8_QP)  # type: ignore[arg-type]
    else:
        message = EmailMessage()
        message.set_content(rendered.text)
    message["From"] = f"{SENDER_NAME} <{sender}>"
    message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(notice.recorded_at)
    # One Message-ID per notice: a retry (or a re-send after a broker lost the message) is the
    # same message again, which mail systems and readers can recognise as one.
    domain = sender.rpartition("@")[2]
    message["Message-ID"] = f"<{notice.event_id}@{domain}>"
    first = notice.data.get("resend_of")
    if isinstance(first, dict):
        # A copy an operator sent again answers the first notice: a mail reader shows the two
        # in one thread.
        message["In-Reply-To"] = message["References"] = f"<{first['notice_event_id']}@{domain}>"
    message["X-Enforcement-Event-Id"] = notice.event_id
    return message


def file_bytes(message: Message) -> bytes:
    """The message as an ``.eml`` file holds it: one to an address with other than ASCII
    characters (``build_message``'s ``EmailMessage``) has its headers in UTF-8 (RFC 6532, as it
    goes over SMTPUTF8); encoded words (RFC 2047) are not allowed inside an address."""
    if isinstance(message, EmailMessage):
        return message.as_bytes(policy=_UTF8_FILE)
    return bytes(message)


# A notice names its account's owner and what they did: the files are the service user's alone
# (a directory that exists already keeps its mode).
MAIL_DIR_MODE = 0o700
MAIL_FILE_MODE = 0o600
# A part file older than this was left by a crash (a write takes milliseconds); a younger one
# may be another delivery's under way. A sender sweeps the directory of them at most this often.
STALE_PART_SECONDS = 600


def sweep_parts(directory: Path) -> None:
    """Remove the part files (``write_durably``'s) older than ``STALE_PART_SECONDS``."""
    now = time.time()
    with suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".part"):
                with suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_PART_SECONDS:
                        os.unlink(entry.path)


def write_durably(target: Path, data: bytes) -> None:
    """Write ``target`` whole or not at all, on disk before this returns (the delivery is then
    recorded as done), readable by its owner only (``MAIL_FILE_MODE``); a part a crash left,
    ``sweep_parts`` removes."""
    replace_durably(target, [data], MAIL_FILE_MODE)


def _server(scheme: str, host: str, port: int) -> str:
    """The mail server as errors name it: its URL without the login."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _SMTP(smtplib.SMTP):
    """``smtplib.SMTP`` keeping its whole conversation to ``deadline``: the connection, each
    command sent and each line of each reply wait at most the time left. A server that drips
    its replies is cut off all the same, well within a worker's time limit, which would cut
    the attempt off before its failure is recorded."""

    def __init__(self, host: str, port: int, deadline: Deadline, **kwargs: Any) -> None:
        self._deadline = deadline
        super().__init__(host, port, timeout=deadline.timeout, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # (smtplib's own, which typeshed leaves out)
        sock: socket.socket = super()._get_socket(host, port, self._deadline.left())  # type: ignore[misc]
        return sock

    def send(self, s: ReadableBuffer | str) -> None:
        if self.sock is not None:
            try:
                self.sock.settimeout(self._deadline.left())
            except OSError as exc:  # past the deadline, or a socket already gone: as smtplib
                self.close()  # says a failed send (which QUIT ignores)
                raise smtplib.SMTPServerDisconnected(str(exc)) from exc
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:  # (again after STARTTLS)
            raw = self.sock.makefile("rb", buffering=0)
            self.file = io.BufferedReader(DeadlineReader(self.sock, raw, self._deadline))
        return super().getreply()


class _SMTPS(_SMTP, smtplib.SMTP_SSL):
    """``smtplib.SMTP_SSL`` by a deadline, as ``_SMTP``."""


class EmailSender:
    """Sends over SMTP when ``smtp_url`` is set, else writes ``<mail_dir>/<event id>.eml``.

    An SMTP attempt takes at most ``deadline`` seconds in all, each socket operation at most
    ``timeout``; past the deadline it fails (a ``TimeoutError``, retried as any failure)."""

    def __init__(
        self,
        smtp_url: str | None,
        mail_dir: str,
        timeout: float = 10.0,
        sender: str = SENDER_ADDRESS,
        deadline: float = 30.0,
    ):
        self.smtp_url = smtp_url
        self.mail_dir = Path(mail_dir)
        self.timeout = timeout
        self.deadline = deadline
        self.sender = sender  # From, and the envelope's sender
        self._swept_at = -float(STALE_PART_SECONDS)  # the first file written sweeps

    def send(self, message: Message, notice_event_id: str) -> None:
        if self.smtp_url is None:
            self.mail_dir.mkdir(mode=MAIL_DIR_MODE, parents=True, exist_ok=True)
            if time.monotonic() - self._swept_at >= STALE_PART_SECONDS:
                self._swept_at = time.monotonic()
                sweep_parts(self.mail_dir)
            write_durably(self.mail_dir / f"{notice_event_id}.eml", file_bytes(message))
            return
        url = urlparse(self.smtp_url)
        if url.scheme not in ("smtp", "smtps"):
            raise ValueError(f"ENFORCEMENT_SMTP_URL must be smtp:// or smtps://, not {url.scheme}")
        host = url.hostname or "localhost"
        port = url.port or (465 if url.scheme == "smtps" else 25)
        deadline = Deadline(
            f"the mail server {_server(url.scheme, host, port)}", self.deadline, self.timeout
        )
        try:
            self._converse(url, host, port, deadline, message)
        except OSError as exc:  # smtplib says "disconnected" for a read the deadline cut off
            if deadline.passed():
                raise deadline.error() from exc
            raise

    def _converse(
        self, url: ParseResult, host: str, port: int, deadline: Deadline, message: Message
    ) -> None:
        smtp = (  # SMTP_SSL's own default context verifies nothing: it is given one that does
            _SMTPS(host, port, deadline, context=self._tls)
            if url.scheme == "smtps"
            else _SMTP(host, port, deadline)
        )
        with smtp:
            if url.username:
                if url.scheme == "smtp":
                    self._starttls(smtp, host, port)
                smtp.login(url.username, url.password or "")
            to = str(message["To"] or "")
            if not to.isascii():
                smtp.send_message(message)  # SMTPUTF8, which smtplib does in send_message only
            else:
                # send_message would quote every body line that starts with "From " as
                # ">From " (an mbox habit), whatever the message's policy; as_bytes does not.
                wire = message.policy.clone(linesep="\r\n")  # SMTP's line ends
                smtp.sendmail(self.sender, [to], message.as_bytes(policy=wire))

    def _starttls(self, smtp: smtplib.SMTP, host: str, port: int) -> None:
        """Upgrade the connection to TLS before a login, verifying the server (``_tls``). A server
        that offers no STARTTLS gets no login: the password would go in cleartext. The error
        names the server as ``smtp://host:port``, never with the URL's password."""
        smtp.ehlo_or_helo_if_needed()
        if not smtp.has_extn("starttls"):
            raise EmailRefused(
                f"the mail server {_server('smtp', host, port)} offers no STARTTLS, so a login "
                "would send the password in cleartext: not logging in; ENFORCEMENT_SMTP_URL needs "
                "smtps:// or a server that offers STARTTLS"
            )
        smtp.starttls(context=self._tls)
        smtp.ehlo_or_helo_if_needed()  # EHLO again: STARTTLS forgets what the server offered

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        """The TLS context, made once per sender (loading the CAs takes ~20 ms): it verifies
        the server's certificate and name against the system's CAs, or ``SSL_CERT_FILE``'s."""
        return ssl.create_default_context()
