"""Fetch image bytes from http(s) URLs, local paths or inline base64 (Chinese-CLIP TSV lines).

Web corpora rot: hosts vanish, links redirect in loops, servers answer HTML error pages with
status 200, some send gigabytes. Every fetch is bounded (connect/read/total timeouts, redirect
limit, byte limit, content-type check) and retried with exponential backoff only when a retry
can help (timeouts, connection errors, 5xx/429). A failure comes back as an error kind plus the
number of attempts, for the failure ledger; it never raises.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import certifi
import pycurl
from pydantic import BaseModel, ConfigDict, Field

ERROR_KINDS = (
    "http_status", "timeout", "connection", "too_many_redirects", "too_large", "content_type",
    "missing_file", "inline_missing", "inline_base64", "unsupported_source", "error",
)


class DownloadConfig(BaseModel):
    """`snapshot.download:` in params.yaml."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(16, gt=0)  # images fetched and decoded at once (threads)
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(10.0, gt=0)  # per socket read
    total_timeout: float = Field(30.0, gt=0)  # whole body, against slow-drip servers
    retries: int = Field(2, ge=0)  # extra attempts after the first, for retriable errors only
    backoff: float = Field(0.5, ge=0)  # seconds; doubles per attempt, with jitter
    backoff_max: float = Field(8.0, ge=0)
    max_redirects: int = Field(5, ge=0)
    max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    content_types: list[str] = Field(default_factory=lambda: ["image/", "application/octet-stream", "binary/octet-stream"])
    user_agent: str = "r2d2-pipeline/0.1 (image-text research)"
    # PEM file of the CAs to trust instead of certifi's bundle (a private CA, a TLS-inspecting proxy).
    ca_bundle: str | None = None


@dataclass
class Fetched:
    """Bytes of one image, or why there are none (`error_kind` in ERROR_KINDS) after `attempts` tries."""

    data: bytes | None
    error_kind: str | None = None
    detail: str = ""
    attempts: int = 1


class FetchError(Exception):
    def __init__(self, kind: str, detail: str, retriable: bool = False) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.retriable = kind, detail, retriable


# Offsets of image ids in Chinese-CLIP TSVs, shared by every Fetcher of this process: the TSV is
# scanned once, then each image is read with one seek.
_TSV_INDEX: dict[tuple[str, float], dict[str, int]] = {}
_TSV_LOCK = threading.Lock()


def tsv_index(path: str) -> dict[str, int]:
    key = (path, os.path.getmtime(path))
    with _TSV_LOCK:
        if key not in _TSV_INDEX:
            index: dict[str, int] = {}
            with open(path, "rb") as fh:
                offset = 0
                for line in fh:
                    tab = line.find(b"\t")
                    if tab > 0:
                        index.setdefault(line[:tab].decode("utf-8", "replace").strip(), offset)
                    offset += len(line)
            _TSV_INDEX[key] = index
        return _TSV_INDEX[key]


