"""Each format and file type trains a few steps on the tiny model through the real recipe (in-process).

The hub path is tested with a dataset laid out in huggingface_hub's cache exactly as `snapshot_download` leaves
it (refs/main -> snapshots/<commit>/...), the same files the loader reads when the Hub is reachable.
"""

import io
import json
import math
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from app.datasets.files import parse_dataset
from app.spec.job import JobSpec
from tests.conftest import TINY_MODEL
from tests.datasets.test_hub_datasets import mirror_hub_dataset
from worker.training import recipe
from worker.training.errors import TrainingError
from worker.training.progress import LogReport

REVIEWS = [
    ("The food was terrible and the service slow.", "negative"),
    ("This movie was wonderful, great acting.", "positive"),
    ("So many books, so little time.", "positive"),
    ("A boring, awful story.", "negative"),
] * 3
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Label the review."},
            {"role": "user", "content": r},
            {"role": "assistant", "content": label},
        ]
    }
    for r, label in REVIEWS
]


class Recorder(LogReport):
    def __init__(self) -> None:
        self.train: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []

    def train_point(self, point: dict[str, Any]) -> None:
        self.train.append(point)

    def eval_point(self, point: dict[str, Any]) -> None:
        self.evals.append(point)


def stored(tmp_path: Path, filename: str, content: bytes) -> Path:
    """An upload as the API stores it: parsed, then one JSON object per line."""
    path = tmp_path / f"{filename}.rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in parse_dataset(filename, content).rows))
    return path


def parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def train(tmp_path: Path, fmt: dict, dataset: str | dict, path: Path | None, **extra: Any) -> tuple[Any, Recorder]:
    training = {
        "max_steps": 3,
        "batch_size": 2,
        "learning_rate": 5e-3,
        "optimizer": "adamw_torch",
        **extra.pop("training", {}),
    }
    spec = JobSpec.model_validate(
        {
            "base_model": TINY_MODEL,
            "dataset": dataset,
            "format": fmt,
            "quantization": None,
            "training": training,
            **extra,
        }
    )
    report = Recorder()
    result = recipe.run(spec, path, tmp_path / "out", report, validation_path=extra.get("_validation_path"))
    assert result.steps == training["max_steps"] and [p["step"] for p in report.train] == list(
        range(1, result.steps + 1)
    )
    assert all(p["loss"] is not None and math.isfinite(p["loss"]) for p in report.train)
    weights = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    assert any(float(w.abs().sum()) > 0 for n, w in weights.items() if "lora_B" in n), "LoRA B must have moved"
    return result, report


def test_text_from_jsonl(tiny_model: Path, tmp_path: Path) -> None:
    content = "\n".join(json.dumps({"text": f"{r} Verdict: {label}."}) for r, label in REVIEWS).encode()
    train(tmp_path, {"type": "text", "field": "text"}, "ds_x", stored(tmp_path, "reviews.jsonl", content))


def test_template_from_csv_in_4bit(tiny_model: Path, tmp_path: Path) -> None:
    content = ("review,label\n" + "".join(f'"{r}",{label}\n' for r, label in REVIEWS)).encode()
    spec_fmt = {"type": "template", "template": "{review} ->: {label}"}
    result, _ = train(tmp_path, spec_fmt, "ds_x", stored(tmp_path, "reviews.csv", content), quantization={"bits": 4})
    assert result.trainable_parameters > 0


def test_prompt_completion_from_tsv(tiny_model: Path, tmp_path: Path) -> None:
    content = ("review\tlabel\n" + "".join(f"{r}\t{label}\n" for r, label in REVIEWS)).encode()
    fmt = {"type": "prompt_completion", "prompt": "Review: {review}\nLabel:", "completion": " {label}"}
    train(tmp_path, fmt, "ds_x", stored(tmp_path, "reviews.tsv", content))


def test_chat_from_json_array_with_eval_and_load_best(tiny_model: Path, tmp_path: Path) -> None:
    path = stored(tmp_path, "chats.json", json.dumps(CHATS).encode())
    training = {"max_steps": 4, "eval_fraction": 0.25, "eval_every_steps": 1, "load_best": True}
    result, report = train(tmp_path, {"type": "chat"}, "ds_x", path, training=training)
    assert [p["step"] for p in report.evals] == [1, 2, 3, 4]
    assert all(0 <= p["mean_token_accuracy"] <= 1 for p in report.evals)  # accuracy rides along with eval_loss
    best = min(report.evals, key=lambda p: p["eval_loss"])
    assert result.eval_loss == pytest.approx(best["eval_loss"]) and result.best_step == best["step"]


def test_hub_dataset_from_the_hub_cache(tiny_model: Path, tmp_path: Path, hub_cache: Path) -> None:
    rows = [{"quote": r, "tags": [label, "review"]} for r, label in REVIEWS]
    mirror_hub_dataset(
        hub_cache,
        "Abirate/english_quotes",
        {"data/train-00000-of-00001.parquet": parquet(rows), "data/test.jsonl": b'{"quote": "held out", "tags": []}\n'},
    )
    fmt = {"type": "template", "template": "{quote} ->: {tags}"}
    train(tmp_path, fmt, {"hub": "Abirate/english_quotes", "split": "train"}, None)
    with pytest.raises(TrainingError, match="not cached"):
        train(tmp_path, fmt, {"hub": "nobody/nothing"}, None)


def test_validation_dataset_is_evaluated_each_epoch(tiny_model: Path, tmp_path: Path) -> None:
    content = "\n".join(json.dumps({"prompt": r, "completion": f" {label}"}) for r, label in REVIEWS).encode()
    path = stored(tmp_path, "train.jsonl", content)
    held = stored(tmp_path, "held.jsonl", content[: content.index(b"\n")])
    spec = JobSpec.model_validate(
        {
            "base_model": TINY_MODEL,
            "dataset": "ds_x",
            "validation_dataset": "ds_y",
            "format": {"type": "prompt_completion"},
            "quantization": None,
            "training": {"epochs": 1, "batch_size": 6, "optimizer": "adamw_torch"},
        }
    )
    report = Recorder()
    result = recipe.run(spec, path, tmp_path / "out", report, validation_path=held)
    assert result.steps == 2 and [p["step"] for p in report.evals] == [2] and result.eval_loss > 0
