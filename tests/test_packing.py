"""Padding-free batches: examples concatenated into one row must not attend to each other.

Checked on the tiny model with the attention implementation the worker picks (sdpa by default), and eager:
each example's logits in the packed row equal its logits alone, and changing one example changes no other.
"""

import pytest
import torch

from app.spec import JobSpec, Training
from tests.conftest import TINY_MODEL
from worker.training import model as modelling
from worker.training import speed

EXAMPLES = [[5, 17, 33, 90, 41, 7], [12, 8, 61], [70, 71, 72, 73, 74, 75, 76, 77, 78], [99, 3]]


def _load(attn: str) -> torch.nn.Module:
    spec = JobSpec.model_validate({"base_model": TINY_MODEL, "dataset": "ds", "quantization": None})
    model = modelling.load_model(spec, attn).eval()
    assert model.config._attn_implementation == attn
    return model


def _packed(examples: list[list[int]]) -> dict[str, torch.Tensor]:
    collator = speed.padding_free_collator(pad_token_id=2)
    return collator([{"input_ids": ids, "labels": ids} for ids in examples])


def _logits_per_example(model: torch.nn.Module, examples: list[list[int]]) -> list[torch.Tensor]:
    batch = _packed(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    return list(logits.split([len(ids) for ids in examples]))


def test_the_worker_uses_padding_free_batches_with_sdpa_on_the_cpu() -> None:
    plan = speed.plan(Training(), "cpu")
    assert plan.padding_free and not plan.group_by_length and plan.attn_implementation == "sdpa"


def test_collator_flattens_without_padding_and_restarts_positions() -> None:
    batch = _packed(EXAMPLES)
    total = sum(len(ids) for ids in EXAMPLES)
    assert batch["input_ids"].shape == (1, total) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [p for ids in EXAMPLES for p in range(len(ids))]
    # No example learns to predict the first token of the next one.
    starts = [sum(len(ids) for ids in EXAMPLES[:i]) for i in range(len(EXAMPLES))]
    assert all(batch["labels"][0, s] == -100 for s in starts)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.usefixtures("tiny_model")
def test_packed_examples_do_not_attend_to_each_other(attn: str) -> None:
    model = _load(attn)
    packed = _logits_per_example(model, EXAMPLES)
    for ids, logits in zip(EXAMPLES, packed, strict=True):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([ids])).logits[0]
        torch.testing.assert_close(logits, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.usefixtures("tiny_model")
def test_changing_one_example_changes_no_other(attn: str) -> None:
    model = _load(attn)
    before = _logits_per_example(model, EXAMPLES)
    changed = [EXAMPLES[0], [200, 201, 202], *EXAMPLES[2:]]
    after = _logits_per_example(model, changed)
    assert not torch.allclose(before[1], after[1])
    for i in (0, 2, 3):
        torch.testing.assert_close(before[i], after[i], atol=1e-5, rtol=1e-5)


def test_a_gpu_without_varlen_attention_groups_by_length_instead() -> None:
    plan = speed.plan(Training(), "cuda")
    assert not plan.padding_free and plan.group_by_length
    assert not speed.plan(Training(padding_free=False), "cuda").group_by_length


def test_gpu_only_knobs_are_dropped_on_the_cpu_with_a_warning_only_when_asked() -> None:
    assert speed.plan(Training(), "cpu").warnings == []
    stored = Training.model_validate(Training().model_dump())  # a spec read back from the record sets every field
    assert speed.plan(stored, "cpu").warnings == [] and not speed.plan(stored, "cpu").use_liger_kernel
    plan = speed.plan(Training(torch_compile=True, attn_implementation="flash_attention_2"), "cpu")
    assert not plan.torch_compile and plan.attn_implementation == "sdpa"
    assert any("torch_compile" in w for w in plan.warnings) and any("flash_attention_2" in w for w in plan.warnings)


@pytest.mark.usefixtures("tiny_model")
def test_the_check_sees_leakage_when_one_row_is_one_sequence() -> None:
    """The control: with an all-ones mask transformers treats the row as one sequence, and logits change."""
    model = _load("sdpa")
    batch = _packed(EXAMPLES)
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
    second = leaky.split([len(ids) for ids in EXAMPLES])[1]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([EXAMPLES[1]])).logits[0]
    assert not torch.allclose(second, alone, atol=1e-4, rtol=1e-4)
