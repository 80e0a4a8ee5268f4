"""A throwaway ``redis-server`` for tests and benchmarks.

Starts the real binary on a free loopback port (another one if that was taken meanwhile:
``tests/processes.py``) with persistence off (``--save ""``, ``--appendonly no``) in a temporary
directory, waits until it answers (itself, not another process on that port), and can stop and
restart it on the same port (to test reconnects and script-cache loss). A missing binary raises
``RuntimeError``: a test that needs Redis fails, it is never skipped.

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)

``cluster=True`` starts a one-node Redis Cluster that owns all 16384 slots, so a plain client
still works but Redis refuses any command or script whose keys span more than one slot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.processes import PortTaken, free_port, on_free_ports, stop_process

BINARY_ENV = "ENFORCEMENT_TEST_REDIS_SERVER"


def redis_server_binary() -> str:
    binary = os.environ.get(BINARY_ENV) or shutil.which("redis-server")
    if not binary:
        raise RuntimeError(
            f"redis-server is not installed (not on PATH and {BINARY_ENV} unset); "
            "install it with `apt-get install redis-server` or run scripts/test-services"
        )
    return binary


class RedisServer:
    """One ``redis-server`` subprocess on a fixed port for its whole life."""

    def __init__(self, *, port: int | None = None, cluster: bool = False) -> None:
        self.port = port or free_port()
        # A port given, or the one a first start listened on: its clients know it.
        self._keep_port = port is not None
        self.cluster = cluster
        self._bus_port = 0
        self._binary = redis_server_binary()
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    @contextmanager
    def memory_full(self) -> Iterator[None]:
        """Redis at ``maxmemory`` with the ``noeviction`` policy while inside: every command
        that may add data is refused with an ``OOM`` error reply, reads and deletions are
        answered (a ``maxmemory`` of 1 byte, which the data of an empty server exceeds)."""
        client = self.client()
        try:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
            yield
        finally:
            client.config_set("maxmemory", 0)
            client.close()

    @contextmanager
    def read_only(self) -> Iterator[None]:
        """Redis as a replica while inside, as after a failover that left the clients on the
        old primary: every write is refused with a ``READONLY`` error reply, reads are answered
        from the data it holds (its primary, a port nothing listens on, never answers, so the
        data stays). Back to a primary after, data kept."""
        client = self.client()
        try:
            client.replicaof("127.0.0.1", free_port())
            yield
        finally:
            client.replicaof("NO", "ONE")
            client.close()

    @contextmanager
    def snapshot_failing(self) -> Iterator[None]:
        """Redis whose last snapshot failed while inside: with ``stop-writes-on-bgsave-error``
        (its default) every write is refused with a ``MISCONF`` error reply until a snapshot
        succeeds. The snapshot fails because its file's name (``dump.rdb``, a protected
        setting) is taken by a directory that is not empty: the rename of the written snapshot
        onto it fails. A snapshot file there before is put back after."""
        client = self.client()
        blocker, kept = self._dir / "dump.rdb", self._dir / "dump.rdb.kept"
        try:
            if blocker.is_file():
                blocker.rename(kept)
            (blocker / "occupied").mkdir(parents=True)
            # Writes are refused only where snapshots are due (a save point), as in production.
            client.config_set("save", "3600 1")
            client.config_set("stop-writes-on-bgsave-error", "yes")
            client.bgsave()
            deadline = time.monotonic() + 10
            while client.info("persistence")["rdb_last_bgsave_status"] != "err":
                assert time.monotonic() < deadline, "the snapshot did not fail"
                time.sleep(0.02)
            yield
        finally:
            client.config_set("stop-writes-on-bgsave-error", "no")  # writes taken again
            client.config_set("save", "")
            client.close()
            shutil.rmtree(blocker, ignore_errors=True)
            if kept.is_file():
                kept.rename(blocker)

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        if self._process is not None:
            return self
        on_free_ports(lambda port: self._launch(port, timeout_s), self.port, self._keep_port)
        self._keep_port = True
        if self.cluster:
            self._own_all_slots(timeout_s * 3)
        return self

    def _launch(self, port: int, timeout_s: float) -> None:
        self.port = port
        (self._dir / "redis.log").unlink(missing_ok=True)  # this start's lines alone
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            nodes = self._dir / "nodes.conf"
            nodes.unlink(missing_ok=True)
            self._bus_port = free_port()  # not port + 10000: may exceed 65535
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(nodes)]
            args += ["--cluster-port", str(self._bus_port)]
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_ready(timeout_s)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port: cached scripts are gone, and the data too
        unless a snapshot was saved (``dump.rdb`` in its directory, which the start loads)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wait_ready(self, timeout_s: float) -> None:
        """Until this process answers on the port (not another one that listens there)."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        # One try per look: redis-py's retries took 15 s against a port that answers nothing.
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while True:
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    log = self._dir / "redis.log"
                    detail = err + (log.read_text() if log.exists() else "")
                    self.stop()
                    if "Address already in use" in detail:
                        raise PortTaken(f"redis-server: {detail[-500:]}")
                    raise RuntimeError(f"redis-server exited on start: {detail[-2000:]}")
                try:
                    if client.info("server")["process_id"] == self._process.pid:
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer within {timeout_s}s")
                time.sleep(0.02)
        finally:
            client.close()

    def _own_all_slots(self, timeout_s: float) -> None:
        client = self.client()
        command: Callable[..., Any] = client.execute_command
        try:
            command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + timeout_s
            while b"cluster_state:ok" not in command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("one-node cluster did not reach cluster_state:ok")
                time.sleep(0.02)
        finally:
            client.close()
