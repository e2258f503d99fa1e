"""Two CPU replacements for ops whose stock versions dominate a small model's CPU step (docs/benchmarks.md).

- `CheapDropout`: LoRA's input dropout with its random mask drawn 16 bits at a time. `torch.bernoulli_` draws one
  32-bit Mersenne-Twister number per element on a CPU, which was 17% of a step; four 16-bit draws per 64-bit
  number cut that about 5x. Same distribution (the drop probability is rounded to 1/65536), independent masks per
  module, the same RNG stream (so checkpointing's recomputed forward replays the same mask).
- `LeanLogProbs`: TRL's fused LM head (log-probabilities, entropy and top-1 per token without the full logits)
  computed in a few whole-tile torch ops. TRL's CPU fallback folds each tile through a dozen elementwise passes
  (online logsumexp, written for its Triton kernel) and cost 25% of a step, three times plain cross-entropy.
  Tiles of at most 1024 tokens and 4M logits keep the full logits unmaterialized, as TRL's does; the backward
  recomputes them. At its peak it holds two tile-sized temporaries; TRL's CPU fold about ten.

GPUs keep the stock ops: CUDA's dropout and TRL's Triton kernel are already fast there.
"""

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

TOKEN_CHUNK = 1024  # tokens per logits tile at most: 1024 x vocabulary fp32 values (16 MiB for 4096 words)
TILE_ELEMENTS = 1 << 22  # and at most this many logits (16 MiB), so a 150k vocabulary gets 64-token tiles
MIN_TOKENS = 64


def tile_tokens(vocab: int) -> int:
    """Tokens per logits tile for this vocabulary (app/fleet/estimate.py counts the same tiles)."""
    return max(MIN_TOKENS, min(TOKEN_CHUNK, TILE_ELEMENTS // max(vocab, 1)))


_INT16_SPAN = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Dropout's float mask: 1 / (1 - p') with probability 1 - p', else 0 (p' = p rounded to 1/65536)."""
    n = math.prod(shape)
    dropped = round(p * _INT16_SPAN)
    scale = _INT16_SPAN / (_INT16_SPAN - dropped)
    # One 64-bit draw from the default generator gives four uniform 16-bit values, u in [-32768, 32767].
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    u = words.view(torch.int16)[:n].view(shape).to(torch.float32)
    # Kept where u >= threshold: (u - threshold + 1) * scale is >= scale there and <= 0 elsewhere. Float ops
    # throughout: a bool mask's comparisons and multiplications run 2-4x slower on a CPU than float ones.
    return u.sub_(dropped - (1 << 15) - 1).mul_(scale).clamp_(0, scale)


class CheapDropout(torch.nn.Module):
    """nn.Dropout with 16-bit random draws (module docstring); identity in eval mode or at p = 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * keep_mask(x.shape, self.p, x.device).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cheap_dropout(model: torch.nn.Module) -> int:
    """Swap every PEFT LoRA dropout (`lora_dropout[adapter]`, an nn.Dropout) for CheapDropout; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                dropouts[name] = CheapDropout(dropout.p)
                swapped += 1
    return swapped


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    z = torch.mm(hidden, weight.t()) if bias is None else torch.addmm(bias, hidden, weight.t())
    return z.mul_(scale) if scale != 1.0 else z


class LeanLogProbs(torch.autograd.Function):
    """Per-token log p(target), entropy and is-top-1 of `hidden @ weight.T * scale`, TRL's fused-head contract.

    Returns (log_probs, entropy | None, None, None, is_top1 | None): log_sum_sq_probs and mean_logits are not
    computed (`cpu_fused_lm_head` leaves those calls to TRL). The backward handles gradients of both the
    log-probabilities and the entropy, into the hidden states, the weight and the bias.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        scale: float,
        outputs: tuple[str, ...],
    ) -> tuple[torch.Tensor | None, ...]:
        ctx.set_materialize_grads(False)
        n, chunk = hidden.shape[0], tile_tokens(weight.shape[0])
        h = hidden.float()
        w, b = weight.float(), None if bias is None else bias.float()
        log_z = torch.empty(n, dtype=torch.float32, device=hidden.device)
        log_probs = torch.empty_like(log_z)
        entropy = torch.empty_like(log_z) if "entropy" in outputs else None
        top1 = torch.empty(n, dtype=torch.bool, device=hidden.device) if "is_top1" in outputs else None
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            t = targets[start:end, None]
            z = _logits(h[start:end], w, b, scale)
            if top1 is not None:
                top1[start:end] = z.argmax(-1) == targets[start:end]  # the first maximum, as TRL counts it
            top = z.amax(-1, keepdim=True)
            z.sub_(top)  # shifted logits, <= 0
            e = torch.exp(z)
            sum_e = e.sum(-1)
            log_sum = torch.log(sum_e)
            log_z[start:end] = top.squeeze(-1) + log_sum  # log p = logits - log_z
            log_probs[start:end] = z.gather(-1, t).squeeze(-1) - log_sum
            if entropy is not None:  # H = log_sum - sum(e z) / sum(e)
                # row-wise dot product as a batched matmul: no third tile-sized temporary
                entropy[start:end] = log_sum - torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1) / sum_e
            del z, e
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, entropy)
        ctx.scale = scale
        return log_probs, entropy, None, None, top1

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor | None, grad_entropy: torch.Tensor | None, *_: Any) -> tuple:
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        h = hidden.float()
        w, b = weight.float(), None if bias is None else bias.float()
        grad_hidden = torch.zeros_like(h) if need_hidden else None
        grad_weight = torch.zeros_like(w) if need_weight else None
        grad_bias = torch.zeros_like(b) if need_bias and b is not None else None
        chunk = tile_tokens(w.shape[0])
        for start in range(0, h.shape[0], chunk):
            end = min(start + chunk, h.shape[0])
            z = _logits(h[start:end], w, b, ctx.scale)
            z.sub_(log_z[start:end, None])  # log p
            p = torch.exp(z)
            # d/dz of g * log p_t is g * (onehot_t - p); of g' * H it is -g' * p * (log p + H).
            grad = None
            if grad_entropy is not None:
                grad = z.add_(entropy[start:end, None]).mul_(p).mul_(-grad_entropy[start:end, None])
            if grad_log_probs is not None:
                g = grad_log_probs[start:end, None].float()
                grad = p.mul_(-g) if grad is None else grad.sub_(p.mul_(g))
                grad.scatter_add_(-1, targets[start:end, None], g)
            if grad is None:
                continue
            grad.mul_(ctx.scale)
            if grad_hidden is not None:
                torch.mm(grad, w, out=grad_hidden[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), h[start:end])
            if grad_bias is not None:
                grad_bias.add_(grad.sum(0))
            del z, p, grad
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
            None,
        )


