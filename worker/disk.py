"""A full disk on the worker: told apart from other failures, reported with where and how full, cleaned up after.

The writers fail differently when the disk fills: Python and safetensors say ENOSPC ("No space left on device");
torch.save only says its stream failed ("file write failed", "iostream error", "unexpected pos"). Those vaguer ones
count as a full disk when the disk holding the job really has (almost) nothing left: a failed write uses up what was.
The job then fails with `disk_full` and a message an operator can act on; a full disk does not free itself, so
retrying on the same worker would only fail again. What the attempt left half-written goes, so the worker's next
job finds the space it had before.
"""

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from worker.training.checkpoints import CHECKPOINT_DIR, COMPLETE_MARKER
from worker.training.errors import TrainingError

NO_SPACE = ("No space left on device", "os error 28", "StorageFull")
STREAM_WRITE_FAILED = ("file write failed", "iostream error", "unexpected pos", "PytorchStreamWriter")
NEARLY_FULL_BYTES = 16 << 20  # what a failed write leaves free, at most: a disk with more did not fill up


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def full_disk_error(exc: BaseException, job_dir: Path) -> TrainingError | None:
    """A `disk_full` TrainingError when `exc` came from the disk holding job_dir filling up, else None."""
    errors = list(_chain(exc))
    no_space = any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in errors)
    no_space = no_space or any(marker in str(e) for e in errors for marker in NO_SPACE)
    where = next(
        (Path(e.filename).parent for e in errors if isinstance(e, OSError) and e.errno == errno.ENOSPC and e.filename),
        job_dir,
    )
    usage = shutil.disk_usage(_mount_point(where))
    if not no_space:
        stream_failed = any(marker in str(e) for e in errors for marker in STREAM_WRITE_FAILED)
        if not (stream_failed and usage.free < NEARLY_FULL_BYTES):
            return None
    return TrainingError(
        "disk_full",
        f"no space left on the worker's disk at {where} ({_mb(usage.free)} free of {_mb(usage.total)} on "
        f"{_mount_point(where)}): the job's checkpoints and adapter did not fit. Free space on the worker, or give "
        "FT_DATA_DIR a larger disk, then submit the job again",
    )


def remove_partial_outputs(job_dir: Path) -> list[Path]:
    """Delete what a failed attempt left half-written under job_dir (archives being packed, the unrecorded adapter,
    checkpoints never marked complete); returns what went. Packed checkpoints already recorded stay."""
    gone: list[Path] = [p for p in job_dir.rglob("*.partial")]
    gone += [job_dir / "adapter", job_dir / "adapter.tar.gz"]
    trainer = job_dir / "trainer"
    if trainer.is_dir():
        gone += [p for p in trainer.iterdir() if CHECKPOINT_DIR.match(p.name) and not (p / COMPLETE_MARKER).is_file()]
    removed = [p for p in gone if p.exists()]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
