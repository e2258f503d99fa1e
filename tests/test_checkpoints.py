"""Only checkpoints the Trainer finished writing are resumed from."""

from pathlib import Path

from worker.training.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint


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
