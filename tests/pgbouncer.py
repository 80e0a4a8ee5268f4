"""A throwaway PgBouncer in front of the PostgreSQL test server, for tests.

Starts the real ``pgbouncer`` on a free loopback port (another one if that was taken meanwhile:
``tests/processes.py``) with a configuration in a temporary directory: transaction pooling, a
small pool (``pool_size`` server connections per database and user, 1 by default, so that its
clients share server sessions), every database of the server (``*``), and the user and password
of the URL it is given (``auth_type = plain``). Its log is its stderr, kept in a file of that
directory; run as root, it runs as ``nobody`` (PgBouncer refuses root), and writes no file
itself. It waits until it says it listens on the port, and stops the process after. A missing
binary raises ``RuntimeError``: a test that needs PgBouncer fails, it is never skipped.

    with PgBouncer(admin_url) as pooler:
        engine = create_engine(pooler.url(database_url))
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa

from tests.processes import PortTaken, free_port, on_free_ports, stop_process

BINARY_ENV = "ENFORCEMENT_TEST_PGBOUNCER"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/local/sbin"])


def pgbouncer_binary() -> str:
    # Debian installs it in /usr/sbin, which a user's PATH may lack.
    binary = os.environ.get(BINARY_ENV) or shutil.which("pgbouncer", path=SEARCH_PATH)
    if not binary:
        raise RuntimeError(
            f"pgbouncer is not installed (not on PATH and {BINARY_ENV} unset); install it with "
            "`apt-get install pgbouncer` or run scripts/test-services"
        )
    return binary


class PgBouncer:
    """One ``pgbouncer`` process in transaction pooling mode, in front of ``server_url``'s
    server, for as long as the ``with`` block lasts."""

    def __init__(self, server_url: str, *, pool_size: int = 1) -> None:
        self.server = sa.make_url(server_url)
        self.pool_size = pool_size
        self.port = free_port()
        self._binary = pgbouncer_binary()
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str) -> str:
        """``database_url`` (a database on the server), reached through this PgBouncer."""
        url = sa.make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def start(self, timeout_s: float = 10.0) -> PgBouncer:
        self._dir = Path(tempfile.mkdtemp(prefix="pgbouncer-test-"))
        try:
            on_free_ports(lambda port: self._launch(port, timeout_s), self.port)
        except PortTaken:
            self.stop()
            raise
        return self

    def _launch(self, port: int, timeout_s: float) -> None:
        assert self._dir is not None
        self.port = port
        user, password = self.server.username or "", self.server.password or ""
        auth_file = self._dir / "users.txt"
        auth_file.write_text(f'"{user}" "{password}"\n')
        config = self._dir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = plain\n"
            f"auth_file = {auth_file}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
        )
        args = [self._binary, str(config)]
        if os.geteuid() == 0:  # "PgBouncer should not run as root"
            args[1:1] = ["-u", "nobody"]
            for path in (self._dir, auth_file, config):
                path.chmod(0o755 if path.is_dir() else 0o644)
        with (self._dir / "pgbouncer.log").open("wb") as log:  # this start's lines alone
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
        self._wait_ready(timeout_s)

    def stop(self) -> None:
        self._end()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _end(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout_s: float) -> None:
        """Until it says it listens on its port, and accepts there."""
        assert self._process is not None and self._dir is not None
        log = self._dir / "pgbouncer.log"
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                text = log.read_text(errors="replace")
                self._end()
                if "Address already in use" in text:
                    raise PortTaken(f"pgbouncer: {text[-500:]}")
                self.stop()
                raise RuntimeError(f"pgbouncer exited on start: {text[-2000:]}")
            if f"listening on 127.0.0.1:{self.port}" in log.read_text(errors="replace"):
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pgbouncer did not accept connections within {timeout_s}s")
            time.sleep(0.02)
