"""The /v1 mapping without a server: OpenAI requests -> job specs, jobs -> OpenAI objects, events, error bodies."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.db import SessionLocal
from app.core.errors import Invalid, install_error_handlers, openai_error
from app.jobs import endpoints as jobs
from app.models import Artifact, Job, MetricPoint
from app.openai import endpoints as openai_compat
from app.openai.events import (
    CHECKPOINT,
    FINISHED,
    TRAINING,
    event_id,
    message_events,
    metrics_event,
    parse_event_id,
)
from app.openai.schemas import FineTuningJobCreate
from app.openai.service import fine_tuned_model_name, job_object, request_param, unix
from app.openai.spec import build_spec, deep_merge, job_hyperparameters, metadata_overrides

CHAT = ["messages"]
PROMPT_COMPLETION = ["prompt", "completion"]
T0 = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)


def request(**fields: Any) -> FineTuningJobCreate:
    return FineTuningJobCreate.model_validate({"model": "tiny-llama", "training_file": "ds_train", **fields})


def param_of(excinfo: pytest.ExceptionInfo[Invalid]) -> str | None:
    return excinfo.value.extra.get("param")


def test_chat_and_prompt_completion_files_map_onto_our_formats() -> None:
    chat = build_spec(request(), CHAT, None, {})
    assert chat.format.model_dump() == {
        "type": "chat",
        "field": "messages",
        "tools": "tools",  # the row's tools go to the chat template, as OpenAI's do
        "chat_template": None,
        "train_on_inputs": False,
    }
    assert chat.base_model == "tiny-llama" and chat.dataset == "ds_train"
    pc = build_spec(request(validation_file="ds_valid"), PROMPT_COMPLETION, PROMPT_COMPLETION, {})
    assert pc.format.model_dump() == {
        "type": "prompt_completion",
        "prompt": "{prompt}",
        "completion": "{completion}",
        "train_on_inputs": False,
    }
    assert pc.validation_dataset == "ds_valid"


def test_files_of_another_shape_are_refused_naming_the_file() -> None:
    with pytest.raises(Invalid) as excinfo:
        build_spec(request(), ["quote", "tags"], None, {})
    assert param_of(excinfo) == "training_file" and "quote, tags" in excinfo.value.detail
    with pytest.raises(Invalid) as excinfo:
        build_spec(request(validation_file="ds_valid"), CHAT, PROMPT_COMPLETION, {})
    assert param_of(excinfo) == "validation_file"


def test_auto_keeps_the_defaults_and_numbers_set_training_fields() -> None:
    auto = build_spec(request(hyperparameters={"n_epochs": "auto"}), CHAT, None, {})
    assert (auto.training.epochs, auto.training.batch_size, auto.training.learning_rate) == (1, 4, 2e-4)
    hp = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.5}
    spec = build_spec(request(hyperparameters=hp, seed=7), CHAT, None, {})
    assert (spec.training.epochs, spec.training.batch_size, spec.training.seed) == (3, 2, 7)
    assert spec.training.learning_rate == pytest.approx(1e-4)


def test_method_hyperparameters_win_over_the_deprecated_top_level_ones() -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5}}}
    spec = build_spec(request(hyperparameters={"n_epochs": 2, "batch_size": 8}, method=method), CHAT, None, {})
    assert (spec.training.epochs, spec.training.batch_size) == (5, 8)
    with pytest.raises(Invalid) as excinfo:
        build_spec(request(method={"type": "reinforcement"}), CHAT, None, {})
    assert param_of(excinfo) == "method.type"
    with pytest.raises(Invalid, match="method dpo needs DPO lines") as excinfo:
        build_spec(request(method={"type": "dpo"}), CHAT, None, {})
    assert param_of(excinfo) == "training_file"
    pairs = ["input", "preferred_output", "non_preferred_output"]
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3, "n_epochs": 2}}}
    spec = build_spec(request(method=dpo), pairs, None, {})
    assert (spec.method.type, spec.method.beta, spec.format.type, spec.training.epochs) == ("dpo", 0.3, "preference", 2)


def test_deployment_defaults_set_the_base_learning_rate_and_our_own_choices() -> None:
    defaults = {"quantization": None, "lora": {"r": 4}, "training": {"learning_rate": 1e-3}, "base_model": "ignored"}
    spec = build_spec(request(hyperparameters={"learning_rate_multiplier": 2}), CHAT, None, defaults)
    assert spec.quantization is None and spec.lora.r == 4 and spec.base_model == "tiny-llama"
    assert spec.training.learning_rate == pytest.approx(2e-3)
    assert job_hyperparameters(spec.model_dump(mode="json"), 1e-3)["learning_rate_multiplier"] == pytest.approx(2)


def test_ft_metadata_keys_and_spec_overrides_set_any_spec_field() -> None:
    metadata = {"team": "search", "ft.lora.r": "8", "ft.quantization": "null", "ft.training.max_steps": "5"}
    spec = build_spec(request(metadata=metadata, suffix="tagger"), CHAT, None, {"lora": {"alpha": 64}})
    assert (spec.lora.r, spec.lora.alpha, spec.quantization, spec.training.max_steps) == (8, 64, None, 5)
    assert spec.metadata == metadata and spec.name == "tagger"
    overrides = {"lora": {"r": 32}, "format": {"type": "text", "field": "text"}}
    spec = build_spec(request(metadata=metadata, spec_overrides=overrides), ["text"], None, {})
    assert spec.lora.r == 32 and spec.format.type == "text"  # the extension wins over metadata; no detection


def test_metadata_values_read_as_json_when_they_are() -> None:
    parsed = metadata_overrides({"ft.lora.target_modules": '["q_proj"]', "ft.name": "plain words", "other": "1"})
    assert parsed == {"lora": {"target_modules": ["q_proj"]}, "name": "plain words"}
    with pytest.raises(Invalid) as excinfo:
        metadata_overrides({"ft.lora..r": "8"})
    assert param_of(excinfo) == "metadata.ft.lora..r"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"spec_overrides": {"dataset": "ds_other"}}, "spec_overrides.dataset"),
        ({"spec_overrides": {"lora": {"rank": 8}}}, "lora.rank"),
        ({"metadata": {"ft.training.max_steps": "0"}}, "training.max_steps"),
        ({"model": "https://evil.example/model"}, "model"),
        ({"integrations": [{"type": "wandb"}]}, "integrations"),
    ],
)
def test_bad_requests_name_the_field_at_fault(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(Invalid) as excinfo:
        build_spec(request(**fields), CHAT, None, {})
    assert param_of(excinfo) == param


def test_deep_merge_merges_objects_and_replaces_everything_else() -> None:
    base = {"lora": {"r": 16, "alpha": 32}, "quantization": {"bits": 4}, "name": "a"}
    assert deep_merge(base, {"lora": {"r": 8}, "quantization": None}) == {
        "lora": {"r": 8, "alpha": 32},
        "quantization": None,
        "name": "a",
    }


def job(status: str = "queued", **fields: Any) -> Job:
    spec = build_spec(request(suffix="tagger", seed=3), CHAT, None, {}).model_dump(mode="json")
    values: dict[str, Any] = {
        "id": "job_0123456789abcdef01234567",
        "tenant": "acme",
        "name": "tagger",
        "status": status,
        "spec": spec,
        "created_at": T0,
        "attempts": 1,
        "step": 0,
        **fields,
    }
    return Job(**values)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("queued", "queued"), ("running", "running"), ("cancelling", "running"), ("cancelled", "cancelled")],
)
def test_statuses_read_as_openai_ones(ours: str, theirs: str) -> None:
    assert job_object(job(ours)).status == theirs


def test_a_succeeded_job_names_its_adapter_and_a_failed_one_its_error() -> None:
    done = job_object(job("succeeded", finished_at=T0 + timedelta(minutes=2)), {"job_0123456789abcdef01234567": 900})
    assert done.fine_tuned_model == "ft:tiny-llama:acme:tagger:job_0123456789abcdef01234567"
    assert (done.finished_at, done.trained_tokens, done.seed, done.error) == (int(T0.timestamp()) + 120, 900, 3, None)
    assert done.hyperparameters.model_dump() == {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}
    assert done.method == {"type": "supervised", "supervised": {"hyperparameters": done.hyperparameters.model_dump()}}
    failed = job_object(job("failed", error_type="dataset_error", error_message="row 3: no assistant message"))
    assert failed.fine_tuned_model is None and failed.error is not None
    assert (failed.error.code, failed.error.message) == ("dataset_error", "row 3: no assistant message")


def test_a_job_made_at_jobs_maps_too() -> None:
    spec = {"base_model": "owner/Model v2", "dataset": {"hub": "owner/data", "split": "test"}, "training": {}}
    ours = Job(id="job_0123456789abcdef01234567", tenant="acme", name=None, status="running", spec=spec, created_at=T0)
    mapped = job_object(ours)
    assert mapped.training_file == "hub:owner/data@test" and mapped.user_provided_suffix is None
    assert fine_tuned_model_name(ours) == "ft:owner/Model-v2:acme::job_0123456789abcdef01234567"


def test_event_ids_round_trip_and_foreign_ids_are_refused() -> None:
    key = (TRAINING, 20, CHECKPOINT)
    assert parse_event_id("job_a", event_id("job_a", key)) == key
    for bad in ("ftevent-job_b-2-20-1", "ftevent-job_a-2-x-1", "nope"):
        with pytest.raises(Invalid):
            parse_event_id("job_a", bad)


def test_message_events_follow_the_job_and_its_checkpoints() -> None:
    ended = job("succeeded", started_at=T0 + timedelta(seconds=5), finished_at=T0 + timedelta(seconds=60))
    checkpoint = Artifact(name="checkpoint-4", kind="checkpoint", step=4, created_at=T0 + timedelta(seconds=30))
    events = sorted(message_events(ended, [checkpoint]), key=lambda e: e.key)
    assert [e.message.split(":")[0] for e in events] == [
        "Created fine-tuning job",
        "Fine-tuning job started",
        "Checkpoint created at step 4",
        "New fine-tuned model created",
        "The job has successfully completed",
    ]
    failed = message_events(job("failed", finished_at=T0, error_message="out of memory"), [])
    assert failed[-1].level == "error" and failed[-1].key[0] == FINISHED and "out of memory" in failed[-1].message


def test_a_metrics_event_carries_train_and_validation_loss() -> None:
    running = job("running", total_steps=8)
    points = {
        "train": MetricPoint(split="train", step=4, loss=1.25, learning_rate=2e-4, epoch=1.0, time=T0),
        "eval": MetricPoint(split="eval", step=4, loss=1.5, time=T0 + timedelta(seconds=1)),
    }
    event = metrics_event(running, 4, points).public(running.id)
    assert event.type == "metrics" and event.message == "Step 4/8: training loss=1.2500, validation loss=1.5000"
    assert event.data == {
        "step": 4,
        "total_steps": 8,
        "train_loss": 1.25,
        "learning_rate": 2e-4,
        "epoch": 1.0,
        "valid_loss": 1.5,
        "full_valid_loss": 1.5,
    }
    assert event.created_at == int(T0.timestamp()) + 1


@pytest.mark.parametrize(
    ("ours", "theirs", "code", "retry"),
    [(422, 400, None, "false"), (409, 400, "invalid_state", "false"), (401, 401, "invalid_api_key", "false"),
     (404, 404, "not_found", "false"), (429, 429, None, None), (503, 503, None, None)],
)  # fmt: skip
def test_openai_error_bodies(ours: int, theirs: int, code: str | None, retry: str | None) -> None:
    response = openai_error(ours, "what went wrong", "training_file")
    error = json.loads(response.body)["error"]
    assert response.status_code == theirs and response.headers.get("x-should-retry") == retry
    assert error["message"] == "what went wrong" and error["param"] == "training_file" and error["code"] == code
    assert error["type"] == (
        "invalid_request_error" if theirs < 429 else "rate_limit_error" if theirs == 429 else "server_error"
    )


def test_only_v1_paths_get_openai_error_bodies() -> None:
    app = FastAPI()
    app.state.sessionmaker = SessionLocal
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(openai_compat.router)
    client = TestClient(app)
    assert client.get("/v1/fine_tuning/jobs").json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/no-such-thing").json()["error"]["code"] == "not_found"
    assert "detail" in client.get("/jobs").json() and "detail" in client.get("/no-such-thing").json()


def test_naive_datetimes_from_sqlite_count_as_utc() -> None:
    assert unix(datetime(1970, 1, 1, 0, 0, 10)) == unix(datetime(1970, 1, 1, 0, 0, 10, tzinfo=UTC)) == 10


def test_data_check_problems_name_the_request_field() -> None:
    assert request_param([{"field": "base_model", "message": "no config.json"}]) == "model"
    assert request_param([{"field": "format", "message": "column(s) 'messages' not in dataset"}]) == "format"
    assert request_param([{"row": 3, "message": "row 3: no assistant message"}]) == "training_file"
    assert request_param([{"row": 2, "message": "validation_dataset row 2: bad role"}]) == "validation_file"
    assert request_param([]) is None
