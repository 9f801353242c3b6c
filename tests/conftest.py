"""Shared fixtures: a real Redis per session, settings pointing at temporary dirs, a shared model cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from store.redis import EmbeddedRedis
from store.settings import Settings

if TYPE_CHECKING:
    from tests.stack_proc import Stack

REPO = Path(__file__).resolve().parent.parent
# Converted models are cached across test runs (and shared with `make run` only by choice).
MODEL_CACHE = Path(os.environ.get("DOCENT_TEST_MODEL_DIR", REPO / ".cache" / "models"))
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the flushed test Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings.from_env(
        {
            "DOCENT_DATA_DIR": str(tmp_path / "data"),
            "DOCENT_MODEL_DIR": str(MODEL_CACHE),
            "DOCENT_REDIS_URL": redis_url,
            "DOCENT_LLM_BACKEND": "none",
        }
    )


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """`docent run` stacks a test started (tests.stack_proc.Stack); each is stopped afterwards."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.stop()
