"""The SQLite pool keeps a connection for every thread that may hold one: connections are not
closed and opened again (PRAGMAs, schema read) when more threads than 5 use the database. (The
pool options themselves: ``tests/unit/test_bootstrap_pool.py``.)"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from enforcement.bootstrap import bootstrap
from enforcement.migrations import upgrade
from enforcement.settings import Settings


def test_concurrent_threads_reuse_their_connections(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    upgrade(url)
    container = bootstrap(Settings(database_url=url, worker_threads=8))
    opened: list[object] = []
    sa.event.listen(container.engine, "connect", lambda *_: opened.append(1))
    threads = 20  # the embedded workers' 8 and a dozen request threads at once
    try:
        for _ in range(3):
            barrier = threading.Barrier(threads)

            def hold(barrier: threading.Barrier = barrier) -> None:
                with container.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1").all()
                    barrier.wait(timeout=10)  # all hold a connection at the same time

            workers = [threading.Thread(target=hold) for _ in range(threads)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
    finally:
        container.close()

    assert len(opened) == threads  # opened in the first round, reused in the next two
