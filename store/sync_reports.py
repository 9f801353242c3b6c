"""Folder sync reports: what each sync of a source did, kept under the data dir for the admin console.

    append_report(data_path, report)          # one JSON line, fsync-ed, in {data}/sync/reports.jsonl
    recent_reports(data_path, limit=20)       # newest first; a line torn by a crash is skipped

The file is capped: past MAX_REPORTS lines it is rewritten (atomically) with the newest KEEP_REPORTS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

SYNC_DIR = "sync"
REPORTS_FILE = "reports.jsonl"
MAX_REPORTS = 2000
KEEP_REPORTS = 1000
MAX_REPORT_ERRORS = 50  # failures listed per report (the counts are complete)

SyncStatus = Literal["completed", "refused", "failed"]


class SyncFailure(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    code: str
    error: str


class SyncReport(msgspec.Struct, frozen=True, kw_only=True):
    """One sync of one source: what it found and what it changed."""

    source: str  # the synced directory, resolved
    tenant: str
    status: SyncStatus
    started_at_ms: int
    finished_at_ms: int
    files: int = 0  # supported files found
    added: int = 0  # new files ingested
    changed: int = 0  # files whose content hash changed, ingested again
    updated: int = 0  # same content, new readers or metadata: re-committed without embedding
    deleted: int = 0  # documents whose file disappeared
    unchanged: int = 0
    failed: int = 0
    embedded: int = 0  # chunks that needed the embedder
    message: str = ""  # why a sync was refused or failed
    failures: tuple[SyncFailure, ...] = ()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SyncReport)


def reports_path(data_path: Path) -> Path:
    return Path(data_path) / SYNC_DIR / REPORTS_FILE


def append_report(data_path: Path, report: SyncReport) -> None:
    path = reports_path(data_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(_encoder.encode(report) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    if path.stat().st_size > MAX_REPORTS * 512 and len(_lines(path)) > MAX_REPORTS:
        _rewrite(path, _lines(path)[-KEEP_REPORTS:])


def _lines(path: Path) -> list[bytes]:
    try:
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _rewrite(path: Path, lines: list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recent_reports(data_path: Path, *, limit: int = 20, tenant: str | None = None) -> list[SyncReport]:
    """The newest reports first (of one tenant when given); undecodable lines are skipped."""
    found: list[SyncReport] = []
    for line in reversed(_lines(reports_path(data_path))):
        try:
            report = _decoder.decode(line)
        except msgspec.DecodeError:
            continue  # torn by a crash mid-write
        if tenant is None or report.tenant == tenant:
            found.append(report)
            if len(found) >= limit:
                break
    return found
