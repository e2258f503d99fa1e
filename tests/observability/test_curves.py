"""Downsampling keeps a curve's shape: first and last points, every spike and dip, order, and speed at 100k points."""

import math
import random
import time

from app.observability.curves import downsample_indices, downsample_min_max


def synthetic_loss(n: int, seed: int = 0) -> list[float]:
    """A decaying, noisy loss curve, like a real run's."""
    rng = random.Random(seed)
    return [2.5 * math.exp(-i / (n / 4)) + 0.3 + rng.gauss(0, 0.05) for i in range(n)]


def test_a_100k_point_curve_keeps_its_spikes_dips_and_ends() -> None:
    values = synthetic_loss(100_000)
    values[31_337] = 40.0  # a divergence spike
    values[77_777] = -5.0  # and a dip
    keep = downsample_indices(values, 1000)
    assert len(keep) <= 1000
    assert keep == sorted(set(keep)), "indices come back increasing and unique"
    assert keep[0] == 0 and keep[-1] == len(values) - 1
    assert 31_337 in keep and 77_777 in keep
    # The curve's shape survives: each tenth of the run has points, and the kept values span the same range.
    tenths = {i * 10 // len(values) for i in keep}
    assert tenths == set(range(10))
    kept = [values[i] for i in keep]
    assert max(kept) == max(values) and min(kept) == min(values)


def test_every_bucket_contributes_its_min_and_max() -> None:
    values = synthetic_loss(10_000, seed=1)
    keep = set(downsample_indices(values, 202))  # 100 buckets of ~100 points
    for b in range(100):
        lo, hi = 1 + b * 9998 // 100, 1 + (b + 1) * 9998 // 100
        bucket = range(lo, hi)
        assert min(bucket, key=values.__getitem__) in keep
        assert max(bucket, key=values.__getitem__) in keep


def test_downsampling_100k_points_is_fast() -> None:
    values = synthetic_loss(100_000)
    downsample_indices(values, 1000)  # warm up
    started = time.perf_counter()
    for _ in range(5):
        downsample_indices(values, 1000)
    per_call = (time.perf_counter() - started) / 5
    assert per_call < 0.1, f"downsampling 100k points took {per_call * 1000:.1f} ms"  # ~10 ms on an idle core


def test_short_curves_and_small_budgets() -> None:
    assert downsample_indices([1.0, 2.0, 3.0], 10) == [0, 1, 2]
    assert downsample_indices([1.0, 2.0, 3.0], 3) == [0, 1, 2]
    assert downsample_indices(list(map(float, range(100))), 2) == [0, 99]
    assert downsample_indices(list(map(float, range(100))), 3) == [0, 99]
    assert downsample_indices([], 5) == []


def test_missing_values_are_skipped_but_a_gap_stays_visible() -> None:
    values: list[float | None] = [float(i % 7) for i in range(1000)]
    values[500:600] = [None] * 100  # a stretch with no loss logged
    values[550] = None
    values[450] = 99.0
    keep = downsample_indices(values, 52)  # 25 buckets of ~40 points
    assert 450 in keep
    assert any(500 <= i < 600 for i in keep), "an all-None bucket keeps one point, so the gap is drawn"
    assert all(values[i] is not None for i in keep if not 500 <= i < 600)


def test_downsample_min_max_works_on_objects() -> None:
    points = [{"step": i, "loss": v} for i, v in enumerate(synthetic_loss(5000, seed=2))]
    points[1234]["loss"] = 10.0
    kept = downsample_min_max(points, 100, lambda p: p["loss"])
    assert len(kept) <= 100 and points[1234] in kept
    assert [p["step"] for p in kept] == sorted(p["step"] for p in kept)
