"""Only checkpoints the Trainer finished writing are resumed from."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from worker.training.checkpoints import COMPLETE_MARKER, CheckpointCallback, latest_complete_checkpoint


def test_half_written_checkpoint_is_never_resumed_from(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-10" / COMPLETE_MARKER).touch()
    (tmp_path / "checkpoint-20" / COMPLETE_MARKER).touch()
    # checkpoint-30 has no marker: the process died while writing it
    assert latest_complete_checkpoint(tmp_path) == (20, tmp_path / "checkpoint-20")


def test_no_checkpoint(tmp_path: Path) -> None:
    assert latest_complete_checkpoint(tmp_path) is None
    assert latest_complete_checkpoint(tmp_path / "missing") is None


class Killed(Exception):
    """The worker dies while the checkpoint is packed and recorded."""


class Recorder:
    def __init__(self, die: bool = False):
        self.die, self.recorded = die, []

    def checkpoint(self, step: int, path: Path) -> None:
        assert not (path / COMPLETE_MARKER).exists(), "marked resumable before it was recorded"
        if self.die:
            raise Killed
        self.recorded.append(step)


def _save(tmp_path: Path, report: Recorder, step: int, rank_zero: bool = True) -> None:
    (tmp_path / f"checkpoint-{step}").mkdir()
    state = TrainerState(global_step=step, is_world_process_zero=rank_zero)
    callback = CheckpointCallback(report, extra_files={"labels.json": "[]"})  # type: ignore[arg-type]
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, TrainerControl())  # type: ignore[arg-type]


def test_a_checkpoint_is_resumable_only_once_it_is_recorded(tmp_path: Path) -> None:
    report = Recorder()
    _save(tmp_path, report, 10)
    assert report.recorded == [10] and latest_complete_checkpoint(tmp_path) == (10, tmp_path / "checkpoint-10")
    assert (tmp_path / "checkpoint-10" / "labels.json").read_text() == "[]"
    with pytest.raises(Killed):
        _save(tmp_path, Recorder(die=True), 20)
    # the next attempt resumes from 10 and saves (and records) 20 again: never a resume from an unlisted checkpoint
    assert latest_complete_checkpoint(tmp_path) == (10, tmp_path / "checkpoint-10")


def test_only_rank_zero_reports_and_marks_a_shared_checkpoint(tmp_path: Path) -> None:
    report = Recorder()
    _save(tmp_path, report, 10, rank_zero=False)
    assert report.recorded == [] and latest_complete_checkpoint(tmp_path) is None
