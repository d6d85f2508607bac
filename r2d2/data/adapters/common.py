"""Shared pieces of the corpus adapters: rejects, format errors, streaming JSON/CSV readers.

Adapters never load a file whole. JSON arrays (Zero, WuDaoMM) are split into top-level records
by a small scanner that tracks strings and brackets, so one broken record is quarantined and the
rest of the file is still read; JSON Lines and CSV are read line by line. Bytes that are not UTF-8
are kept as surrogates while scanning and turned into an `encoding` reject for their record only.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SURROGATE = re.compile(r"[\udc80-\udcff]")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_TOKEN = re.compile(r'[\[\]{}",\n]')
_STR_TOKEN = re.compile(r'["\n\\]')
# Where the next record of a JSON array most likely starts after a broken one: `}` `,` `{`.
_RESYNC = re.compile(r"\}\s*,\s*(?=\{)")
RAW_EXCERPT = 500


class FormatError(Exception):
    """The file is not in the format the user named (e.g. a CSV passed as --source zero)."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


@dataclass
class Reject:
    """A record that could not become manifest rows; it goes to quarantine with its rule."""

    line: int
    rules: list[str]
    reason: str
    raw: str = ""
    sample_id: str | None = None
    text: str | None = None
    image_ref: str | None = None


@dataclass
class AdapterContext:
    """What an adapter needs besides the file: where relative image paths live, the license."""

    source: str
    license: str = "unknown"
    base_dir: Path | None = None
    max_record_bytes: int = 1 << 20
    extra: dict[str, Any] = field(default_factory=dict)


def clean(text: str) -> str:
    """Valid UTF-8 for Parquet: undecodable bytes (kept as surrogates) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def excerpt(text: str) -> str:
    text = clean(text)
    return text if len(text) <= RAW_EXCERPT else text[:RAW_EXCERPT] + "…"


def has_bad_bytes(text: str) -> bool:
    return bool(_SURROGATE.search(text))


def short_hash(*parts: str) -> str:
    return hashlib.sha1("\t".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def resolve_image(ref: str, input_path: Path, ctx: AdapterContext) -> tuple[str, str]:
    """Classify an image reference as ("url"|"path", resolved ref).

    http(s) URLs stay URLs; any other scheme (ftp:, javascript:, data:) is also kept as a URL so
    the URL-scheme rule quarantines it with a reason. A relative path is resolved against
    --base-dir, else the input file's folder, else that folder's parent (the demo corpus and
    Zero dumps keep paths relative to the corpus root); the first candidate that exists wins.
    """
    ref = ref.strip()
    if ref.lower().startswith("file://"):
        ref = ref[7:]
    elif _URL_SCHEME.match(ref) and not re.match(r"^[A-Za-z]:[\\/]", ref):
        return "url", ref
    if os.path.isabs(ref):
        return "path", os.path.normpath(ref)
    bases = [ctx.base_dir] if ctx.base_dir is not None else [input_path.parent, input_path.parent.parent]
    candidates = [os.path.normpath(os.path.join(b, ref)) for b in bases]
    for cand in candidates:
        if os.path.exists(cand):
            return "path", cand
    return "path", candidates[0]


def make_row(
    ctx: AdapterContext,
    input_path: Path,
    line: int,
    *,
    sample_id: str,
    image_key: str,
    image_source: str,
    image_ref: str,
    text: str,
    text_kind: str,
) -> dict[str, Any]:
    return {
        "sample_id": sample_id,
        "image_key": image_key,
        "image_source": image_source,
        "image_ref": image_ref,
        "text": text,
        "text_kind": text_kind,
        "source": ctx.source,
        "source_file": str(input_path),
        "source_line": line,
        "license": ctx.license,
    }


def as_text(value: Any) -> str | None:
    """Corpus text fields are strings; numbers are accepted as their string form, None is absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


# --- JSON -------------------------------------------------------------------------------------


