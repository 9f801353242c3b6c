"""Source files in, `ParsedDocument`s out: path checks, text decoding and one parser per format.

`load_source` is the only place a document path is opened. It refuses (with a typed error naming the
document) anything that resolves, after symlinks and `..`, outside the allowed roots, anything over
`max_document_bytes` and any extension it cannot parse. `parse_document` turns the bytes into a title
and sections, each section a run of text under one heading path:

- txt: paragraphs; a short first line standing alone is the title.
- md: ATX (`## x`) and setext (`x` over `===`/`---`) headings; fenced and indented code stay text.
- html: `<title>`, h1-h6 headings; block elements become paragraphs; script/style/nav/... are dropped.
- pdf: one section per page ("Page N"), text extracted by pypdf; the metadata title if there is one.
- rst: section titles with an underline (and optional overline); levels in order of first appearance.

Text is decoded as UTF-8 (with or without BOM), or as UTF-16 when it starts with a UTF-16 BOM; anything
else is `UndecodableText` (never a silent latin-1 guess). NUL bytes or mostly control characters in a
text format are `BinaryContent`. Text ends up NFC-normalised with `\n` line ends.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import stat
import textwrap
import unicodedata
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path, PurePath

from index.types import ParsedDocument, Section
from store.exceptions import (
    BinaryContent,
    DocentError,
    DocumentTooLarge,
    EmptyDocument,
    ExtractedTextTooLarge,
    IngestError,
    PathNotAllowed,
    UndecodableText,
    UnsupportedFormat,
)
from store.settings import Settings

FORMAT_BY_SUFFIX: dict[str, str] = {
    ".txt": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".rst": "rst",
}
FORMATS = frozenset(FORMAT_BY_SUFFIX.values())
MAX_CONTROL_CHAR_RATIO = 0.10  # above this share of control characters a "text" file is binary
TITLE_MAX_CHARS = 100  # a first line longer than this is body text, not a title
PDF_MAGIC_SEARCH_BYTES = 1024  # the %PDF- header may follow some junk, as readers tolerate

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # category Cc minus \t \n \v \f \r
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


# --------------------------------------------------------------------------- loading


def demo_source_dir(settings: Settings) -> Path:
    """Where `docent demo` writes the demo documents (index.demo): an allowed root by default."""
    return settings.data_path / "demo-src"


def allowed_roots(settings: Settings) -> tuple[Path, ...]:
    """Directories documents may be read from: the configured roots, else the data dir and demo sources."""
    configured = settings.allowed_root_paths
    if configured:
        return configured
    return (settings.data_path, demo_source_dir(settings))


def format_for(path: str | PurePath) -> str:
    """The parser format for a file name, by extension; `UnsupportedFormat` otherwise."""
    suffix = PurePath(path).suffix.lower()
    try:
        return FORMAT_BY_SUFFIX[suffix]
    except KeyError:
        supported = " ".join(sorted(FORMAT_BY_SUFFIX))
        raise UnsupportedFormat(
            f"{path}: unsupported file type {suffix or '(none)'!r}; supported: {supported}",
            document=str(path),
        ) from None


def load_source(path: Path, settings: Settings) -> tuple[bytes, str]:
    """Read a document from disk after checking where it is, what it is and how big it is."""
    name = str(path)
    resolved = Path(path).resolve()  # follows symlinks and `..` before the root check
    if not any(_inside(resolved, root) for root in allowed_roots(settings)):
        raise PathNotAllowed(f"{name}: outside the allowed document roots", document=name)
    fmt = format_for(resolved)
    data = _read_capped(resolved, settings.max_document_bytes, name)
    return data, fmt


def _inside(path: Path, root: Path) -> bool:
    return path.is_relative_to(root.resolve())


def _read_capped(path: Path, max_bytes: int, name: str) -> bytes:
    # O_NOFOLLOW: the checked path's last component cannot be swapped for a symlink before the open;
    # O_NONBLOCK: a FIFO planted under a root cannot hang the open (regular files ignore it).
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise IngestError(f"{name}: no such file", document=name) from None
    except OSError as exc:
        raise IngestError(f"{name}: cannot open ({exc.strerror})", document=name) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IngestError(f"{name}: not a regular file", document=name)
        if info.st_size > max_bytes:
            raise _too_large(name, info.st_size, max_bytes)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)  # the file may have grown since fstat
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _too_large(name, len(data), max_bytes)
    return data


def _too_large(name: str, size: int, max_bytes: int) -> DocumentTooLarge:
    return DocumentTooLarge(
        f"{name}: {size} bytes is over the {max_bytes}-byte limit", document=name, max_bytes=max_bytes
    )


# --------------------------------------------------------------------------- decoding


def decode_text(data: bytes, *, name: str) -> str:
    """Bytes of a text format to normalised text, or a typed error saying why not."""
    if data.startswith(_UTF16_BOMS):
        text = _decode(data, "utf-16", name)
    else:
        if b"\x00" in data:
            raise BinaryContent(f"{name}: contains NUL bytes, not text", document=name)
        text = _decode(data, "utf-8-sig", name)
    if "\x00" in text:
        raise BinaryContent(f"{name}: contains NUL characters, not text", document=name)
    controls = len(_CONTROL.findall(text))
    if text and controls / len(text) > MAX_CONTROL_CHAR_RATIO:
        raise BinaryContent(f"{name}: {controls} of {len(text)} characters are control codes", document=name)
    return normalize_text(text)


def _decode(data: bytes, encoding: str, name: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UndecodableText(
            f"{name}: not valid {exc.encoding.upper()} text (byte {exc.start}); re-save it as UTF-8",
            document=name,
        ) from None


def normalize_text(text: str) -> str:
    """NFC, `\n` line ends, no stray control characters or BOMs, no trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").replace("\v", "\n")
    text = _CONTROL.sub("", text).replace("\ufeff", "")
    text = unicodedata.normalize("NFC", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


# --------------------------------------------------------------------------- parsing


def parse_document(data: bytes, fmt: str, *, name: str, max_chars: int = 0) -> ParsedDocument:
    """Parse the bytes of one document; `name` appears in every error and is the fallback title. More than
    `max_chars` characters of text (0: no cap) is ExtractedTextTooLarge, raised as soon as it is seen."""
    if fmt not in FORMATS:
        raise UnsupportedFormat(f"{name}: unsupported format {fmt!r}", document=name)
    if fmt == "pdf":
        title, sections = _parse_pdf(data, name, max_chars)
    else:
        text = decode_text(data, name=name)
        match fmt:
            case "txt":
                title, sections = _parse_txt(text)
            case "md":
                title, sections = _parse_markdown(text)
            case "html":
                title, sections = _parse_html(text)
            case _:
                title, sections = _parse_rst(text)
    kept = _merge_same_headings(sections)
    check_chars(sum(len(section.text) for section in kept), max_chars, name)
    if not kept:
        raise EmptyDocument(f"{name}: no text after parsing", document=name)
    title = _one_line(title) or fallback_title(name)
    return ParsedDocument(title=title, format=fmt, sections=kept)


def check_chars(chars: int, max_chars: int, name: str) -> None:
    if max_chars and chars > max_chars:
        raise ExtractedTextTooLarge(
            f"{name}: over {max_chars} characters of text extracted", document=name, limit=max_chars
        )


def fallback_title(name: str) -> str:
    """A title from a document name: its last path component without a supported extension."""
    last = PurePath(name).name or name
    suffix = PurePath(last).suffix.lower()
    return last[: -len(suffix)] if suffix in FORMAT_BY_SUFFIX else last


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _section(headings: Iterable[str], lines: list[str]) -> Section | None:
    text = _tidy("\n".join(lines))
    if not text:
        return None
    return Section(headings=tuple(_one_line(h) for h in headings), text=text)


def _tidy(text: str) -> str:
    """Drop common indentation and runs of blank lines; keep paragraph breaks."""
    text = textwrap.dedent(text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").rstrip()


def _merge_same_headings(sections: Iterable[Section | None]) -> tuple[Section, ...]:
    merged: list[Section] = []
    for section in sections:
        if section is None or not section.text.strip():
            continue
        if merged and merged[-1].headings == section.headings:
            previous = merged.pop()
            section = Section(headings=section.headings, text=f"{previous.text}\n\n{section.text}")
        merged.append(section)
    return tuple(merged)


Parsed = tuple[str, list[Section | None]]


# txt ------------------------------------------------------------------------


def _parse_txt(text: str) -> Parsed:
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    title = ""
    if len(paragraphs) > 1 and _looks_like_title(paragraphs[0]):
        title = paragraphs.pop(0).strip()
    return title, [_section((), "\n\n".join(paragraphs).split("\n"))]


def _looks_like_title(paragraph: str) -> bool:
    line = paragraph.strip()
    return "\n" not in line and len(line) <= TITLE_MAX_CHARS and not line.endswith((".", ",", ";", ":"))


# md -------------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH_START = re.compile(r"^(?: {4}|\t| {0,3}(?:[-+*>]|\d+[.)])(?:\s|$))")
_FRONT_MATTER_TITLE = re.compile(r"""^title:\s*["']?(.*?)["']?\s*$""")


class _Outline:
    """Collects body lines under the current heading path and emits sections as headings change."""

    def __init__(self) -> None:
        self.path: list[tuple[int, str]] = []
        self.body: list[str] = []
        self.sections: list[Section | None] = []
        self.first_heading: dict[int, str] = {}

    def heading(self, level: int, text: str) -> None:
        self.flush()
        text = _one_line(text)
        self.first_heading.setdefault(level, text)
        self.path = [*(entry for entry in self.path if entry[0] < level), (level, text)]

    def flush(self) -> None:
        self.sections.append(_section((text for _, text in self.path), self.body))
        self.body = []


def _parse_markdown(text: str) -> Parsed:
    lines, title = _front_matter(text.split("\n"))
    outline = _Outline()
    fence = ""
    paragraph: list[str] = []  # the open paragraph's lines: a setext underline turns them into a heading
    for line in lines:
        if fence:
            outline.body.append(line)
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = ""
            continue
        if fenced := _FENCE.match(line):
            fence = fenced.group(1)
            paragraph = []
            outline.body.append(line)
        elif atx := _ATX.match(line):
            paragraph = []
            outline.heading(len(atx.group(1)), atx.group(2) or "")
        elif paragraph and _SETEXT.match(line):
            del outline.body[-len(paragraph) :]
            outline.heading(1 if line.strip().startswith("=") else 2, " ".join(paragraph))
            paragraph = []
        elif _THEMATIC_BREAK.match(line):
            paragraph = []
            outline.body.append("")
        elif not line.strip():
            paragraph = []
            outline.body.append(line)
        else:
            if paragraph or not _NOT_PARAGRAPH_START.match(line):
                paragraph.append(line.strip())
            outline.body.append(line)
    outline.flush()
    return title or outline.first_heading.get(1, ""), outline.sections


def _front_matter(lines: list[str]) -> tuple[list[str], str]:
    """Strip a leading YAML front-matter block; return its `title:` if it has one."""
    if not lines or lines[0].strip() != "---":
        return lines, ""
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            title = ""
            for line in lines[1:end]:
                if found := _FRONT_MATTER_TITLE.match(line.strip()):
                    title = found.group(1)
                    break
            return lines[end + 1 :], title
    return lines, ""


# html -----------------------------------------------------------------------

_DROPPED_TAGS = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe", "object"})
_HEADING_TAGS = {f"h{n}": n for n in range(1, 7)}
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "html", "li", "main", "ol",
        "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.outline = _Outline()
        self.title = ""
        self.skipping: list[str] = []
        self.in_title = False
        self.heading_level = 0
        self.heading_text: list[str] = []
        self.pre_depth = 0
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skipping or tag in _DROPPED_TAGS:
            if tag in _DROPPED_TAGS:
                self.skipping.append(tag)
            return
        if tag == "title":
            self.in_title = True
        elif tag in _HEADING_TAGS:
            self._end_paragraph()
            self.heading_level, self.heading_text = _HEADING_TAGS[tag], []
        elif tag == "br":
            self.inline.append("\n")
        elif tag in _BLOCK_TAGS:
            self._end_paragraph()
            if tag == "pre":
                self.pre_depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" and not self.skipping:
            self.inline.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag in self.skipping:
                del self.skipping[self.skipping.index(tag) :]
            return
        if tag == "title":
            self.in_title = False
        elif tag in _HEADING_TAGS and self.heading_level:
            text = _one_line("".join(self.heading_text))
            if text:
                self.outline.heading(self.heading_level, text)
            self.heading_level = 0
        elif tag in _BLOCK_TAGS:
            self._end_paragraph()
            if tag == "pre" and self.pre_depth:
                self.pre_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.in_title:
            self.title += data
        elif self.heading_level:
            self.heading_text.append(data)
        else:
            self.inline.append(data if self.pre_depth else re.sub(r"[ \t\r\n]+", " ", data))

    def _end_paragraph(self) -> None:
        text = "".join(self.inline)
        self.inline = []
        if self.pre_depth:
            paragraph = text.strip("\n").rstrip()
        else:
            paragraph = "\n".join(line.strip() for line in text.split("\n") if line.strip())
        if paragraph.strip():
            self.outline.body.extend([*paragraph.split("\n"), ""])

    def finish(self) -> Parsed:
        self.close()
        self._end_paragraph()
        self.outline.flush()
        return _one_line(self.title) or self.outline.first_heading.get(1, ""), self.outline.sections


def _parse_html(text: str) -> Parsed:
    parser = _HtmlText()
    parser.feed(text)
    return parser.finish()


# rst ------------------------------------------------------------------------

_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}[ \t]*$")  # one punctuation character, 3+ times
_MIN_SHORT_UNDERLINE = 4  # docutils accepts an underline shorter than its title from this length on


def _parse_rst(text: str) -> Parsed:
    lines = text.split("\n")
    styles: list[tuple[str, bool]] = []  # (character, has overline), in order of first appearance
    outline = _Outline()
    i = 0
    while i < len(lines):
        found = _rst_title(lines, i)
        if found is None:
            is_transition = _ADORNMENT.match(lines[i]) and _blank(lines, i - 1) and _blank(lines, i + 1)
            if not is_transition:
                outline.body.append(lines[i])
            i += 1
            continue
        title, style, consumed = found
        if style not in styles:
            styles.append(style)
        outline.heading(styles.index(style) + 1, title)
        i += consumed
    outline.flush()
    return outline.first_heading.get(1, ""), outline.sections


def _blank(lines: list[str], i: int) -> bool:
    return not (0 <= i < len(lines)) or not lines[i].strip()


def _rst_title(lines: list[str], i: int) -> tuple[str, tuple[str, bool], int] | None:
    """A section title starting at line i: (title, style, lines consumed), else None."""
    if not _blank(lines, i - 1) and not (i >= 1 and _ADORNMENT.match(lines[i - 1])):
        return None
    line = lines[i]
    over = _ADORNMENT.match(line)
    if over and i + 2 < len(lines):
        title, under = lines[i + 1].strip(), lines[i + 2].strip()
        is_title = title and not _ADORNMENT.match(lines[i + 1]) and under == line.strip()
        if is_title and len(under) >= len(title):
            return title, (over.group(1), True), 3
    if over or not line.strip() or line[0].isspace() or i + 1 >= len(lines):
        return None
    under_match = _ADORNMENT.match(lines[i + 1])
    if under_match is None:
        return None
    length, title = len(lines[i + 1].strip()), line.strip()
    if length < len(title) and length < _MIN_SHORT_UNDERLINE:
        return None
    return title, (under_match.group(1), False), 2


# pdf ------------------------------------------------------------------------


def _parse_pdf(data: bytes, name: str, max_chars: int) -> Parsed:
    if b"%PDF-" not in data[:PDF_MAGIC_SEARCH_BYTES]:
        raise UndecodableText(f"{name}: not a PDF file (no %PDF- header)", document=name)
    try:
        title, pages = _read_pdf(data, name, max_chars)
    except DocentError:
        raise
    except Exception as exc:  # pypdf raises its own errors and plain ValueError/KeyError on bad input
        raise UndecodableText(
            f"{name}: unreadable PDF ({type(exc).__name__}: {exc})", document=name
        ) from None
    sections: list[Section | None] = [
        _section((f"Page {n}",), normalize_text(page).split("\n")) for n, page in enumerate(pages, start=1)
    ]
    if not any(sections):
        raise EmptyDocument(f"{name}: no extractable text in the PDF (scanned pages need OCR)", document=name)
    return title, sections


def _read_pdf(data: bytes, name: str, max_chars: int) -> tuple[str, list[str]]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise UndecodableText(f"{name}: the PDF is encrypted with a password", document=name)
    metadata = reader.metadata
    title = str(metadata.title or "") if metadata is not None else ""
    pages: list[str] = []
    for page in reader.pages:  # stop at the cap: a few KB of PDF can hold millions of characters
        pages.append(page.extract_text() or "")
        check_chars(sum(map(len, pages)), max_chars, name)
    return title, pages
