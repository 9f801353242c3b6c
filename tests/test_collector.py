"""server.collector: the web process's gc thresholds are parsed strictly, applied at start-up (in the real
web process too), and its collection log records every collection with the settings in force."""

from __future__ import annotations

import gc
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.collector import DEFAULT_THRESHOLDS, configure, parse_thresholds, read_log
from store.exceptions import ConfigError
from store.settings import Settings
from tests.server_proc import ServerProcess, server_env

LOG_DEADLINE_S = 60.0  # generous: a loaded machine starts the web process slowly


@pytest.fixture
def gc_state() -> Iterator[None]:
    """The test process's collector as it was, whatever the test set."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks
    gc.unfreeze()


def test_thresholds_are_three_positive_integers_and_empty_means_the_defaults() -> None:
    assert parse_thresholds("") == DEFAULT_THRESHOLDS
    assert parse_thresholds("10000,2,1000") == (10_000, 2, 1_000)
    for bad in ("1,2", "1,2,3,4", "a,b,c", "0,1,1", "100,-1,5", "1.5,2,3"):
        with pytest.raises(ConfigError) as caught:
            parse_thresholds(bad)
        assert caught.value.details.get("setting") == "DOCENT_WEB_GC_THRESHOLDS"


def test_a_bad_setting_stops_configure_before_anything_changes(gc_state: None) -> None:
    before = gc.get_threshold()
    with pytest.raises(ConfigError):
        configure("700,10", "")
    assert gc.get_threshold() == before


def test_configure_sets_the_thresholds_and_logs_each_collection(tmp_path: Path, gc_state: None) -> None:
    path = tmp_path / "gc.jsonl"
    log = configure("12345,6,789", str(path))
    assert log is not None
    assert gc.get_threshold() == (12_345, 6, 789)
    gc.collect(0)
    gc.collect(1)
    log.close()
    assert log not in gc.callbacks
    records = read_log(path)
    assert [r.generation for r in records] == [0, 1]
    assert all(r.thresholds == (12_345, 6, 789) and r.wall_ms >= 0 and r.cpu_ms >= 0 for r in records)


def test_no_log_path_installs_no_callback(gc_state: None) -> None:
    callbacks = list(gc.callbacks)
    assert configure("", "") is None
    assert gc.get_threshold() == DEFAULT_THRESHOLDS
    assert gc.callbacks == callbacks


def test_the_settings_carry_the_two_variables() -> None:
    settings = Settings.from_env({"DOCENT_WEB_GC_THRESHOLDS": "1,2,3", "DOCENT_WEB_GC_LOG_PATH": "/x"})
    assert (settings.web_gc_thresholds, settings.web_gc_log_path) == ("1,2,3", "/x")


def test_the_web_process_applies_the_thresholds_at_start(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "web-gc.jsonl"
    env = server_env(redis_url, tmp_path, web_gc_thresholds="700,3,1000", web_gc_log_path=str(path))
    with ServerProcess(env) as web:
        deadline = time.monotonic() + LOG_DEADLINE_S
        while not (path.exists() and read_log(path)):  # young collections every 700 allocations: soon
            assert time.monotonic() < deadline, "the web process logged no collection"
            with urllib.request.urlopen(f"{web.http_url}/healthz", timeout=LOG_DEADLINE_S) as response:
                response.read()
        records = read_log(path)
    assert records and all(r.thresholds == (700, 3, 1000) for r in records)