def iter_json_records(path: Path, max_record_bytes: int = 1 << 20) -> Iterator[tuple[int, Any, Reject | None]]:
    """Yield (line, parsed record, reject) for each record of a JSON array or JSON Lines file.

    Exactly one of record/reject is meaningful: a reject carries the rule (`malformed_json`,
    `encoding`, `truncated`, `record_too_large`). A file that starts with neither `[` nor `{`
    raises FormatError: it is not JSON at all.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if not head:
        return
    first = head[:1]
    if first == b"{":
        yield from _iter_jsonl(path)
    elif first == b"[":
        yield from _JsonArrayScanner(path, max_record_bytes).records()
    else:
        shown = head.split(b"\n", 1)[0][:60].decode("utf-8", "replace")
        raise FormatError(1, f"expected a JSON array ('[') or JSON Lines ('{{'), found {shown!r}")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any, Reject | None]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                shown = raw.decode("utf-8", "replace")
                yield lineno, None, Reject(lineno, ["encoding"], f"not UTF-8 ({err.reason} at byte {err.start})", excerpt(shown))
                continue
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as err:
                yield lineno, None, Reject(lineno, ["malformed_json"], f"not valid JSON: {err.msg} (column {err.colno})", excerpt(text))


class _JsonArrayScanner:
    """Split a (possibly huge, possibly damaged) top-level JSON array into record texts."""

    CHUNK = 1 << 20

    def __init__(self, path: Path, max_record_bytes: int) -> None:
        self.fh = open(path, "rb")  # noqa: SIM115 - closed in records()
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False
        self.limit = max_record_bytes

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.fh.read(self.CHUNK)
        if not data:
            self.eof = True
            self.buf += self.dec.decode(b"", final=True)
            return False
        self.buf += self.dec.decode(data)
        return True

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def _peek(self) -> str | None:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n\ufeff":
                self._advance(self.pos + 1)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return None

    def records(self) -> Iterator[tuple[int, Any, Reject | None]]:
        try:
            self._peek()
            self._advance(self.pos + 1)  # the opening '['
            while True:
                c = self._peek()
                if c is None or c == "]":
                    return
                if c == ",":
                    self._advance(self.pos + 1)
                    continue
                if self.pos > self.CHUNK:  # drop what was consumed, keep memory bounded
                    self.buf, self.pos = self.buf[self.pos :], 0
                yield self._element()
        finally:
            self.fh.close()

    def _element(self) -> tuple[int, Any, Reject | None]:
        start, line = self.pos, self.line
        depth, in_str, i = 0, False, self.pos
        problem: tuple[str, str] | None = None
        while True:
            m = (_STR_TOKEN if in_str else _TOKEN).search(self.buf, i)
            if m is None or (m.group() == "\\" and m.end() >= len(self.buf)):
                if i - start > self.limit:
                    problem = ("record_too_large", f"record longer than {self.limit} characters")
                    break
                if not self._more():
                    text = self.buf[start:]
                    self._advance(len(self.buf))
                    return line, None, Reject(line, ["truncated"], "end of file inside a record", excerpt(text))
                continue
            tok, i = m.group(), m.end()
            if in_str:
                if tok == "\\":
                    i += 1
                elif tok == '"':
                    in_str = False
                else:
                    problem = ("malformed_json", "unterminated string (a raw line break inside a string)")
                    break
            elif tok == '"':
                in_str = True
            elif tok in "{[":
                depth += 1
            elif tok in "}]":
                depth -= 1
                if depth == 0:
                    end = i
                    break
                if depth < 0:  # a scalar element directly followed by the array's ']'
                    end = i - 1
                    break
            elif depth == 0:  # ',' or newline after a scalar element
                end = i - 1
                break
        if problem is not None:
            return self._resync(start, line, start + 1, *problem)
        text = self.buf[start:end]
        self._advance(end)
        if has_bad_bytes(text):
            return line, None, Reject(line, ["encoding"], "record contains bytes that are not UTF-8", excerpt(text))
        try:
            return line, json.loads(text), None
        except json.JSONDecodeError as err:
            return line, None, Reject(line, ["malformed_json"], f"not valid JSON: {err.msg}", excerpt(text))

    def _resync(self, start: int, line: int, i: int, rule: str, reason: str) -> tuple[int, Any, Reject]:
        """Skip a broken record up to the next `},{` boundary and report it."""
        while True:
            m = _RESYNC.search(self.buf, i)
            if m is not None:
                text, nxt = self.buf[start : m.start() + 1], m.end()
                break
            if not self._more():
                text, nxt = self.buf[start:], len(self.buf)
                break
        self._advance(nxt)
        return line, None, Reject(line, [rule], reason, excerpt(text))


# --- CSV --------------------------------------------------------------------------------------


def iter_csv_rows(path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str] | None, Reject | None]]:
    """Yield (line, fields, reject) for each CSV row, header included; bad rows become rejects."""
    csv.field_size_limit(1 << 24)
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield line, None, Reject(line, ["malformed_csv"], f"CSV error: {err}")
                continue
            if not fields:
                continue
            if any(has_bad_bytes(f) for f in fields):
                shown = delimiter.join(fields)
                yield line, None, Reject(line, ["encoding"], "row contains bytes that are not UTF-8", excerpt(shown))
                continue
            yield line, fields, None
