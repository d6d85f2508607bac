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
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import urllib3
from pydantic import BaseModel, ConfigDict, Field
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)

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
    """Thread-safe fetcher; one urllib3 pool shared by the download threads."""

    def __init__(self, cfg: DownloadConfig | None = None) -> None:
        self.cfg = cfg or DownloadConfig()
        self.http = urllib3.PoolManager(
            num_pools=64, maxsize=self.cfg.concurrency, headers={"User-Agent": self.cfg.user_agent}
        )

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

    def _http(self, url: str) -> bytes:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.total_timeout
        retry = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=cfg.max_redirects, raise_on_redirect=True)
        try:
            resp = self.http.request(
                "GET", url, preload_content=False, retries=retry,
                timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
            )
        except MaxRetryError as err:
            raise _classify(err.reason) from None
        except Exception as err:  # noqa: BLE001 - urllib3 raises many kinds; classify them
            raise _classify(err) from None
        complete = False
        try:
            if resp.status >= 400:
                raise FetchError("http_status", f"HTTP {resp.status}", retriable=resp.status >= 500 or resp.status == 429)
            if 300 <= resp.status < 400:
                raise FetchError("too_many_redirects", f"HTTP {resp.status} without a usable Location")
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not any(ctype.startswith(t) for t in cfg.content_types):
                raise FetchError("content_type", f"Content-Type {ctype or '(none)'} is not an image")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise FetchError("too_large", f"Content-Length {length} > max {cfg.max_bytes}")
            chunks, total = [], 0
            for chunk in resp.stream(64 * 1024):
                total += len(chunk)
                if total > cfg.max_bytes:
                    raise FetchError("too_large", f"body over {cfg.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"body not complete after {cfg.total_timeout}s", retriable=True)
                chunks.append(chunk)
            complete = True
            return b"".join(chunks)
        except (ReadTimeoutError, ProtocolError, OSError) as err:
            raise _classify(err) from None
        finally:
            if not complete:
                resp.close()
            resp.release_conn()


def _classify(err: BaseException | None) -> FetchError:
    if isinstance(err, FetchError):
        return err
    text = f"{type(err).__name__}: {err}"
    if isinstance(err, ResponseError) and "redirect" in str(err).lower():
        return FetchError("too_many_redirects", text)
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2.x: test it first.
    if isinstance(err, NewConnectionError | ProtocolError | ConnectionError):
        return FetchError("connection", text, retriable=True)
    if isinstance(err, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return FetchError("timeout", text, retriable=True)
    if isinstance(err, OSError):
        return FetchError("connection", text, retriable=True)
    return FetchError("error", text)
