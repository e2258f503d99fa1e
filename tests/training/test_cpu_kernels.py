"""The CPU kernels (worker/training/cpu_kernels.py): the same results as the stock ops they replace.

CheapDropout against nn.Dropout's contract (rate, rescale, independence, replay under checkpointing), LeanLogProbs
against TRL's own fused LM head (values and every gradient), and a real training run with them on and off.
"""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from trl.kernels.chunked_logprob import ChunkedLogProbFunction

from app.spec.job import JobSpec, Training
from tests.conftest import TINY_MODEL
from worker.training import adapters, cpu_kernels, recipe, speed
from worker.training import model as modelling
from worker.training.progress import LogReport

OUTPUTS = ("log_probs", "entropy", "is_top1")


def test_the_mask_drops_at_the_requested_rate_and_rescales_to_keep_the_mean() -> None:
    torch.manual_seed(0)
    mask = cpu_kernels.keep_mask(torch.Size([1000, 1000]), 0.05, torch.device("cpu"))
    values = mask.unique().tolist()
    assert values[0] == 0 and len(values) == 2
    assert values[1] == pytest.approx(1 / (1 - 3277 / 65536))  # p rounded to 1/65536, rescaled exactly
    assert (mask == 0).float().mean().item() == pytest.approx(0.05, abs=0.001)  # 1e6 draws: sd 0.0002
    assert mask.mean().item() == pytest.approx(1.0, abs=0.005)


def test_masks_are_independent_between_calls_and_follow_the_seed() -> None:
    torch.manual_seed(1)
    first, second = (cpu_kernels.keep_mask(torch.Size([4096]), 0.5, torch.device("cpu")) for _ in range(2))
    assert not torch.equal(first, second)
    both_dropped = ((first == 0) & (second == 0)).float().mean().item()
    assert both_dropped == pytest.approx(0.25, abs=0.03)
    torch.manual_seed(1)
    assert torch.equal(first, cpu_kernels.keep_mask(torch.Size([4096]), 0.5, torch.device("cpu")))


def test_cheap_dropout_is_dropout() -> None:
    dropout = cpu_kernels.CheapDropout(0.1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - 6554 / 65536))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(kept, 1 / (1 - 6554 / 65536), 0.0))
    assert dropout.eval()(x) is x
    assert cpu_kernels.CheapDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        cpu_kernels.CheapDropout(1.0)


def test_a_checkpointed_recompute_replays_the_same_mask() -> None:
    """Non-reentrant checkpointing recomputes the forward in the backward; the mask must be the forward's."""
    dropout, layer = cpu_kernels.CheapDropout(0.3), torch.nn.Linear(16, 16)
    x = torch.randn(8, 16, requires_grad=True)

    def block(inputs: torch.Tensor) -> torch.Tensor:
        return layer(dropout(inputs)).tanh()

    torch.manual_seed(7)
    block(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(7)
    checkpoint(block, x, use_reentrant=False).sum().backward()
    torch.testing.assert_close(x.grad, plain)


@pytest.mark.usefixtures("tiny_model")
def test_every_lora_dropout_of_a_peft_model_is_swapped() -> None:
    spec = JobSpec.model_validate({"base_model": TINY_MODEL, "dataset": "ds", "lora": {"dropout": 0.05}})
    model = adapters.add_adapter(modelling.load_model(spec), spec)
    lora_layers = [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    assert len(lora_layers) > 0
    assert cpu_kernels.use_cheap_dropout(model) == len(lora_layers)
    assert all(isinstance(m.lora_dropout["default"], cpu_kernels.CheapDropout) for m in lora_layers)
    assert cpu_kernels.use_cheap_dropout(model) == 0  # already swapped
    none = JobSpec.model_validate({"base_model": TINY_MODEL, "dataset": "ds", "lora": {"dropout": 0.0}})
    assert cpu_kernels.use_cheap_dropout(adapters.add_adapter(modelling.load_model(none), none)) == 0


def _both(
    n: int, bias: bool, entropy_grad: bool, scale: float = 1.0, temperature: float = 1.0
) -> list[tuple[torch.Tensor, ...]]:
    torch.manual_seed(3)
    vocab, width = 300, 32
    hidden0 = torch.randn(n, width)
    weight = (torch.randn(vocab, width) * 0.3).requires_grad_()
    b = (torch.randn(vocab) * 0.1).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (n,))
    results = []
    for lean in (False, True):
        hidden = hidden0.clone().requires_grad_()
        weight.grad = None
        if b is not None:
            b.grad = None
        if lean:
            out = cpu_kernels.LeanLogProbs.apply(hidden, weight, b, targets, scale / temperature, OUTPUTS)
        else:
            out = ChunkedLogProbFunction.apply(hidden, weight, b, targets, temperature, 128, None, scale, OUTPUTS)
        log_probs, entropy, _, _, top1 = out
        loss = -log_probs.sum() + (0.3 * entropy.sum() if entropy_grad else 0.0)
        loss.backward()
        grads = (hidden.grad, weight.grad.clone(), None if b is None else b.grad.clone())
        results.append((log_probs.detach(), entropy.detach(), top1, *grads))
    return results


@pytest.mark.parametrize(
    ("bias", "entropy_grad", "scale", "temperature"),
    [(False, False, 1.0, 1.0), (True, True, 1.0, 1.0), (True, False, 0.5, 0.7), (False, True, 2.0, 1.3)],
)
def test_lean_log_probs_match_trls_fused_head(
    monkeypatch: pytest.MonkeyPatch, bias: bool, entropy_grad: bool, scale: float, temperature: float
) -> None:
    monkeypatch.setattr(cpu_kernels, "TOKEN_CHUNK", 40)  # 100 tokens: three chunks, the last one short
    stock, lean = _both(100, bias, entropy_grad, scale, temperature)
    for name, a, b in zip(("log_probs", "entropy", "top1", "d_hidden", "d_weight", "d_bias"), stock, lean, strict=True):
        if a is None:
            assert b is None, name
            continue
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=name)


