"""The OpenAPI schema a generated client is built from: the bearer scheme from the auth dependency, stable operation
ids, described tags, and an example on every request body that its own schema and the API both accept."""

import re
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from app.core.openapi import OPERATION_ID, OPERATION_IDS, TAGS, derived_operation_id
from app.core.security import install_openapi
from app.inference.evaluations import EvaluationCreate
from app.inference.exports import ExportCreate
from app.inference.generate import GenerateRequest
from app.inference.predict import PredictRequest
from app.main import create_app
from app.openai.schemas import FineTuningJobCreate
from app.serving.schemas import ChatCompletionCreate, CompletionCreate
from app.spec.job import JobSpec
from app.tenants.auth import CallerDep
from app.tenants.endpoints import KeyCreate
from app.tenants.schemas import HubTokenSet, SecretSet

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"/healthz", "/readyz"}
# Every JSON request body that is a model: its example must be one the API accepts, not only one its schema allows.
BODY_MODELS: dict[str, type[BaseModel]] = {
    m.__name__: m
    for m in (
        JobSpec,
        GenerateRequest,
        PredictRequest,
        ExportCreate,
        EvaluationCreate,
        FineTuningJobCreate,
        ChatCompletionCreate,
        CompletionCreate,
        KeyCreate,
        HubTokenSet,
        SecretSet,
    )
}


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app().openapi()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_the_bearer_scheme_is_fastapis_and_only_on_operations_that_take_a_key(schema: dict[str, Any]) -> None:
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer") and "Authorization: Bearer" in scheme["description"]
    for method, path, op in operations(schema):
        assert op.get("security") == (None if path in PUBLIC else [{"bearerAuth": []}]), (method, path)

    # Declared by the dependency, not stamped on every path: a route that takes no key declares no scheme.
    app = FastAPI()

    @app.get("/open")
    def open_route() -> dict:
        return {}

    @app.get("/closed")
    def closed_route(caller: CallerDep) -> dict:
        return {}

    install_openapi(app)
    paths = app.openapi()["paths"]
    assert "security" not in paths["/open"]["get"]
    assert paths["/closed"]["get"]["security"] == [{"bearerAuth": []}]


def test_our_401s_are_unchanged_behind_httpbearer() -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        for authorization, says in [
            (None, "missing API key"),
            ("Basic dXNlcjpwYXNz", "malformed Authorization header"),
            ("Bearer", "malformed Authorization header"),
            ("Bearer not-a-key", "malformed Authorization header"),
            ("Bearer ft_000000000000_not-a-key", "invalid or revoked API key"),
        ]:
            headers = {"Authorization": authorization} if authorization else {}
            answer = client.get("/jobs", headers=headers)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer", authorization
            assert answer.json()["detail"].startswith(says), (authorization, answer.json())


def test_every_operation_has_a_stable_id_of_the_form_domain_verb(schema: dict[str, Any]) -> None:
    ids = {(method.upper(), path): op["operationId"] for method, path, op in operations(schema)}
    assert all(OPERATION_ID.fullmatch(i) for i in ids.values()), [i for i in ids.values() if not OPERATION_ID.match(i)]
    assert len(set(ids.values())) == len(ids), "operation ids must be unique"
    unlisted = sorted(set(ids) - set(OPERATION_IDS))
    assert not unlisted, f"give these routes an id in app/core/openapi.py OPERATION_IDS: {unlisted}"
    assert ids == {key: OPERATION_IDS[key] for key in ids}
    assert {ids[("POST", "/jobs")], ids[("GET", "/jobs/{job_id}")], ids[("GET", "/jobs")]} == {
        "jobs-create",
        "jobs-get",
        "jobs-list",
    }
    assert ids[("POST", "/jobs/{job_id}/cancel")] == "jobs-cancel"
    assert ids[("POST", "/datasets")] == "datasets-upload"
    assert ids[("POST", "/v1/chat/completions")] == "openai-chat-completions-create"
    rebuilt = {(m.upper(), p): op["operationId"] for m, p, op in operations(create_app().openapi())}
    assert rebuilt == ids
    assert len(set(OPERATION_IDS.values())) == len(OPERATION_IDS)


def test_a_route_missing_from_the_table_still_gets_an_id_of_that_form() -> None:
    assert derived_operation_id("GET", "/jobs/{job_id}/widgets") == "jobs-widgets-list"
    assert derived_operation_id("GET", "/jobs/{job_id}/widgets/{widget_id}") == "jobs-widgets-get"
    assert derived_operation_id("POST", "/v1/fine_tuning/alpha") == "openai-fine-tuning-alpha-create"
    assert OPERATION_ID.fullmatch(derived_operation_id("GET", "/"))


def test_every_tag_in_use_is_declared_with_a_description(schema: dict[str, Any]) -> None:
    used = {tag for _, _, op in operations(schema) for tag in op.get("tags", [])}
    declared = [t["name"] for t in schema["tags"]]
    assert declared == [t["name"] for t in TAGS] and len(declared) == len(set(declared))
    assert set(declared) == used, set(declared) ^ used
    assert all(len(t["description"]) > 20 for t in schema["tags"])
    assert declared[:2] == ["datasets", "jobs"]


def body_examples(schema: dict[str, Any], media_type: str, body_schema: dict[str, Any]) -> list[Any]:
    """The examples a reader (or schemathesis) sees: the body schema's own, or for a form one built from its fields'."""
    resolved = resolve(schema, body_schema)
    if media_type == "multipart/form-data":
        fields = resolved["properties"]
        missing = [name for name, field in fields.items() if not field.get("examples")]
        assert not missing, f"form fields without an example: {missing}"
        return [{name: field["examples"][0] for name, field in fields.items()}]
    return resolved.get("examples", [])


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else node


def test_every_request_body_has_an_example_its_schema_and_the_api_accept(schema: dict[str, Any]) -> None:
    checked = 0
    for method, path, op in operations(schema):
        for media_type, content in op.get("requestBody", {}).get("content", {}).items():
            examples = body_examples(schema, media_type, content["schema"])
            assert examples, f"{method} {path} ({media_type}) has no example"
            # "#/components/..." refs resolve against the document validated against: give it the components.
            validator = Draft202012Validator({**content["schema"], "components": schema["components"]})
            for example in examples:
                errors = [e.message for e in validator.iter_errors(example)]
                assert not errors, (method, path, example, errors)
                if media_type == "application/json" and "$ref" in content["schema"]:
                    name = re.sub(r"-Input$", "", content["schema"]["$ref"].rsplit("/", 1)[-1])
                    assert name in BODY_MODELS, f"{method} {path}: add its body model to BODY_MODELS"
                    BODY_MODELS[name].model_validate(example)  # the API accepts it, validators and all
                checked += 1
    assert checked >= 14  # the bodies there are today: none was skipped
