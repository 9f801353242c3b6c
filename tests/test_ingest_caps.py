"""Issue 11, finding 3 (upload expansion): a few KB of PDF that expands to over a million characters, and a
document that makes too many chunks, are refused with a typed error; nothing of them is written."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest

from actors.ingestion import ingest_files
from index.parse import parse_document
from index.types import Access
from store.catalog import Catalog
from store.exceptions import ExtractedTextTooLarge
from store.settings import Settings

LINE = b"(All work and no play makes Jack a dull boy, again and again and again.) Tj T*\n"


def expanding_pdf(pages: int = 40, lines_per_page: int = 400) -> bytes:
    """One compressed content stream shared by every page: ~7 KB that extract to ~1.1 M characters."""
    stream = zlib.compress(b"BT /F1 10 Tf 12 TL 20 800 Td\n" + LINE * lines_per_page + b"ET\n", 9)
    kids = " ".join(f"{4 + i} 0 R" for i in range(pages))
    font = f"/Resources << /Font << /F1 {4 + pages} 0 R >> >>"
    page = f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents 3 0 R {font} >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode() + stream + b"\nendstream",
        *[page.encode()] * pages,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = io.BytesIO(b"%PDF-1.4\n"), []
    out.seek(0, io.SEEK_END)
    for n, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    out.write(b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets))
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def _settings(tmp_path: Path, **extra: str) -> Settings:
    env = {
        "DOCENT_DATA_DIR": str(tmp_path / "data"), "DOCENT_EMBED_MODEL": "hash",
        "DOCENT_LLM_BACKEND": "none", "DOCENT_ALLOWED_ROOTS": str(tmp_path / "docs"),
        **{f"DOCENT_{k.upper()}": v for k, v in extra.items()},
    }  # fmt: skip
    return Settings.from_env(env)


def _nothing_written(settings: Settings, doc_id: str) -> None:
    catalog = Catalog.for_data_dir(settings.data_path)
    try:
        assert catalog.get_document(doc_id) is None
        assert catalog.document_text(doc_id) is None
        assert catalog._read("SELECT COUNT(*) FROM chunks WHERE doc_id = ?", (doc_id,)) == [(0,)]
    finally:
        catalog.close()


def test_a_small_pdf_that_expands_to_a_million_characters_is_refused(tmp_path: Path) -> None:
    data = expanding_pdf()
    assert len(data) < 13_000
    with pytest.raises(ExtractedTextTooLarge):
        parse_document(data, "pdf", name="bomb.pdf", max_chars=Settings().max_document_chars)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "bomb.pdf").write_bytes(data)
    settings = _settings(tmp_path)
    [outcome] = ingest_files(settings, [tmp_path / "docs" / "bomb.pdf"], Access())
    assert (outcome.status, outcome.error_code, outcome.chunks) == ("failed", "extracted_text_too_large", 0)
    _nothing_written(settings, outcome.doc_id)


def test_a_document_over_the_chunk_cap_is_refused(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    path = tmp_path / "docs" / "long.txt"
    path.write_text("\n\n".join(f"Paragraph {n}: " + "lorem ipsum dolor sit amet " * 60 for n in range(40)))
    settings = _settings(tmp_path, max_document_chunks="5")
    [outcome] = ingest_files(settings, [path], Access())
    assert (outcome.status, outcome.error_code) == ("failed", "too_many_chunks"), outcome
    _nothing_written(settings, outcome.doc_id)
    [fits] = ingest_files(_settings(tmp_path, max_document_chunks="500"), [path], Access())
    assert fits.status != "failed" and fits.chunks > 5
