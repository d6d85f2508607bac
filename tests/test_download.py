"""The fetcher against a real HTTP server on 127.0.0.1: every failure lands on its error kind,
is retried only when a retry can help, and never raises.

The bad-input corpus covers these through the whole pipeline; here each limit is pinned down
directly (which kind, how many attempts, that a good body survives threads and `close()`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from data.http_server import ImageServer, Route, closed_port

from r2d2.data.download import DownloadConfig, Fetcher

BODY = bytes(range(256)) * 40  # 10 kB


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    routes = {
        "/ok.jpg": Route(body=BODY, content_type="image/jpeg"),
        "/octet": Route(body=BODY, content_type="application/octet-stream"),
        "/typed": Route(body=BODY, content_type="image/png; charset=binary"),
        "/html": Route(body=b"<html>" * 2000, content_type="text/html"),
        "/e500": Route(status=500, body=b""),
        "/e429": Route(status=429, body=b"slow down"),
        "/e403": Route(status=403, body=b"no"),
        "/flaky": Route(body=BODY, fail_first=2),
        "/slow": Route(body=BODY, delay=2.5),
        "/drip": Route(body=BODY, drip=0.3),  # 10 pieces, 3 s: no gap > read timeout, but over the total
        "/big": Route(body=BODY * 4),
        "/big-chunked": Route(body=BODY * 4, content_length=-1),
        "/lying": Route(body=BODY, content_length=len(BODY) + 500),
        "/r1": Route(status=302, location="/r2", content_type="text/html"),
        "/r2": Route(status=301, location="/ok.jpg", content_type="text/html"),
        "/loop": Route(status=302, location="/loop", content_type="text/html"),
        "/no-location": Route(status=302, content_type="text/html"),
        "/to-file": Route(status=302, location="file:///etc/passwd", content_type="text/html"),
        "/to-ftp": Route(status=302, location="ftp://127.0.0.1/a.png", content_type="text/html"),
    }
    with ImageServer(routes) as server:
        yield server


def cfg(**kw: object) -> DownloadConfig:
    base = {"connect_timeout": 1.0, "read_timeout": 1.0, "total_timeout": 2.0, "retries": 2, "backoff": 0.01,
            "max_redirects": 3, "max_bytes": 20_000}
    return DownloadConfig.model_validate({**base, **kw})


@pytest.mark.parametrize("path", ["/ok.jpg", "/octet", "/typed", "/r1"])
def test_good_bodies(srv: ImageServer, path: str) -> None:
    with Fetcher(cfg()) as f:
        got = f.fetch("url", srv.url(path))
    assert (got.data, got.error_kind, got.attempts) == (BODY, None, 1)


@pytest.mark.parametrize(("path", "kind", "attempts"), [
    ("/missing", "http_status", 1),  # 404 is final
    ("/e403", "http_status", 1),
    ("/e500", "http_status", 3),  # 5xx and 429 may pass: retried
    ("/e429", "http_status", 3),
    ("/html", "content_type", 1),
    ("/slow", "timeout", 3),  # no byte within read_timeout
    ("/drip", "timeout", 3),  # bytes keep coming, but not within total_timeout
    ("/big", "too_large", 1),  # Content-Length over max_bytes
    ("/big-chunked", "too_large", 1),  # no Content-Length: counted while reading
    ("/lying", "connection", 3),  # body shorter than announced
    ("/loop", "too_many_redirects", 1),
    ("/no-location", "too_many_redirects", 1),
    ("/to-file", "unsupported_source", 1),  # a redirect never leaves http(s)
    ("/to-ftp", "unsupported_source", 1),
])
def test_failures_have_their_kind(srv: ImageServer, path: str, kind: str, attempts: int) -> None:
    with Fetcher(cfg()) as f:
        got = f.fetch("url", srv.url(path))
    assert (got.data, got.error_kind, got.attempts) == (None, kind, attempts), got.detail
    assert got.detail


def test_unreachable_host_is_a_retried_connection_error() -> None:
    with Fetcher(cfg(retries=1)) as f:
        got = f.fetch("url", f"http://127.0.0.1:{closed_port()}/a.jpg")
    assert (got.error_kind, got.attempts) == ("connection", 2)


def test_retry_then_success_counts_attempts(srv: ImageServer) -> None:
    srv.hits.pop("/flaky", None)
    with Fetcher(cfg()) as f:
        got = f.fetch("url", srv.url("/flaky"))
    assert (got.data, got.attempts, srv.hits["/flaky"]) == (BODY, 3, 3)


def test_error_bodies_are_not_downloaded(srv: ImageServer) -> None:
    # /html is 12 kB, under max_bytes: the type check, not the size limit, must stop it early.
    with Fetcher(cfg(max_bytes=10**6)) as f:
        started = time.perf_counter()
        got = f.fetch("url", srv.url("/html"))
    assert got.error_kind == "content_type" and "text/html" in got.detail
    assert time.perf_counter() - started < 1.0


def test_threads_share_nothing_and_close_is_final(srv: ImageServer) -> None:
    f = Fetcher(cfg())
    urls = [srv.url(p) for p in ("/ok.jpg", "/octet", "/r1", "/missing")] * 25
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda u: f.fetch("url", u), urls))
    assert [g.data for g in got] == [None if u.endswith("/missing") else BODY for u in urls]
    f.close()
    assert f.fetch("url", srv.url("/ok.jpg")).data == BODY  # a fresh handle after close()
    f.close()


def test_non_http_sources(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(BODY)
    with Fetcher(cfg()) as f:
        assert f.fetch("path", str(tmp_path / "a.jpg")).data == BODY
        assert f.fetch("path", str(tmp_path / "b.jpg")).error_kind == "missing_file"
        assert f.fetch("url", "ftp://127.0.0.1/a.jpg").error_kind == "unsupported_source"
        assert f.fetch("other", "x").error_kind == "unsupported_source"


def _self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by its own key: (cert PEM, key PEM) paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "r2d2 test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_https_verifies_certificates(tmp_path: Path) -> None:
    """An untrusted certificate is a final `connection` error; trusted through `ca_bundle`, the image arrives."""
    cert, key = _self_signed(tmp_path)
    with ImageServer({"/ok.jpg": Route(body=BODY, content_type="image/jpeg")}, tls=(cert, key)) as server:
        url = server.url("/ok.jpg")
        assert url.startswith("https://")
        with Fetcher(cfg()) as f:
            got = f.fetch("url", url)
        assert (got.data, got.error_kind, got.attempts) == (None, "connection", 1), got.detail
        assert "certificate" in got.detail.lower()
        with Fetcher(cfg(ca_bundle=cert)) as f:
            assert f.fetch("url", url).data == BODY
