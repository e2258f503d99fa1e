"""The bench's own pieces that must be right for its figures to mean anything (fast; no training)."""

import random
import statistics

import pytest

from bench import api_load
from bench.report import final_train_loss
from bench.workload import Workload, job_spec, make_texts


def test_bench_data_has_the_length_spread_that_makes_padding_cost() -> None:
    w = Workload()
    words = [len(t.split()) for t in make_texts(400, w, seed=1)]
    assert statistics.median(words) * 2 == pytest.approx(w.median_tokens, rel=0.25)
    rng = random.Random(0)
    rng.shuffle(words)
    batches = [words[i : i + w.batch_size] for i in range(0, len(words), w.batch_size)]
    waste = 1 - sum(map(sum, batches)) / sum(max(b) * len(b) for b in batches)
    assert waste > 0.3, f"padding to the longest wastes only {waste:.0%}: the bench would not show it"


def test_bench_data_is_the_same_for_both_sides() -> None:
    assert make_texts(20, Workload(), seed=3) == make_texts(20, Workload(), seed=3)


def test_ours_gets_the_recipes_settings_and_service_defaults_for_speed() -> None:
    w = Workload()
    training = job_spec(w, "ds_a", "ds_b")["training"]
    assert (training["batch_size"], training["gradient_accumulation_steps"]) == (w.batch_size, 4)
    assert training["max_steps"] == w.max_steps and training["optimizer"] == "paged_adamw_8bit"
    assert not {"padding_free", "attn_implementation", "use_liger_kernel", "torch_compile"} & set(training)


def test_final_train_loss_averages_the_last_tenth() -> None:
    assert final_train_loss([9.0] * 27 + [3.0, 2.0, 1.0]) == 2.0
    assert final_train_loss([4.0] * 90 + [1.0] * 10) == 1.0


def test_load_is_only_generated_against_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        api_load.with_python("http://example.com/jobs/x", "k", 1, 1)


def test_wrk_latency_units() -> None:
    assert [api_load._wrk_ms(v) for v in ("850.00us", "12.5ms", "1.2s")] == [0.85, 12.5, 1200.0]