def test_trls_fused_head_is_routed_through_the_lean_one_on_the_cpu_only_where_it_can() -> None:
    from trl.trainer import utils as trl_utils

    assert cpu_kernels.use_lean_lm_head(False) and cpu_kernels.use_lean_lm_head()  # installed once
    patched = trl_utils._ChunkedLogProbFunction
    assert cpu_kernels.stock_lm_head() is ChunkedLogProbFunction
    hidden, weight, targets = torch.randn(5, 8), torch.randn(20, 8), torch.randint(0, 20, (5,))
    calls: list[str] = []
    original_lean = cpu_kernels.LeanLogProbs.apply
    original_stock = ChunkedLogProbFunction.apply

    def lean(*args: Any) -> Any:
        calls.append("lean")
        return original_lean(*args)

    def stock(*args: Any) -> Any:
        calls.append("stock")
        return original_stock(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_kernels.LeanLogProbs, "apply", lean)
        mp.setattr(ChunkedLogProbFunction, "apply", stock)
        patched.apply(hidden, weight, None, targets, 1.0, 64, None, 1.0, OUTPUTS)
        patched.apply(hidden, weight, None, targets, 1.0, 64, 30.0, 1.0, OUTPUTS)  # softcapping: TRL's
        patched.apply(hidden, weight, None, targets, 1.0, 64, None, 1.0, ("log_probs", "mean_logits"))
        cpu_kernels.use_lean_lm_head(False)  # a job with training.cpu_kernels: false
        patched.apply(hidden, weight, None, targets, 1.0, 64, None, 1.0, OUTPUTS)
    assert calls == ["lean", "stock", "stock", "stock"]
    assert trl_utils._ChunkedLogProbFunction is patched


def test_the_plan_turns_them_on_for_the_cpu_only() -> None:
    assert speed.plan(Training(), "cpu").cpu_kernels
    assert not speed.plan(Training(cpu_kernels=False), "cpu").cpu_kernels
    assert not speed.plan(Training(), "cuda").cpu_kernels


def _train(tmp_path: Path, name: str, cpu_kernels_on: bool) -> list[float]:
    rows = tmp_path / "rows.jsonl"
    texts = ["the quick brown fox jumps over the lazy dog " * (1 + i % 4) for i in range(24)]
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    spec = JobSpec.model_validate(
        {
            "base_model": TINY_MODEL,
            "dataset": "ds",
            "quantization": {"bits": 4},
            "lora": {"r": 8, "dropout": 0.0},  # no random masks: both runs must then agree to rounding
            "training": {
                "max_steps": 4,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "logging_steps": 1,
                "eval_fraction": 0.0,
                "checkpoint_every_steps": None,
                "cpu_kernels": cpu_kernels_on,
            },
        }
    )
    losses: list[float] = []

    class Losses(LogReport):
        def train_point(self, point: dict[str, Any]) -> None:
            if point.get("loss") is not None:
                losses.append(point["loss"])

    recipe.run(spec, rows, tmp_path / name, Losses())
    return losses


@pytest.mark.usefixtures("tiny_model")
def test_qlora_trains_the_same_with_and_without_the_cpu_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"lean": 0}
    original = cpu_kernels.LeanLogProbs.apply

    def counted(*args: Any) -> Any:
        calls["lean"] += 1
        return original(*args)

    monkeypatch.setattr(cpu_kernels.LeanLogProbs, "apply", counted)
    lean = _train(tmp_path, "lean", cpu_kernels_on=True)
    lean_calls = calls["lean"]
    assert lean_calls >= 4  # every step's loss went through it
    stock = _train(tmp_path, "stock", cpu_kernels_on=False)
    assert calls["lean"] == lean_calls  # none of the stock run's, though the hook stays installed
    assert len(stock) == len(lean) == 4
    assert lean == pytest.approx(stock, rel=1e-4)
    assert lean[-1] < lean[0]  # and it learns
