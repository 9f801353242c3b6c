"""Scheduled folder syncs (issue 12): `sync_source(dir)` against a real Redis — a due source syncs once and
schedules its next run, a second message finds the slot taken and ends (duplicate chains collapse), an
unconfigured source ends its chain, a refused sync is reported and retried — and a real ingest worker that
kicks the configured sources at boot and keeps them in line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis

from actors.broker import INGEST_QUEUE, NAMESPACE, use_stub_broker

if dramatiq.broker.global_broker is None:  # before the actor module declares its actor
    use_stub_broker()

from actors.sync_job import SYNC_SOURCE_ACTOR, _digest, sync_source
from store.catalog import Catalog
from store.keys import sync_due
from store.settings import Settings, get_settings
from store.sync_reports import recent_reports
from tests.server_proc import REPO

TENANT = "acme"
WAIT_S = 60.0


def write_sources(path: Path, root: Path, interval_s: int, share: float = 0.2) -> Path:
    path.write_text(f'[[sources]]\ndir = "{root}"\ntenant = "{TENANT}"\nreaders = ["group:staff"]\n'
                    f"interval_s = {interval_s}\nmax_delete_share = {share}\n")  # fmt: skip
    return path


@pytest.fixture
def env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    root = tmp_path / "kb" / "handbook"
    root.mkdir(parents=True)
    sources = write_sources(tmp_path / "sources.toml", root, 600)
    values = {
        "DOCENT_DATA_DIR": str(tmp_path / "data"), "DOCENT_REDIS_URL": redis_url,
        "DOCENT_EMBED_MODEL": "hash", "DOCENT_LLM_BACKEND": "none",
        "DOCENT_ALLOWED_ROOTS": str(tmp_path / "kb"), "DOCENT_SYNC_SOURCES_PATH": str(sources),
    }  # fmt: skip
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()  # sync_source reads get_settings(): this env, not one an earlier test cached
    yield values
    get_settings.cache_clear()


def delayed(client: redis.Redis, root: Path) -> int:
    """sync_source(root) messages waiting in the ingest queue's delay queue."""
    messages: list[bytes] = client.hvals(f"{NAMESPACE}:{INGEST_QUEUE}.DQ.msgs")  # type: ignore[assignment]
    return sum(SYNC_SOURCE_ACTOR.encode() in m and str(root).encode() in m for m in messages)


def live_documents(settings: Settings) -> set[str]:
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        return {d.doc_id for d in catalog.list_documents(tenant=TENANT, limit=1000)}
    finally:
        catalog.close()


def test_a_due_source_syncs_once_and_schedules_its_next_run(env: dict[str, str], tmp_path: Path) -> None:
    root = (tmp_path / "kb" / "handbook").resolve()
    for n in range(3):
        (root / f"n{n}.md").write_text(f"# Note {n}\n\nNote {n} of the handbook.\n")
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(env["DOCENT_REDIS_URL"])
    client.delete(sync_due(_digest(root)))
    sync_source(str(root))
    assert live_documents(settings) == {f"kb/handbook/n{n}.md" for n in range(3)}
    assert [r.added for r in recent_reports(settings.data_path)] == [3] and delayed(client, root) == 1
    sync_source(str(root))  # a duplicate chain's message: the slot is taken, nothing runs, nothing is sent
    assert len(recent_reports(settings.data_path)) == 1 and delayed(client, root) == 1
    assert 0 < client.pttl(sync_due(_digest(root))) <= 540_000  # 90% of the 600 s interval

    # A refused sync (mass deletion) is reported and the chain goes on; it never forces.
    for n in range(3):
        (root / f"n{n}.md").unlink()
    client.delete(sync_due(_digest(root)))
    sync_source(str(root))
    assert recent_reports(settings.data_path)[0].status == "refused" and delayed(client, root) == 2
    assert len(live_documents(settings)) == 3

    # A directory that is no longer configured ends its chain.
    client.delete(sync_due(_digest(root)))
    sync_source(str(tmp_path / "elsewhere"))
    assert delayed(client, root) == 2 and len(recent_reports(settings.data_path)) == 2
    client.close()


def test_an_ingest_worker_kicks_the_sources_and_keeps_them_in_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    root = (tmp_path / "kb" / "handbook").resolve()
    write_sources(Path(env["DOCENT_SYNC_SOURCES_PATH"]), root, interval_s=1)
    (root / "a.md").write_text("# A\n\nThe first note.\n")
    client = redis.Redis.from_url(env["DOCENT_REDIS_URL"])
    client.delete(sync_due(_digest(root)))
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")} | env
    command = [sys.executable, "-m", "dramatiq", "actors.worker", "--queues", "ingest", "--processes", "1",
               "--threads", "1"]  # fmt: skip
    worker = subprocess.Popen(command, env=worker_env, cwd=REPO, start_new_session=True)
    settings = Settings.from_env(env)
    try:
        wait_for(lambda: live_documents(settings) == {"kb/handbook/a.md"})
        (root / "b.md").write_text("# B\n\nThe second note.\n")
        (root / "c.md").write_text("# C\n\nThe third note.\n")
        wait_for(
            lambda: live_documents(settings) == {"kb/handbook/a.md", "kb/handbook/b.md", "kb/handbook/c.md"}
        )
        (root / "a.md").unlink()  # 1 of 3 is over the 20% guard: refused until the source allows 50%
        write_sources(Path(env["DOCENT_SYNC_SOURCES_PATH"]), root, interval_s=1, share=0.5)
        wait_for(lambda: live_documents(settings) == {"kb/handbook/b.md", "kb/handbook/c.md"})
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        client.close()


def wait_for(condition: object) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("the scheduled sync did not converge in time")