class Fetcher:
    """Thread-safe fetcher: one libcurl handle per download thread, closed by `close()`.

    libcurl (through pycurl) rather than urllib3: on the shard writer's 2-core benchmark urllib3
    spent ~0.6 ms of Python CPU per 30 kB image (16 threads), pycurl ~0.1 ms, because the
    request, redirects, timeouts and body reads run in C with the GIL released. Each handle
    keeps its own keep-alive connections, so a thread re-uses its socket to the same host.
    """

    def __init__(self, cfg: DownloadConfig | None = None) -> None:
        self.cfg = cfg or DownloadConfig()
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every thread's handle and its pooled sockets now, not at garbage collection."""
        with self._lock:
            handles, self._handles, self._local = self._handles, [], threading.local()
        for c in handles:
            c.close()

    def fetch(self, image_source: str, ref: str) -> Fetched:
        attempts = 0
        while True:
            attempts += 1
            try:
                return Fetched(self._once(image_source, ref), attempts=attempts)
            except FetchError as err:
                if not err.retriable or attempts > self.cfg.retries:
                    return Fetched(None, err.kind, err.detail, attempts)
            except Exception as err:  # noqa: BLE001 - a bug in one fetch must not stop the shard
                return Fetched(None, "error", f"{type(err).__name__}: {err}", attempts)
            delay = min(self.cfg.backoff_max, self.cfg.backoff * 2 ** (attempts - 1))
            time.sleep(delay * (0.5 + random.random() / 2))

    def _once(self, image_source: str, ref: str) -> bytes:
        if image_source == "url":
            if not ref.lower().startswith(("http://", "https://")):
                raise FetchError("unsupported_source", f"not an http(s) URL: {ref[:80]}")
            return self._http(ref)
        if image_source == "path":
            return self._path(ref)
        if image_source == "inline":
            return self._inline(ref)
        raise FetchError("unsupported_source", f"unknown image_source {image_source!r}")

    def _path(self, ref: str) -> bytes:
        p = Path(ref)
        if not p.is_file():
            raise FetchError("missing_file", f"no such file: {ref}")
        size = p.stat().st_size
        if size > self.cfg.max_bytes:
            raise FetchError("too_large", f"{size} bytes > max {self.cfg.max_bytes}")
        return p.read_bytes()

    def _inline(self, ref: str) -> bytes:
        tsv, _, image_id = ref.rpartition("#")
        if not tsv or not os.path.isfile(tsv):
            raise FetchError("inline_missing", f"no images TSV {tsv!r}")
        offset = tsv_index(tsv).get(image_id)
        if offset is None:
            raise FetchError("inline_missing", f"image id {image_id} not in {tsv}")
        with open(tsv, "rb") as fh:
            fh.seek(offset)
            line = fh.readline()
        payload = line.split(b"\t", 1)[1].strip() if b"\t" in line else b""
        if len(payload) * 3 // 4 > self.cfg.max_bytes:
            raise FetchError("too_large", f"inline image over {self.cfg.max_bytes} bytes")
        try:  # strict: a non-base64 character is an error, not silently skipped
            std = payload.translate(bytes.maketrans(b"-_", b"+/"))
            return base64.b64decode(std + b"=" * (-len(std) % 4), validate=True)
        except (binascii.Error, ValueError) as err:
            raise FetchError("inline_base64", f"bad base64 for image id {image_id}: {err}") from None

    def _curl(self) -> pycurl.Curl:
        c = getattr(self._local, "curl", None)
        if c is not None:
            return c
        cfg, c = self.cfg, pycurl.Curl()
        web = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
        for opt, value in (
            (pycurl.NOSIGNAL, 1),  # no SIGALRM for DNS timeouts: required with threads
            (pycurl.PROTOCOLS, web), (pycurl.REDIR_PROTOCOLS, web),  # a redirect never reaches file:// or ftp://
            (pycurl.FOLLOWLOCATION, 1), (pycurl.MAXREDIRS, cfg.max_redirects),
            (pycurl.CONNECTTIMEOUT_MS, int(cfg.connect_timeout * 1000)),
            (pycurl.TIMEOUT_MS, int(cfg.total_timeout * 1000)),  # whole transfer, against slow-drip servers
            # No byte for read_timeout seconds (whole seconds only: libcurl's low-speed check).
            (pycurl.LOW_SPEED_LIMIT, 1), (pycurl.LOW_SPEED_TIME, max(1, math.ceil(cfg.read_timeout))),
            (pycurl.MAXFILESIZE_LARGE, cfg.max_bytes),  # a larger Content-Length fails before the body
            (pycurl.BUFFERSIZE, 64 * 1024), (pycurl.USERAGENT, cfg.user_agent),
            (pycurl.PROXY, ""),  # as before (urllib3 PoolManager): proxy variables are not used
        ):
            c.setopt(opt, value)
        # certifi: the CA bundle requests uses, not a path fixed when the libcurl wheel was built.
        c.setopt(pycurl.CAINFO, cfg.ca_bundle or certifi.where())
        with self._lock:
            self._handles.append(c)
        self._local.curl = c
        return c

    def _http(self, url: str) -> bytes:
        c, body = self._curl(), _Body(self.cfg)
        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.HEADERFUNCTION, body.headers.append)  # C-level append: no Python call per line
        c.setopt(pycurl.WRITEFUNCTION, body.write)
        try:
            c.perform()
        except pycurl.error as err:
            raise body.error or _classify(*err.args) from None
        if body.error is None:  # no body at all (e.g. a bare 500): the checks never ran
            body.check(c.getinfo(pycurl.RESPONSE_CODE), c.getinfo(pycurl.CONTENT_TYPE) or "")
        if body.error is not None:
            raise body.error
        return b"".join(body.chunks)


