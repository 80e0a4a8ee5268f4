"""The soak's silences (``benchmarks/soak_services.py``, ``--dep-stalls``) SIGSTOP only its own
processes and never leave one stopped. It runs as root, which may stop any process (the shared
PostgreSQL server, another session's ``redis-server``): a process id that is not the soak's
own is never signalled, and a freeze cut short by an error still lets everything go on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from soak_services import PrivateCluster, RedisServer, _frozen  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def state(pid: int) -> str:
    """The process's state letter (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def children_of(pid: int) -> list[int]:
    return [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if stat.exists() and int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid
    ]


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process of this test's own, working in ``tmp_path`` (not a cluster's data directory)."""
    proc = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
    yield proc
    proc.kill()
    proc.wait()


def test_a_freeze_cut_short_by_an_error_lets_what_it_stopped_go_on(
    sleeper: subprocess.Popen[bytes],
) -> None:
    def fails() -> list[int]:
        wait_for(lambda: state(sleeper.pid) == "T", "the process stopped")
        raise RuntimeError("reading /proc failed")

    with pytest.raises(RuntimeError):
        _frozen([sleeper.pid], 30, group=False, more=fails)
    assert state(sleeper.pid) != "T"


def test_a_postmaster_pid_file_naming_another_process_freezes_nothing(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """A stale ``postmaster.pid`` (its server gone, its id taken by another process)."""
    cluster = PrivateCluster(tmp_path / "cluster", 1)
    cluster.data.mkdir(parents=True)
    (cluster.data / "postmaster.pid").write_text(f"{sleeper.pid}\n{cluster.data}\n")

    with pytest.raises(RuntimeError, match="not the postmaster"):
        cluster.freeze(0.2)
    assert state(sleeper.pid) != "T"


def test_the_postmaster_and_every_process_it_started_are_stopped_then_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = PrivateCluster(tmp_path / "cluster", 1)
    cluster.data.mkdir(parents=True)
    # A stand-in postmaster working in the data directory, with two children of its own.
    fake = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"], cwd=cluster.data)
    children: list[int] = []
    try:
        (cluster.data / "postmaster.pid").write_text(f"{fake.pid}\n")
        wait_for(lambda: len(children_of(fake.pid)) == 2, "bash started its children")
        children = children_of(fake.pid)
        listed = cluster.children

        def once_stopped(postmaster: int) -> list[int]:
            assert state(postmaster) == "T"  # it can neither fork nor reap meanwhile
            return listed(postmaster)

        monkeypatch.setattr(cluster, "children", once_stopped)
        seen: list[str] = []

        def watch() -> None:
            wait_for(lambda: all(state(p) == "T" for p in children), "the children stopped")
            seen.extend(state(p) for p in [fake.pid, *children])

        watcher = threading.Thread(target=watch)
        watcher.start()
        at, back = cluster.freeze(1.0)
        watcher.join()
        assert seen == ["T", "T", "T"]
        assert back - at >= 1.0
        assert all(state(p) != "T" for p in [fake.pid, *children])
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        fake.kill()
        fake.wait()


def test_a_redis_server_that_ended_is_never_signalled(tmp_path: Path) -> None:
    """Its id (and its process group's) may be another process's once it was reaped."""
    server = RedisServer(1, tmp_path / "redis", "none")
    server.proc = subprocess.Popen(["true"])
    server.proc.wait()

    with pytest.raises(RuntimeError, match="not running"):
        server.freeze(0.2)
