"""The API's outer HTTP defences: the key checked before a body is read, browser security headers, and docs
pages that load nothing from another origin (in-process: migrated SQLite, a real uvicorn where sockets matter)."""

import re
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.tenants.auth import create_key
from app.web import STATIC_DIR
from tests.inprocess_server import serving

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("/", "/docs", "/redoc")
HUGE = 500_000_000  # under the multipart limit (FT_MAX_UPLOAD_BYTES + framing): only the key can stop it early


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture(scope="module")
def key() -> str:
    with SessionLocal() as session:
        key = create_key(session, "defences", tenant=f"defences-{secrets.token_hex(4)}")
        session.commit()
    return key


def answer_to_a_body_never_sent(base_url: str, path: str, content_type: str, authorization: str | None) -> bytes:
    """Send headers declaring a HUGE body and only its first bytes; return what the server answers meanwhile."""
    head = f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: {content_type}\r\nContent-Length: {HUGE}\r\n"
    if authorization:
        head += f"Authorization: {authorization}\r\n"
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(head.encode() + b"\r\n" + b"--b\r\nContent-Disposition: form-data")
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b"(no answer: the server is waiting for the body)"


def test_a_body_without_a_valid_key_is_refused_before_it_is_read() -> None:
    multipart = "multipart/form-data; boundary=b"
    with serving() as base_url:
        for authorization in (None, "Bearer ft_000000000000_not-a-key", "Basic dXNlcjpwYXNz"):
            started = time.monotonic()
            answer = answer_to_a_body_never_sent(base_url, "/datasets", multipart, authorization)
            assert answer.startswith(b"HTTP/1.1 401"), (authorization, answer[:200])
            assert time.monotonic() - started < 3 and b"www-authenticate: Bearer" in answer, answer[:300]
        openai = answer_to_a_body_never_sent(base_url, "/v1/files", multipart, None)
        assert openai.startswith(b"HTTP/1.1 401") and b"invalid_api_key" in openai, openai[:300]


def test_a_valid_key_lets_the_body_through(key: str) -> None:
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
        upload = client.post("/datasets", files={"file": ("a.jsonl", b'{"text": "hello"}\n')})
        assert upload.status_code == 201, upload.text
        spec = client.post("/jobs/validate", json={"base_model": "tiny", "dataset": "ds_000000000000000000000000"})
        assert spec.status_code == 200 and not spec.json()["ok"], "the spec was read and checked: no 401"
    with TestClient(create_app()) as anonymous:
        assert anonymous.post("/healthz", content=b"x").status_code == 405, "the probes stay public"
        assert anonymous.post("/jobs/job_000000000000000000000000/cancel").status_code == 401, "no body: the route"


def test_every_response_says_nosniff_and_pages_get_a_strict_policy(key: str) -> None:
    with TestClient(create_app()) as client:
        for path in PAGES:
            page = client.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
            policy = page.headers["content-security-policy"]
            assert policy.startswith("default-src 'self';") and "frame-ancestors 'none'" in policy, path
            assert "script-src" not in policy and "'unsafe-eval'" not in policy, "scripts: the API's own files only"
            assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
            assert page.headers["x-content-type-options"] == "nosniff"
        assert "unsafe-inline" not in client.get("/").headers["content-security-policy"]
        assert "unsafe-inline" not in client.get("/docs").headers["content-security-policy"]
        others = [client.get("/healthz"), client.get("/jobs"), client.post("/jobs", json={}), client.get("/ui/app.js")]
        for response in others:
            assert response.headers["x-content-type-options"] == "nosniff", response.request.url
            assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_presigned_downloads_may_be_fetched_from_the_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "storage_backend", "s3")
    monkeypatch.setattr(settings, "s3_presign_downloads", True)
    monkeypatch.setattr(settings, "s3_endpoint_url", "https://minio.internal:9000/path")
    with TestClient(create_app()) as client:
        policy = client.get("/").headers["content-security-policy"]
    assert policy.endswith("; connect-src 'self' https://minio.internal:9000"), policy


def test_docs_pages_load_nothing_from_another_origin() -> None:
    with TestClient(create_app()) as client:
        for path in ("/docs", "/redoc"):
            html = client.get(path).text
            assert "cdn" not in html.lower(), path
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"{path}: an inline script"
            urls = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), (path, urls)
            for url in urls:
                assert client.get(url).status_code == 200, url
        assert client.get("/openapi.json").status_code == 200


def test_the_dashboard_has_no_inline_script_or_style() -> None:
    for page in STATIC_DIR.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page.name
        assert "<style" not in html and " style=" not in html and "onclick=" not in html, page.name
    for script in STATIC_DIR.rglob("*.js"):
        assert 'setAttribute("style"' not in script.read_text(), script.name
