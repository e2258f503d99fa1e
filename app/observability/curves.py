"""Downsampling a loss curve for display while keeping its shape: spikes and dips survive."""

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def _extreme_indices(values: Sequence[float | None], lo: int, hi: int) -> tuple[int, int] | None:
    """Indices of the lowest and highest value in values[lo:hi], ignoring None; None if all are None."""
    segment = values[lo:hi]
    if None in segment:
        present = [(v, i) for i, v in enumerate(segment, lo) if v is not None]
        if not present:
            return None
        return min(present)[1], max(present)[1]
    # min() and list.index() run in C: a 100k-point curve is downsampled in a few milliseconds.
    low, high = min(segment), max(segment)
    return lo + segment.index(low), lo + segment.index(high)


def downsample_indices(values: Sequence[float | None], max_points: int) -> list[int]:
    """Indices (increasing) of at most max_points points: the first, the last, and per bucket its min and max.

    Min/max per bucket rather than every k-th point keeps a divergence spike visible however long
    the run. A bucket whose values are all None keeps its first point so gaps stay visible.
    """
    values = values if isinstance(values, list) else list(values)
    n = len(values)
    if max_points <= 0 or n <= max_points:
        return list(range(n))
    if max_points < 4:
        return [0, n - 1][:max_points]
    buckets = (max_points - 2) // 2
    inner = n - 2
    keep = {0, n - 1}
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if lo >= hi:
            continue
        extremes = _extreme_indices(values, lo, hi)
        keep.update(extremes if extremes else (lo,))
    return sorted(keep)


def downsample_min_max(points: Sequence[T], max_points: int, value: Callable[[T], float | None]) -> list[T]:
    """At most max_points of points (in their order), chosen by downsample_indices on value(point)."""
    return [points[i] for i in downsample_indices([value(p) for p in points], max_points)]