_LEAN_OUTPUTS = {"log_probs", "entropy", "is_top1"}


_lean_enabled = False  # set per job by use_lean_lm_head: one job at a time per worker process


def _dispatching(stock: Any) -> type:
    """An `apply`-bearing stand-in for TRL's ChunkedLogProbFunction: CPU calls it can serve go to LeanLogProbs."""

    class CpuFusedLogProbs:
        original = stock

        @staticmethod
        def apply(
            hidden: torch.Tensor,
            weight: torch.Tensor,
            bias: torch.Tensor | None,
            targets: torch.Tensor,
            temperature: float,
            chunk_size: int,
            final_logit_softcapping: float | None = None,
            logit_scale: float = 1.0,
            outputs: tuple[str, ...] = ("log_probs",),
        ) -> Any:
            lean = _lean_enabled and hidden.device.type == "cpu" and final_logit_softcapping is None
            if not lean or set(outputs) - _LEAN_OUTPUTS:
                args = (temperature, chunk_size, final_logit_softcapping, logit_scale, outputs)
                return stock.apply(hidden, weight, bias, targets, *args)
            return LeanLogProbs.apply(hidden, weight, bias, targets, logit_scale / temperature, tuple(outputs))

    return CpuFusedLogProbs


def use_lean_lm_head(enabled: bool = True) -> bool:
    """Route TRL's fused LM head through LeanLogProbs on the CPU (`enabled`), or back to TRL's own (not).

    The hook is process-wide and installed once; `enabled` is read at each call, so a later job with
    `training.cpu_kernels: false` gets TRL's kernel again. GPU calls always reach TRL's. Returns False, with a log
    line, where this TRL has no such hook (then its own CPU path runs: slower, still correct).
    """
    global _lean_enabled
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a worker dependency
        return False
    stock = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if stock is None or not callable(getattr(stock, "apply", None)):
        log.info("this trl has no _ChunkedLogProbFunction; its own CPU LM head runs")
        return False
    if getattr(stock, "original", None) is None:
        trl_utils._ChunkedLogProbFunction = _dispatching(stock)
    _lean_enabled = enabled
    return True


def stock_lm_head() -> Callable[..., Any] | None:
    """TRL's own function behind the patch (for tests comparing the two), or None when nothing is patched."""
    from trl.trainer import utils as trl_utils

    return getattr(trl_utils._ChunkedLogProbFunction, "original", None)
