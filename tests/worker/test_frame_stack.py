"""worker.frame_stack: a deep, oscillating call stack maps no frame-stack chunks inside `call` (see its docstring)."""

import resource

import pytest

from worker import frame_stack


def _descend(depth: int) -> int:
    return 0 if depth == 0 else 1 + _descend(depth - 1)


def _oscillate(rounds: int = 300, depth: int = 400) -> int:
    """Minor page faults while the stack swings `depth` frames (~40 KiB, over 16 KiB chunks) down and back up."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        _descend(depth)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_call_returns_the_result_and_raises_the_error() -> None:
    assert frame_stack.call(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError, match="x"):
        frame_stack.call({}.__getitem__, "x")


def test_a_deep_oscillating_stack_faults_no_pages_inside_call() -> None:
    _oscillate(rounds=5), frame_stack.call(_oscillate, rounds=5)  # warm both paths
    plain = _oscillate()
    roomy = frame_stack.call(_oscillate)
    # CPython 3.11-3.13 map and unmap a chunk (4+ pages) per crossing: 300 rounds cross 2+ boundaries each.
    assert plain > 1000, f"this interpreter did not thrash chunks ({plain} faults): nothing to compare"
    assert roomy < plain / 20, (plain, roomy)
