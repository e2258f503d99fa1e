"""Padding-free batches: examples concatenated into one row must not attend to each other.

Checked on the tiny model with the attention implementation the worker picks for flattened batches (sdpa_packed:
SDPA per example), stock sdpa (a block-diagonal mask) and eager: each example's logits in the packed row equal
its logits alone, and changing one example changes no other.
"""

import pytest
import torch

from app.spec.job import JobSpec, Training
from tests.conftest import TINY_MODEL
from worker.training import model as modelling
from worker.training import packed_attention, speed

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


def test_the_worker_uses_padding_free_batches_with_per_example_sdpa_on_the_cpu() -> None:
    plan = speed.plan(Training(), "cpu")
    assert plan.padding_free and not plan.group_by_length and plan.attn_implementation == "sdpa_packed"
    assert speed.plan(Training(padding_free=False), "cpu").attn_implementation == "sdpa"
    assert speed.plan(Training(attn_implementation="eager"), "cpu").attn_implementation == "eager"
    assert speed.plan(Training(), "cpu", causal_lm=False).attn_implementation == "sdpa"  # padded batches


def test_collator_flattens_without_padding_and_restarts_positions() -> None:
    batch = _packed(EXAMPLES)
    total = sum(len(ids) for ids in EXAMPLES)
    assert batch["input_ids"].shape == (1, total) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [p for ids in EXAMPLES for p in range(len(ids))]
    # No example learns to predict the first token of the next one.
    starts = [sum(len(ids) for ids in EXAMPLES[:i]) for i in range(len(EXAMPLES))]
    assert all(batch["labels"][0, s] == -100 for s in starts)


@pytest.mark.parametrize("attn", ["sdpa_packed", "sdpa", "eager"])
@pytest.mark.usefixtures("tiny_model")
def test_packed_examples_do_not_attend_to_each_other(attn: str) -> None:
    model = _load(attn)
    packed = _logits_per_example(model, EXAMPLES)
    for ids, logits in zip(EXAMPLES, packed, strict=True):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([ids])).logits[0]
        torch.testing.assert_close(logits, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa_packed", "sdpa", "eager"])
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
    assert not plan.torch_compile and plan.attn_implementation == "sdpa_packed"  # sdpa, per example
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


def test_examples_are_split_where_transformers_splits_them() -> None:
    query = torch.zeros(1, 2, 9, 4)
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 5, 6, 7]])  # a restart, and a jump: both start an example
    assert packed_attention.segments(positions, query, query) == [(0, 3), (3, 5), (5, 6), (6, 9)]
    assert packed_attention.segments(torch.arange(9)[None], query, query) is None  # one example: stock sdpa
    assert packed_attention.segments(positions.repeat(2, 1), query.repeat(2, 1, 1, 1), query) is None  # padded
    assert packed_attention.segments(None, query, query) is None


@pytest.mark.usefixtures("tiny_model")
def test_per_example_sdpa_trains_like_the_masked_one() -> None:
    """Loss and every gradient of a packed batch equal stock sdpa's under its block-diagonal mask."""
    batch = _packed(EXAMPLES)
    grads = {}
    for attn in ("sdpa", "sdpa_packed"):
        model = _load(attn).train()
        embeddings = model.get_input_embeddings().weight
        embeddings.requires_grad_(True)
        loss = model(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}).loss
        loss.backward()
        grads[attn] = (loss.detach(), embeddings.grad.clone())
    torch.testing.assert_close(grads["sdpa_packed"][0], grads["sdpa"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads["sdpa_packed"][1], grads["sdpa"][1], atol=1e-5, rtol=1e-4)


@pytest.mark.usefixtures("tiny_model")
def test_a_padded_batch_falls_back_to_stock_sdpa() -> None:
    ids = [[5, 17, 33, 90], [12, 8, 2, 2]]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    logits = {}
    for attn in ("sdpa", "sdpa_packed"):
        with torch.no_grad():
            logits[attn] = _load(attn)(input_ids=torch.tensor(ids), attention_mask=mask).logits
    torch.testing.assert_close(logits["sdpa_packed"], logits["sdpa"])