class _Body:
    """Collects one response body; checks status and Content-Type on the first chunk.

    The check runs before the body is read, so a 404 page or an HTML answer is not downloaded.
    libcurl forbids `getinfo` while a transfer runs, so status and type come from the header
    lines of the last response (redirect responses come first in the list).
    """

    def __init__(self, cfg: DownloadConfig) -> None:
        self.cfg = cfg
        self.headers: list[bytes] = []
        self.chunks: list[bytes] = []
        self.total = 0
        self.error: FetchError | None = None
        self.checked = False

    def write(self, chunk: bytes) -> int | None:
        if not self.checked:
            status, ctype = _last_response(self.headers)
            if not self.check(status, ctype):
                return 0  # aborts the transfer (CURLE_WRITE_ERROR); `error` says why
        self.total += len(chunk)
        if self.total > self.cfg.max_bytes:
            self.error = FetchError("too_large", f"body over {self.cfg.max_bytes} bytes")
            return 0
        self.chunks.append(chunk)
        return None

    def check(self, status: int, ctype: str) -> bool:
        self.checked = True
        if status >= 400:
            self.error = FetchError("http_status", f"HTTP {status}", retriable=status >= 500 or status == 429)
        elif 300 <= status < 400:
            self.error = FetchError("too_many_redirects", f"HTTP {status} without a usable Location")
        else:
            ctype = ctype.split(";")[0].strip().lower()
            if not any(ctype.startswith(t) for t in self.cfg.content_types):
                self.error = FetchError("content_type", f"Content-Type {ctype or '(none)'} is not an image")
        return self.error is None


def _last_response(lines: list[bytes]) -> tuple[int, str]:
    """(status, Content-Type) of the last response in libcurl's header lines."""
    status, ctype = 0, ""
    for line in lines:
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            status, ctype = (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), ""
        elif line[:13].lower() == b"content-type:":
            ctype = line[13:].decode("latin-1").strip()
    return status, ctype


# libcurl error codes by what a retry can do about them.
_RETRIABLE_CONNECTION = {
    pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY, pycurl.E_COULDNT_CONNECT, pycurl.E_SEND_ERROR,
    pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING, pycurl.E_PARTIAL_FILE, 8,  # 8: CURLE_WEIRD_SERVER_REPLY
    pycurl.E_SSL_CONNECT_ERROR, pycurl.E_HTTP2, 92,  # 92: CURLE_HTTP2_STREAM; neither has a pycurl name
}
_FINAL = {
    pycurl.E_TOO_MANY_REDIRECTS: "too_many_redirects", pycurl.E_FILESIZE_EXCEEDED: "too_large",
    pycurl.E_UNSUPPORTED_PROTOCOL: "unsupported_source", pycurl.E_URL_MALFORMAT: "unsupported_source",
    pycurl.E_PEER_FAILED_VERIFICATION: "connection",  # a bad certificate stays bad
}


def _classify(code: int, message: str) -> FetchError:
    text = f"curl error {code}: {message}"
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return FetchError("timeout", text, retriable=True)
    if code in _RETRIABLE_CONNECTION:
        return FetchError("connection", text, retriable=True)
    return FetchError(_FINAL.get(code, "error"), text)
