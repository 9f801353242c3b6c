"""Parsing: every format from real files, heading paths, and each typed refusal."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import pytest

from index.parse import allowed_roots, demo_source_dir, format_for, load_source, parse_document
from index.types import Section
from store.exceptions import (
    BinaryContent,
    DocumentTooLarge,
    EmptyDocument,
    IngestError,
    PathNotAllowed,
    UndecodableText,
    UnsupportedFormat,
)
from store.settings import Settings


def make_settings(data_dir: Path, **extra: str) -> Settings:
    env = {"DOCENT_DATA_DIR": str(data_dir), "DOCENT_LLM_BACKEND": "none"}
    env.update({f"DOCENT_{k.upper()}": v for k, v in extra.items()})
    return Settings.from_env(env)


def sections(text: str, fmt: str) -> list[tuple[tuple[str, ...], str]]:
    doc = parse_document(text.encode(), fmt, name=f"sample.{fmt}")
    return [(s.headings, s.text) for s in doc.sections]


def pdf_bytes(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF with one text line per input line, Helvetica, correct xref offsets."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: dict[int, bytes] = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    page_ids = [4 + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode()
    objects[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    for page_id, text in zip(page_ids, pages, strict=True):
        shown = " ".join(f"({escape(line)}) '" for line in text.split("\n")) if text else ""
        stream = f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET".encode()
        objects[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>"
        ).encode()
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    info = ""
    if title is not None:
        objects[max(objects) + 1] = f"<< /Title ({escape(title)}) >>".encode()
        info = f" /Info {max(objects)} 0 R"
    out = b"%PDF-1.4\n"
    offsets: dict[int, int] = {}
    for object_id in sorted(objects):
        offsets[object_id] = len(out)
        out += b"%d 0 obj\n" % object_id + objects[object_id] + b"\nendobj\n"
    xref, size = len(out), max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[i] for i in range(1, size))
    out += f"trailer\n<< /Size {size} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


# --------------------------------------------------------------------------- formats


def test_txt_paragraphs_and_short_first_line_title() -> None:
    doc = parse_document(
        b"Release notes\n\nFirst paragraph\nwraps here.\n\n\n\nSecond one.\n", "txt", name="n.txt"
    )
    assert doc.title == "Release notes"
    assert doc.sections == (Section(headings=(), text="First paragraph\nwraps here.\n\nSecond one."),)


def test_txt_without_title_line_uses_the_name() -> None:
    doc = parse_document(
        b"This is a sentence that ends with a period.\n\nMore.", "txt", name="docs/notes.txt"
    )
    assert doc.title == "notes"
    assert doc.sections[0].text.startswith("This is a sentence")


def test_markdown_heading_paths_setext_and_fences() -> None:
    text = """---
title: The Guide
---
Intro before any heading.

# Install
Use pip.

## From source ##
```sh
# not a heading
make install
```

Options
-------
Some options.

### Advanced
Deep text.

Usage
=====
Run it.

    # indented code is not a heading either
"""
    doc = parse_document(text.encode(), "md", name="guide.md")
    assert doc.title == "The Guide"
    got = [(s.headings, s.text) for s in doc.sections]
    assert got == [
        ((), "Intro before any heading."),
        (("Install",), "Use pip."),
        (("Install", "From source"), "```sh\n# not a heading\nmake install\n```"),
        (("Install", "Options"), "Some options."),
        (("Install", "Options", "Advanced"), "Deep text."),
        (("Usage",), "Run it.\n\n    # indented code is not a heading either"),
    ]


def test_markdown_title_falls_back_to_first_h1() -> None:
    doc = parse_document(b"# Handbook\n\ntext\n\n---\n\nafter a rule", "md", name="x.md")
    assert doc.title == "Handbook"
    assert doc.sections == (Section(headings=("Handbook",), text="text\n\nafter a rule"),)


def test_html_title_headings_blocks_and_dropped_elements() -> None:
    html = """<!doctype html><html><head><title>Widget &amp; Co manual</title>
<style>body { color: red }</style><script>var secret = "do not index";</script></head>
<body><nav><a href="/">Home</a> menu text</nav>
<h1>Widget</h1><p>Intro   text
over lines.</p>
<h2>Setup</h2><ul><li>First step</li><li>Second <b>bold</b> step</li></ul>
<h3>Detail</h3><pre>  code  block
    indented</pre>
