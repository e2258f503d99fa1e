"""Typed errors from both error bodies the API has sent: RFC 9457 problem details and the older `{"detail"}`."""

import httpx
import pytest
from finetune_client import FinetuneError, Invalid, NotFound, RateLimited, ServerError
from finetune_client.errors import error_from_response

from app.main import create_app

REQUEST = httpx.Request("GET", "http://api.test/jobs/job_x")


def response(status: int, body: object, content_type: str = "application/json", **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Response(200, json=body).content
    return httpx.Response(status, content=content, headers={"content-type": content_type, **headers}, request=REQUEST)


def test_problem_details_keep_type_title_instance_and_problems() -> None:
    problem = {
        "type": "https://finetune.example/problems/invalid",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "training.max_steps: must be positive",
        "instance": "/jobs",
        "problems": [{"field": "training.max_steps", "message": "must be positive"}],
    }
    error = error_from_response(response(422, problem, "application/problem+json"))
    assert isinstance(error, Invalid) and error.status == 422
    assert error.detail == "training.max_steps: must be positive" and error.problems[0]["field"] == "training.max_steps"
    assert (error.type, error.title, error.instance) == (problem["type"], "Unprocessable Content", "/jobs")


def test_the_older_detail_body_and_the_limit_fields_of_a_429() -> None:
    missing = error_from_response(response(404, {"detail": "job job_x not found"}))
    assert isinstance(missing, NotFound) and str(missing) == "HTTP 404: job job_x not found" and missing.type is None
    limited = error_from_response(
        response(429, {"detail": "5 jobs a minute", "limit": "submit_rate", "allowed": 5}, **{"Retry-After": "12"})
    )
    assert isinstance(limited, RateLimited) and limited.retry_after == 12 and limited.body["allowed"] == 5


@pytest.mark.parametrize(
    ("status", "body", "kind", "detail"),
    [
        (502, b"<html>Bad Gateway</html>", ServerError, "<html>Bad Gateway</html>"),  # a proxy's page
        (400, {"error": {"message": "bad model", "type": "invalid_request_error"}}, FinetuneError, "bad model"),
        (422, {"detail": [{"msg": "field required"}, {"msg": "too long"}]}, Invalid, "field required; too long"),
    ],
)
def test_bodies_from_elsewhere_still_give_a_readable_detail(status: int, body: object, kind: type, detail: str) -> None:
    error = error_from_response(response(status, body, "text/html" if isinstance(body, bytes) else "application/json"))
    assert type(error) is kind and error.detail == detail


def test_what_the_running_api_sends_reads_as_a_typed_error() -> None:
    """Whatever shape the API's handlers render today (problem+json or not), the client reads it the same."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(), raise_server_exceptions=False) as api:
        sent = api.get("/jobs/job_x")
    error = error_from_response(httpx.Response(sent.status_code, content=sent.content, headers=sent.headers))
    assert error.status == 401 and "Authorization: Bearer" in error.detail
