"""The out-of-memory retry policy keeps the effective batch and stops at a micro-batch of 1."""

from app.spec.job import Training
from worker.oom import is_out_of_memory, smaller_micro_batch


def test_halves_micro_batch_and_doubles_accumulation() -> None:
    smaller = smaller_micro_batch(Training(batch_size=8, gradient_accumulation_steps=2))
    assert (smaller.batch_size, smaller.gradient_accumulation_steps) == (4, 4)


def test_odd_batch_keeps_at_least_the_effective_batch() -> None:
    smaller = smaller_micro_batch(Training(batch_size=3, gradient_accumulation_steps=1))
    assert smaller.batch_size == 1 and smaller.batch_size * smaller.gradient_accumulation_steps >= 3


def test_no_smaller_batch_than_one() -> None:
    assert smaller_micro_batch(Training(batch_size=1, gradient_accumulation_steps=16)) is None


def test_recognises_cuda_out_of_memory() -> None:
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(ValueError("shapes do not match"))