<h2>Use</h2><div>Plain div text<br>after break</div>
<noscript>enable js</noscript>
</body></html>"""
    doc = parse_document(html.encode(), "html", name="manual.html")
    assert doc.title == "Widget & Co manual"
    got = [(s.headings, s.text) for s in doc.sections]
    assert got == [
        (("Widget",), "Intro text over lines."),
        (("Widget", "Setup"), "First step\n\nSecond bold step"),
        (("Widget", "Setup", "Detail"), "code  block\n  indented"),  # sections are dedented
        (("Widget", "Use"), "Plain div text\nafter break"),
    ]
    flat = " ".join(s.text for s in doc.sections)
    for dropped in ("secret", "menu text", "enable js", "color"):
        assert dropped not in flat


def test_rst_overline_and_underline_titles() -> None:
    rst = """=========
 Project
=========

Overview text.

Install
=======

Run the installer.

From source
-----------

Build it::

    make

Usage
=====

----------

Text after a transition.
"""
    doc = parse_document(rst.encode(), "rst", name="readme.rst")
    assert doc.title == "Project"
    got = [(s.headings, s.text) for s in doc.sections]
    assert got == [
        (("Project",), "Overview text."),
        (("Project", "Install"), "Run the installer."),
        (("Project", "Install", "From source"), "Build it::\n\n    make"),
        (("Project", "Usage"), "Text after a transition."),
    ]


def test_pdf_pages_and_metadata_title() -> None:
    data = pdf_bytes(
        ["Quarterly report\nRevenue grew by ten percent.", "", "Outlook (next year) is stable."], "Q3"
    )
    doc = parse_document(data, "pdf", name="q3.pdf")
    assert doc.title == "Q3"
    assert [s.headings for s in doc.sections] == [("Page 1",), ("Page 3",)]
    assert "Revenue grew by ten percent." in doc.sections[0].text
    assert "Outlook (next year) is stable." in doc.sections[1].text


def test_pdf_without_text_is_empty() -> None:
    with pytest.raises(EmptyDocument, match=r"scan\.pdf"):
        parse_document(pdf_bytes([""]), "pdf", name="scan.pdf")


@pytest.mark.parametrize(
    "data",
    [b"not a pdf at all", b"%PDF-1.4\n1 0 obj garbage endobj\ntrailer <<>>\n%%EOF", b"%PDF-1.7\n\x00\xff"],
)
def test_broken_pdf_is_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableText, match=r"broken\.pdf"):
        parse_document(data, "pdf", name="broken.pdf")


# --------------------------------------------------------------------------- decoding


def test_utf8_bom_and_utf16_with_bom_decode() -> None:
    text = "Café notes\n\nNaïve façade — ok."
    for data in (
        codecs.BOM_UTF8 + text.encode(),
        text.encode("utf-16"),
        codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    ):
        doc = parse_document(data, "txt", name="bom.txt")
        assert doc.title == "Café notes"
        assert doc.sections[0].text == "Naïve façade — ok."


def test_crlf_and_decomposed_unicode_are_normalised() -> None:
    doc = parse_document("Title\r\n\r\nCafe\u0301 line  \r\nnext".encode(), "txt", name="crlf.txt")
    assert doc.sections[0].text == "Caf\u00e9 line\nnext"


def test_latin1_bytes_are_undecodable_not_mojibake() -> None:
    with pytest.raises(UndecodableText, match=r"old\.txt"):
        parse_document("café crème".encode("latin-1"), "txt", name="old.txt")


def test_broken_utf16_is_undecodable() -> None:
    with pytest.raises(UndecodableText, match=r"u16\.txt"):
        parse_document(codecs.BOM_UTF16_LE + b"a\x00\x00\xd8", "txt", name="u16.txt")


@pytest.mark.parametrize(
    "data", [b"PK\x03\x04\x14\x00\x00\x00binary", b"\x1b\x02\x03\x04\x05\x06abc\x07\x08\x0e\x0f"]
)
def test_binary_content_in_a_text_format(data: bytes) -> None:
    with pytest.raises(BinaryContent, match=r"blob\.md"):
        parse_document(data, "md", name="blob.md")


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "txt"),
        (b"  \n\t\n  ", "md"),
        (b"<html><script>x()</script></html>", "html"),
        (b"# Only\n", "md"),
    ],
)
def test_empty_documents(data: bytes, fmt: str) -> None:
    with pytest.raises(EmptyDocument, match="hollow"):
        parse_document(data, fmt, name="hollow")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(UnsupportedFormat, match=r"x\.docx"):
        parse_document(b"text", "docx", name="x.docx")
    with pytest.raises(UnsupportedFormat, match=r"\.exe"):
        format_for("tool.exe")
    assert format_for("A.MARKDOWN") == "md" and format_for("page.htm") == "html"


# --------------------------------------------------------------------------- loading


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def test_default_roots_are_the_data_dir_and_demo_sources(data_dir: Path) -> None:
    settings = make_settings(data_dir)
    assert allowed_roots(settings) == (data_dir.resolve(), demo_source_dir(settings))
    path = data_dir / "notes.md"
    path.write_text("# Hello\n\nworld")
    assert load_source(path, settings) == (b"# Hello\n\nworld", "md")


def test_configured_roots_replace_the_defaults(tmp_path: Path, data_dir: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "a.txt").write_text("shared text")
    (data_dir / "b.txt").write_text("data text")
    settings = make_settings(data_dir, allowed_roots=str(shared))
    assert load_source(shared / "a.txt", settings) == (b"shared text", "txt")
    with pytest.raises(PathNotAllowed, match=r"b\.txt"):
        load_source(data_dir / "b.txt", settings)


def test_paths_escaping_the_roots_are_refused(tmp_path: Path, data_dir: Path) -> None:
    settings = make_settings(data_dir)
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    (data_dir / "docs").mkdir()
    link = data_dir / "docs" / "innocent.txt"
    link.symlink_to(outside)
    dir_link = data_dir / "escape"
    dir_link.symlink_to(tmp_path)
    escapes = [
        outside,
        data_dir / ".." / "secret.txt",
        data_dir / "docs" / ".." / ".." / "secret.txt",
        link,
        dir_link / "secret.txt",
        Path("/etc/passwd"),
    ]
    for path in escapes:
        with pytest.raises(PathNotAllowed, match="outside the allowed"):
            load_source(path, settings)


def test_a_symlink_within_the_roots_is_followed(data_dir: Path) -> None:
    settings = make_settings(data_dir)
    (data_dir / "real.txt").write_text("real")
    (data_dir / "alias.txt").symlink_to(data_dir / "real.txt")
    assert load_source(data_dir / "alias.txt", settings) == (b"real", "txt")


def test_oversized_documents_are_refused(data_dir: Path) -> None:
    settings = make_settings(data_dir, max_document_bytes="100")
    (data_dir / "ok.txt").write_bytes(b"x" * 100)
    (data_dir / "big.txt").write_bytes(b"x" * 101)
    assert load_source(data_dir / "ok.txt", settings)[0] == b"x" * 100
    with pytest.raises(DocumentTooLarge, match=r"big\.txt"):
        load_source(data_dir / "big.txt", settings)


def test_unsupported_types_missing_files_and_directories(data_dir: Path) -> None:
    settings = make_settings(data_dir)
    (data_dir / "sheet.xlsx").write_bytes(b"PK")
    (data_dir / "folder.md").mkdir()
    os.mkfifo(data_dir / "pipe.txt")  # would block a plain open() forever
    with pytest.raises(UnsupportedFormat, match=r"sheet\.xlsx"):
        load_source(data_dir / "sheet.xlsx", settings)
    with pytest.raises(IngestError, match=r"no such file"):
        load_source(data_dir / "missing.txt", settings)
    for special in ("folder.md", "pipe.txt"):
        with pytest.raises(IngestError, match="not a regular file"):
            load_source(data_dir / special, settings)


def test_load_then_parse_a_real_file(data_dir: Path) -> None:
    settings = make_settings(data_dir)
    path = data_dir / "page.html"
    path.write_text("<title>T</title><h1>A</h1><p>alpha</p>", encoding="utf-8")
    data, fmt = load_source(Path(os.path.relpath(path)), settings)  # relative paths resolve too
    assert parse_document(data, fmt, name=str(path)).sections == (Section(headings=("A",), text="alpha"),)
