"""Train points carry peak GPU memory on a GPU, and nothing about memory on the CPU."""

from typing import Any

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from worker.training.progress import LogReport, ProgressCallback


class Recorder(LogReport):
    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []

    def train_point(self, point: dict[str, Any]) -> None:
        self.points.append(point)


@pytest.fixture(scope="module")
def args() -> TrainingArguments:
    return TrainingArguments(output_dir="unused", report_to=[])  # built before any test pretends to have a GPU


def _log_one_step(args: TrainingArguments) -> dict[str, Any]:
    report = Recorder()
    callback = ProgressCallback(report)
    state = TrainerState(global_step=3, max_steps=10, epoch=0.3, num_input_tokens_seen=1536)
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.5, "learning_rate": 1e-4, "grad_norm": 0.7})
    return report.points[0]


def test_no_memory_figure_without_a_gpu(args: TrainingArguments, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    point = _log_one_step(args)
    assert "peak_memory_mb" not in point
    assert point["step"] == 3 and point["num_tokens"] == 1536 and point["loss"] == 1.5


def test_peak_memory_in_megabytes_on_a_gpu(args: TrainingArguments, monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: stand in for the CUDA runtime's two answers, the boundary this code reads.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *_: 3 * 2**30 + 512 * 2**20)
    assert _log_one_step(args)["peak_memory_mb"] == 3584.0
