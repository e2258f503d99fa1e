"""What trackers are sent, without a tracker: the metric points merged by step under train/ and eval/ names, the
settings as flat parameters (never the webhook URL or the integrations), and failures in words that never quote
what a server answered."""

from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import UNAUTHENTICATED

from app.core.egress import EgressRefused
from app.spec.job import JobSpec
from worker.trackers.failures import describe
from worker.trackers.points import flat_params, merged_steps, run_config

TRAIN = [
    {"step": 1, "epoch": 0.5, "loss": 2.0, "learning_rate": 1e-4, "grad_norm": None, "time": "2026-11-27T21:00:00Z"},
    {
        "step": 2,
        "epoch": 1.0,
        "loss": 1.5,
        "learning_rate": 5e-5,
        "peak_memory_mb": 1.5,
        "time": "2026-11-27T21:00:01Z",
    },
]
EVALS = [{"step": 2, "epoch": 1.0, "eval_loss": 1.7, "accuracy": 0.5, "time": "2026-11-27T21:00:02Z"}]


def test_points_are_merged_by_step_with_train_and_eval_names() -> None:
    steps = merged_steps(TRAIN, EVALS)
    assert [s.step for s in steps] == [1, 2]
    assert steps[0].values == {"train/epoch": 0.5, "train/loss": 2.0, "train/learning_rate": 1e-4}
    assert steps[1].values == {
        "train/epoch": 1.0,
        "train/loss": 1.5,
        "train/learning_rate": 5e-5,
        "train/peak_memory_mb": 1.5,
        "eval/epoch": 1.0,
        "eval/loss": 1.7,
        "eval/accuracy": 0.5,
    }
    assert steps[1].time == datetime(2026, 11, 27, 21, 0, 1, tzinfo=UTC).timestamp()  # its first point's time


def test_parameters_are_the_training_settings_and_nothing_secret_bearing() -> None:
    spec = JobSpec.model_validate(
        {
            "name": "bot",
            "base_model": "tiny-llama",
            "dataset": "ds_x",
            "webhook_url": "https://hooks.example.com/h?token=abc",
            "metadata": {"owner": "me"},
            "integrations": [{"type": "mlflow", "mlflow": {"tracking_uri": "https://ml.example.com"}}],
            "training": {"max_steps": 7},
        }
    )
    params = flat_params(run_config("job_" + "1" * 24, spec))
    assert params["job_id"] == "job_" + "1" * 24 and params["name"] == "bot" and params["format.type"] == "text"
    assert params["training.max_steps"] == "7" and params["lora.r"] == "16" and params["quantization.bits"] == "4"
    assert params["method.type"] == "sft" and params["base_model"] == "tiny-llama"
    assert not any(k.startswith(("webhook", "metadata", "integrations", "resources")) for k in params)
    assert not any("abc" in v or "ml.example.com" in v for v in params.values())


def test_failures_name_a_code_or_a_type_never_the_servers_answer() -> None:
    answered = MlflowException("API request failed. Response body: 'ami-id: secret-internal'")
    assert describe(answered) == "the MLflow server answered INTERNAL_ERROR"
    refused = MlflowException("Response body: 'You are not authenticated'", error_code=UNAUTHENTICATED)
    assert (
        describe(refused) == "the MLflow server answered UNAUTHENTICATED: check the tenant's mlflow_tracking_* secrets"
    )
    assert "10.0.0.1" in describe(EgressRefused("host h resolves to 10.0.0.1, a private address; not called"))
    assert describe(ConnectionError("boom: 169.254.169.254 said hello")) == "ConnectionError"
