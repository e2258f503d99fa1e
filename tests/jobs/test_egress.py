"""The egress guard against real loopback receivers: refused at submit and at send, pinned to the checked
address, no redirects, one deadline, a capped read; and URLs redacted where they are shown."""

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient

from app.core import egress
from app.core.config import settings
from app.core.db import SessionLocal
from app.main import create_app
from app.spec.job import JobSpec
from app.tenants.auth import create_key
from tests.webhook_receiver import WebhookReceiver
from worker.model_card import write_model_card

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Content-Type": "application/json"}
NOT_PUBLIC = [
    "http://127.0.0.1:8080/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::1]/hook",
    "http://[fd00::1]/hook",
    "http://0.0.0.0/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one number, which getaddrinfo would accept
    "http://localhost:9000/hook",
]


@pytest.fixture(autouse=True)
def no_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "egress_allow", "")


@pytest.fixture
def client() -> Iterator[TestClient]:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    with SessionLocal() as session:
        key = create_key(session, "egress", tenant=f"egress-{secrets.token_hex(4)}")
        session.commit()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def post(url: str, deadline_s: float = 5, cap: int = 65536) -> egress.Reply:
    return egress.post(url, b"{}", HEADERS, deadline_s, cap)


@pytest.mark.parametrize("path", ["/jobs/validate", "/jobs"])
def test_literal_non_public_hosts_are_422_at_submit(client: TestClient, path: str) -> None:
    for url in NOT_PUBLIC:
        spec = {"base_model": "tiny-llama", "dataset": "ds_x", "webhook_url": url}
        response = client.post(path, json=spec)
        assert response.status_code == 422, (url, response.text)
        problem = response.json()["problems"][0]
        assert problem["field"] == "webhook_url" and "FT_EGRESS_ALLOW" in problem["message"], (url, problem)


def test_the_allow_list_lets_an_internal_receiver_through_at_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"base_model": "tiny-llama", "dataset": "ds_x"}
    with pytest.raises(ValueError, match="link-local"):
        JobSpec.model_validate({**base, "webhook_url": "http://169.254.169.254/"})
    monkeypatch.setattr(settings, "egress_allow", "10.1.2.0/24, hooks.internal, 127.0.0.1")
    for url in ("http://10.1.2.3/h", "http://127.0.0.1:9/h", "http://[::ffff:127.0.0.1]/h", "https://example.com/h"):
        assert JobSpec.model_validate({**base, "webhook_url": url}).webhook_url == url
    with pytest.raises(ValueError, match="private"):
        JobSpec.model_validate({**base, "webhook_url": "http://10.1.3.1/h"})
    with pytest.raises(ValueError, match="http:// or https://"):
        JobSpec.model_validate({**base, "webhook_url": "file:///etc/passwd"})
    monkeypatch.setattr(settings, "egress_allow", "10.0.0.0/33")
    with pytest.raises(ValueError, match="FT_EGRESS_ALLOW: '10.0.0.0/33'"):
        egress.check_url("http://10.0.0.1/")


def test_a_loopback_receiver_is_refused_without_the_allow_list_and_reached_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with WebhookReceiver() as receiver:
        with pytest.raises(egress.EgressRefused, match="loopback"):
            post(receiver.url)
        assert receiver.received == []
        monkeypatch.setattr(settings, "egress_allow", "127.0.0.0/8")
        reply = post(receiver.url)
    assert reply.status == 200 and reply.peer == "127.0.0.1" and len(receiver.received) == 1


def test_a_name_that_resolves_to_loopback_is_refused_when_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookReceiver() as receiver:
        by_name = receiver.url.replace("127.0.0.1", "hooks.example.net")
        egress.check_url(by_name)  # a name passes at submit: what it resolves to is only known when sending
        fake_dns(monkeypatch, "hooks.example.net", [["127.0.0.1"]])
        with pytest.raises(egress.EgressRefused, match=r"hooks.example.net resolves to 127\.0\.0\.1, a loopback"):
            post(by_name)
        assert receiver.received == []
        monkeypatch.setattr(settings, "egress_allow", "hooks.example.net")  # a name an operator trusts
        assert post(by_name).status == 200 and len(receiver.received) == 1
    with pytest.raises(egress.EgressRefused, match="loopback name"):
        egress.check_url("http://localhost:9000/hook")


def fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, answers: list[list[str]]) -> list[str]:
    """getaddrinfo answering `name` with the next of `answers` (the last one repeats); other names as usual."""
    real, lookups = socket.getaddrinfo, []

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        if host != name:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        ips = answers[min(len(lookups), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_a_rebinding_name_is_resolved_once_and_only_the_checked_address_is_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "egress_allow", "127.0.0.1/32")  # 127.0.0.2 stands for a private address
    with (
        WebhookReceiver() as checked,
        WebhookReceiver(host="127.0.0.2", port=checked.server.server_address[1]) as inner,
    ):
        lookups = fake_dns(monkeypatch, "rebind.test", [["127.0.0.1"], ["127.0.0.2"]])
        reply = post(checked.url.replace("127.0.0.1", "rebind.test"))
        assert reply.status == 200 and reply.peer == "127.0.0.1"
        assert lookups == ["rebind.test"], "one lookup: the connection goes to the address that was checked"
        assert len(checked.received) == 1 and inner.received == []
        assert checked.received[0].headers["host"] == f"rebind.test:{checked.server.server_address[1]}"
        # An answer naming a public and a private address is refused whole, before any connection.
        fake_dns(monkeypatch, "mixed.test", [["93.184.215.14", "10.0.0.7"]])
        with pytest.raises(egress.EgressRefused, match="10.0.0.7, a private address"):
            post("http://mixed.test/hook")


def test_a_redirect_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "egress_allow", "127.0.0.0/8")
    with WebhookReceiver() as target, WebhookReceiver(redirect_to=target.url) as bouncer:
        assert post(bouncer.url).status == 302
    assert len(bouncer.received) == 1 and target.received == []


def test_a_huge_answer_is_read_only_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "egress_allow", "127.0.0.0/8")
    with WebhookReceiver(body_bytes=2 * 1024**3) as receiver:
        started = time.monotonic()
        reply = post(receiver.url, cap=10_000)
        took = time.monotonic() - started
        time.sleep(0.2)
    assert reply.status == 200 and len(reply.body) == 10_000 and took < 2
    assert receiver.sent_bytes < 256 * 1024**2, "the client hung up instead of draining 2 GiB"


def test_a_trickling_answer_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "egress_allow", "127.0.0.0/8")
    with WebhookReceiver(trickle_s=0.5, trickle_bytes=60) as receiver:  # 30 s of status line, a byte at a time
        started = time.monotonic()
        with pytest.raises(egress.EgressFailed, match="deadline"):
            post(receiver.url, deadline_s=1.5)
        took = time.monotonic() - started
    assert 1.4 < took < 2.5, f"cut after {took:.1f}s, not at the 1.5s deadline"


def test_redact_url_masks_what_may_be_a_secret() -> None:
    assert egress.redact_url("https://h/p?token=abc") == "https://h/p?token=***"
    assert (
        egress.redact_url("https://bob:pw@h.example:8443/a/b?x=1&y=#frag")
        == "https://***@h.example:8443/a/b?x=***&y=***#***"
    )
    slack = "https://hooks.slack.com/services/T0AAAA1/B0BBBB2/abcdEFGH1234ijklMNOP5678"
    assert egress.redact_url(slack) == "https://hooks.slack.com/services/T0AAAA1/B0BBBB2/***"
    assert egress.redact_url("http://[::1]:80/hook") == "http://[::1]:80/hook"
    assert egress.redact_url("http://h:notaport/") == "<unparseable url>"


def test_the_model_card_shows_the_webhook_url_redacted(tmp_path: Path) -> None:
    url = "https://hooks.example.com/ft?token=s3cr3t-value"
    spec = JobSpec.model_validate({"base_model": "tiny-llama", "dataset": "ds_x", "webhook_url": url})
    write_model_card(tmp_path, spec, {"seed": 1}, {"steps": 1}, [(1, 2.0)], "job_" + "1" * 24)
    card = (tmp_path / "README.md").read_text()
    assert "s3cr3t-value" not in card and '"webhook_url": "https://hooks.example.com/ft?token=***"' in card
