"""Watching a real run: SSE with a disconnect and a resume, `ftctl jobs logs --follow`, the webhook, the CSV.

One 12-step job per database is followed live by all of them at once, as users would.
"""

import base64
import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from standardwebhooks import Webhook

from app.jobs.webhooks import verify_signature
from ftctl.jobs import SseEvent, iter_sse
from tests.integration.conftest import ONE_DATABASE, Stack
from tests.integration.test_end_to_end import qlora_spec, quotes_jsonl
from tests.webhook_receiver import Received, WebhookReceiver

pytestmark = ONE_DATABASE

# The stack fixture hands the test environment to the API and worker it starts; set before it does.
WEBHOOK_SECRET = os.environ.setdefault("FT_WEBHOOK_SECRET", "integration-test-webhook-secret")
STEPS = 12
SSE_TIMEOUT = httpx.Timeout(30, read=120)  # a stream that never ends fails the test instead of hanging it


def read_events(
    stack: Stack, job_id: str, last_id: str | None = None, until: Callable[[SseEvent], bool] = lambda _: False, **params
) -> tuple[list[SseEvent], bool]:
    """Events until `until` says stop (we hang up) or the server ends the stream; returns (events, server_ended)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    got: list[SseEvent] = []
    with stack.client.stream(
        "GET", f"/jobs/{job_id}/events", headers=headers, params=params, timeout=SSE_TIMEOUT
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in iter_sse(response.iter_lines()):
            got.append(event)
            if until(event):
                return got, False
    return got, True


def metric_steps(events: list[SseEvent]) -> list[int]:
    return [e.json()["step"] for e in events if e.event == "metric"]


def stream_order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class FollowedJob:
    job: dict
    before_hangup: list[SseEvent]
    after_resume: list[SseEvent]
    server_ended: bool
    cli_returncode: int
    cli_output: str
    webhooks: list[Received]


@pytest.fixture(scope="module")
def followed(stack: Stack) -> Iterator[FollowedJob]:
    """Submit a job with a webhook; follow it with the CLI, and over SSE hanging up at step 4 and resuming."""
    dataset = stack.upload("quotes.jsonl", quotes_jsonl())
    with WebhookReceiver(statuses=[500]) as receiver:  # the first delivery fails: it must be retried
        spec = qlora_spec(dataset["id"], max_steps=STEPS, eval_every_steps=4)
        job = stack.client.post("/jobs", json={**spec, "webhook_url": receiver.url}).json()
        env = {**stack.local.env, "FT_API_URL": stack.local.base_url, "FT_API_KEY": stack.key}
        cli = subprocess.Popen(
            [sys.executable, "-m", "ftctl.main", "jobs", "logs", job["id"], "--follow"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        first, _ = read_events(stack, job["id"], until=lambda e: e.event == "metric" and e.json()["step"] >= 4)
        rest, ended = read_events(stack, job["id"], last_id=first[-1].id)
        output, _ = cli.communicate(timeout=300)
        deadline = time.monotonic() + 60
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield FollowedJob(stack.wait(job["id"]), first, rest, ended, cli.returncode, output, list(receiver.received))


def test_sse_follows_a_live_run_through_a_reconnect_without_missing_a_step(followed: FollowedJob) -> None:
    assert followed.job["status"] == "succeeded", followed.job["error"]
    assert followed.server_ended, "the stream ends by itself once the job has ended"
    events = followed.before_hangup + followed.after_resume
    assert metric_steps(events) == list(range(1, STEPS + 1)), "every step once, in order, across the reconnect"
    ids = [stream_order(e.id) for e in events]
    assert ids == sorted(set(ids)), "ids increase and nothing is sent twice"
    statuses = [e.json()["status"] for e in events if e.event == "status"]
    assert statuses[0] == "running" and statuses[-1] == "succeeded"
    assert events[-1].event == "status", "the outcome is the last event"
    assert [e.json()["step"] for e in events if e.event == "eval"] == [4, 8, 12]
    point = next(e.json() for e in events if e.event == "metric")
    assert {"step", "total_steps", "loss", "learning_rate", "eta_seconds", "num_tokens"} <= point.keys()


def test_sse_replays_a_finished_job_and_resumes_from_any_event(stack: Stack, followed: FollowedJob) -> None:
    job_id = followed.job["id"]
    replay, ended = read_events(stack, job_id)
    assert ended and metric_steps(replay) == list(range(1, STEPS + 1))
    assert replay[-1].event == "status" and replay[-1].json()["status"] == "succeeded"
    middle = next(e for e in replay if e.event == "metric" and e.json()["step"] == 7)
    resumed, ended = read_events(stack, job_id, last_id=middle.id)
    assert ended and metric_steps(resumed) == list(range(8, STEPS + 1))
    by_query, _ = read_events(stack, job_id, after=middle.id)  # for clients that cannot set headers
    assert [e.id for e in by_query] == [e.id for e in resumed]
    tail, ended = read_events(stack, job_id, last_id=replay[-1].id)
    assert ended and [e.event for e in tail] == ["status"] and tail[0].id is None, "the outcome, from the record"


def test_sse_refuses_strangers_and_bad_ids(stack: Stack, followed: FollowedJob) -> None:
    job_id = followed.job["id"]
    with stack.anonymous() as anonymous:
        assert anonymous.get(f"/jobs/{job_id}/events").status_code == 401
    with stack.client_for(stack.make_key("someone-else")) as stranger:
        response = stranger.get(f"/jobs/{job_id}/events")
        assert response.status_code == 404 and "not found" in response.json()["detail"]
    response = stack.client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 422 and "Last-Event-ID" in response.json()["detail"]


def test_cli_follow_shows_step_total_loss_and_eta(followed: FollowedJob) -> None:
    assert followed.cli_returncode == 0, followed.cli_output
    lines = followed.cli_output.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert progress and progress[-1].startswith(f"step {STEPS}/{STEPS} loss ") and " eta " in progress[-1]
    assert len(progress) == STEPS, "one line per step when not on a terminal"
    assert "status succeeded" in lines and lines[-1].startswith(f"job {followed.job['id']} succeeded")


def test_webhook_is_signed_and_retried_after_a_failure(followed: FollowedJob) -> None:
    assert len(followed.webhooks) == 2, "one failed attempt (HTTP 500), then one that landed"
    failed, landed = followed.webhooks
    assert failed.headers["webhook-id"] == landed.headers["webhook-id"] == landed.headers["x-ft-delivery"]
    assert landed.headers["x-ft-event"] == "job.succeeded"
    # A receiver with nothing but the standardwebhooks package; FT_WEBHOOK_SECRET is not whsec_: its bytes are the key.
    body = Webhook(base64.b64encode(WEBHOOK_SECRET.encode()).decode()).verify(landed.body, landed.headers)
    assert body == landed.json()
    signature_ok = verify_signature(  # the deprecated X-FT-Signature, still sent for one release
        WEBHOOK_SECRET, landed.body, landed.headers["x-ft-timestamp"], landed.headers["x-ft-signature"]
    )
    assert signature_ok
    assert body["event"] == "job.succeeded" and body["job"]["id"] == followed.job["id"]
    assert body["job"]["status"] == "succeeded" and body["job"]["progress"]["step"] == STEPS


def test_metrics_as_csv_and_incrementally(stack: Stack, followed: FollowedJob) -> None:
    job_id = followed.job["id"]
    response = stack.client.get(f"/jobs/{job_id}/metrics", params={"format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert f"{job_id}-metrics.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    train = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train] == list(range(1, STEPS + 1))
    assert all(float(r["loss"]) > 0 and int(r["num_tokens"]) > 0 for r in train)
    tokens = [int(r["num_tokens"]) for r in train]
    assert tokens == sorted(tokens), "trained tokens only grow"
    assert [int(r["step"]) for r in rows if r["split"] == "eval"] == [4, 8, 12]
    assert all(float(r["eval_loss"]) > 0 for r in rows if r["split"] == "eval")

    curve = stack.client.get(f"/jobs/{job_id}/metrics", params={"since_step": 9})
    assert [p["step"] for p in curve.json()["train"]] == [10, 11, 12]
    assert [p["step"] for p in curve.json()["eval"]] == [12]
    assert curve.json()["train"][0]["time"].endswith("Z")
    assert "X-Last-Event-ID" in curve.headers
