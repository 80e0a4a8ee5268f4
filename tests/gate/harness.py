"""Test doubles for the gate suite: a fake clock and a backend handle."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from enforcement.gate import EmbeddedGate, Gate, RedisGate

# 2026-11-24T10:00:00Z: far from a UTC day boundary.
FAKE_EPOCH = 1_795_600_800.0


class FakeClock:
    def __init__(self, now: float = FAKE_EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """Builds gates on a fresh store (embedded) or the test database (Redis); moves time."""

    kind: str
    build: Callable[..., Gate]
    now: Callable[[], float]
    advance: Callable[[float], None]
    client: redis.Redis | None = None

    def make(self, **settings: Any) -> Gate:
        return self.build(**settings)

    def at(self, seconds_from_now: float) -> datetime:
        return datetime.fromtimestamp(self.now() + seconds_from_now, UTC)


def embedded_backend() -> Backend:
    clock = FakeClock()
    return Backend("embedded", lambda **kw: EmbeddedGate(clock=clock, **kw), clock, clock.advance)


def clear_of_window_end(client: redis.Redis, window_s: int = 86_400, margin_s: float = 5) -> None:
    """Wait for the next token window (the UTC day unless ``window_s``) when Redis's clock, the
    one the gate reads, is less than ``margin_s`` from its end: a test that counts tokens over
    several checks on the real clock must run within one window. (The gate is right to start
    the count again at midnight; a test that straddles it fails for a few milliseconds a day.)"""
    seconds, micros = client.time()
    left = window_s - (seconds + micros / 1_000_000) % window_s
    if left < margin_s:
        time.sleep(left + 0.01)


def redis_backend(client: redis.Redis) -> Backend:
    return Backend(
        "redis", lambda **kw: RedisGate(client, **kw), time.time, time.sleep, client=client
    )
