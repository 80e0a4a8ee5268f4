"""Structured (JSON lines) logging with the request id on every line."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from events.timefmt import format_time

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": format_time(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PipelineExitNoise(logging.Filter):
    """psycopg's "error ignored terminating <Pipeline …>" as a debug line.

    psycopg logs it at warning when a pipeline block has raised already and ending the pipeline
    fails too; the block's own error goes on to the caller, who handles it (a duplicate key is
    an idempotent retry or a lost version race, retried). Kept only when debug logging is on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("error ignored terminating")):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    psycopg = logging.getLogger("psycopg")
    if not any(isinstance(f, PipelineExitNoise) for f in psycopg.filters):
        psycopg.addFilter(PipelineExitNoise())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).handlers[:] = []
        logging.getLogger(noisy).propagate = False
    # The schema check of `serve` and `worker` reads the revision with Alembic, which announces
    # each of its plugins at INFO; `init` prints what it migrated itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)
