"""A full disk is told apart from other failures by what each writer says, and what it left half-written goes."""

import errno
from pathlib import Path

import pytest

from worker.artifacts import pack_directory
from worker.disk import full_disk_error, remove_partial_outputs
from worker.training.checkpoints import COMPLETE_MARKER


def test_enospc_is_a_full_disk_at_the_file_it_wrote(tmp_path: Path) -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "adapter" / "adapter_model.safetensors"))
    error = full_disk_error(exc, tmp_path)
    assert error is not None and error.type == "disk_full"
    assert error.message.startswith(f"no space left on the worker's disk at {tmp_path / 'adapter'} (")
    assert "Free space on the worker" in error.message


def test_safetensors_words_count_too(tmp_path: Path) -> None:
    exc = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert full_disk_error(exc, tmp_path) is not None


def test_a_vague_stream_error_counts_only_when_the_disk_is_really_full(tmp_path: Path) -> None:
    """torch.save says only "iostream error"; here the disk has room, so it is something else."""
    vague = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 167552 vs 167440")
    vague.__context__ = RuntimeError("basic_ios::clear: iostream error")
    assert full_disk_error(vague, tmp_path) is None
    assert full_disk_error(ValueError("shapes do not match"), tmp_path) is None


def test_partial_outputs_go_and_recorded_ones_stay(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint-2.tar.gz").write_bytes(b"recorded")
    (tmp_path / "checkpoints" / "checkpoint-4.partial").write_bytes(b"half")
    for step, complete in ((2, True), (4, False)):
        checkpoint = tmp_path / "trainer" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / COMPLETE_MARKER).touch()
    (tmp_path / "adapter").mkdir()
    removed = remove_partial_outputs(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == [
        "adapter",
        "checkpoints/checkpoint-4.partial",
        "trainer/checkpoint-4",
    ]
    assert (tmp_path / "checkpoints" / "checkpoint-2.tar.gz").exists()
    assert (tmp_path / "trainer" / "checkpoint-2" / COMPLETE_MARKER).exists()


def test_an_archive_that_fails_to_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "adapter"
    source.mkdir()
    (source / "adapter_model.safetensors").write_bytes(b"w" * 1000)

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tarfile.TarFile.add", disk_full)
    with pytest.raises(OSError):
        pack_directory(source, tmp_path / "adapter.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
