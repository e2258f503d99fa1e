"""Downsampling a loss curve for display while keeping its shape: spikes and dips survive."""

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def downsample_min_max(points: Sequence[T], max_points: int, value: Callable[[T], float | None]) -> list[T]:
    """At most max_points points: the first and last, and per bucket the lowest and highest value.

    Min/max per bucket (rather than every k-th point) keeps a divergence spike visible however
    long the run; points come back in their original order.
    """
    n = len(points)
    if max_points <= 0 or n <= max_points:
        return list(points)
    if max_points < 4:
        return [points[0], points[-1]][:max_points]
    buckets = (max_points - 2) // 2
    inner = n - 2
    keep = {0, n - 1}
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if lo >= hi:
            continue
        indices = range(lo, hi)
        scored = [i for i in indices if value(points[i]) is not None] or list(indices)
        keep.add(min(scored, key=lambda i: value(points[i]) or 0.0))
        keep.add(max(scored, key=lambda i: value(points[i]) or 0.0))
    return [points[i] for i in sorted(keep)]
