"""The drain flag (worker/drain.py) names a process by pid and start time: a flag a killed worker left behind
never drains the later process that draws the same pid."""

import os
import tempfile
from pathlib import Path

import pytest

from worker import drain


@pytest.fixture(autouse=True)
def no_flag_of_ours() -> None:
    drain.clear_draining()
    yield
    drain.clear_draining()


def test_a_flag_left_by_an_earlier_process_with_this_pid_does_not_drain_this_one() -> None:
    stale = Path(tempfile.gettempdir()) / f"{drain.PREFIX}{os.getpid()}-1"  # this pid, started at another time
    stale.touch()
    try:
        assert not drain.is_draining()
        drain.mark_draining()
        assert drain.is_draining()
        drain.clear_stale_flags()
        assert not stale.exists() and drain.drain_flag(os.getpid()).exists()  # the live process's flag stays
        drain.clear_draining()
        assert not drain.is_draining()
    finally:
        stale.unlink(missing_ok=True)


def test_the_flag_names_the_start_time_on_linux() -> None:
    name = drain.drain_flag(os.getpid()).name
    assert name.startswith(f"{drain.PREFIX}{os.getpid()}-") and name.rsplit("-", 1)[1].isdigit()
