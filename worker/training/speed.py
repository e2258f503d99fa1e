"""The spec's speed knobs resolved for the machine at hand: what applies here, and a warning for what cannot."""

import importlib.util
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from app.spec.job import Training

log = logging.getLogger(__name__)
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@dataclass
class SpeedPlan:
    """What the recipe does for speed on this device; `warnings` says which requested knobs it had to drop."""

    attn_implementation: str = "sdpa"
    padding_free: bool = True  # flattened batches from the padding-free collator
    group_by_length: bool = False  # the padding reducer where a flattened batch would cost quadratic attention
    use_liger_kernel: bool = False
    torch_compile: bool = False
    fp32_adapter: bool = False  # keep LoRA weights in fp32: every CPU (cpu_trains_in_fp32)
    cpu_kernels: bool = False  # CheapDropout and LeanLogProbs (worker/training/cpu_kernels.py): CPU only
    warnings: list[str] = field(default_factory=list)


@cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16, AMX); elsewhere bf16 is emulated and much slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return bool(CPU_BF16_FLAGS.intersection(flags))


def cpu_trains_in_fp32() -> bool:
    """Train in fp32 on every CPU, even one with bf16 units (AVX512-BF16, AMX).

    Measured on an AVX512-BF16 EPYC (docs/benchmarks.md): bf16 LoRA weights and a bf16 4-bit compute dtype trained
    the bench model only ~11% faster, while the process's memory grew by ~30 MiB every step (native allocations:
    the Python-visible tensors stayed at 10 MiB) to 1.8 GiB after 40 steps; in fp32 it stayed flat at ~0.9 GiB.
    Without bf16 units bf16 is emulated and 2x+ slower as well. `cpu_has_fast_bf16()` still tells them apart.
    """
    return True


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plan(t: Training, device: str, causal_lm: bool = True) -> SpeedPlan:
    """Resolve the knobs; a GPU-only knob on the CPU is dropped, with a warning only when it is not the default.

    `causal_lm=False` (the classifier): its padded batches never flatten, so attention stays the spec's.

    (Stored specs carry every field, so "set explicitly" is lost by the time a worker reads one.)
    """
    on_gpu = device == "cuda"
    result = SpeedPlan(
        attn_implementation=t.attn_implementation,
        fp32_adapter=not on_gpu and cpu_trains_in_fp32(),
        cpu_kernels=t.cpu_kernels and not on_gpu,
    )
    if t.attn_implementation == "flash_attention_2" and not (on_gpu and _installed("flash_attn")):
        result.attn_implementation = "sdpa"
        result.warnings.append("flash_attention_2 needs a GPU and the flash-attn package; using sdpa")
    # A flattened batch is free for the varlen flash kernel; sdpa and eager need a dense block-diagonal mask,
    # quadratic in the whole batch's length. That is cheap for the short batches a CPU trains on, not for a GPU's.
    flat_ok = not on_gpu or result.attn_implementation == "flash_attention_2"
    result.padding_free = t.padding_free and not t.packing and flat_ok
    result.group_by_length = t.padding_free and not t.packing and not flat_ok
    if causal_lm and result.padding_free and result.attn_implementation == "sdpa":
        # SDPA per example of the flattened row instead of over all of it under a block-diagonal mask.
        from worker.training import packed_attention

        result.attn_implementation = packed_attention.NAME
    for knob, installed in (("use_liger_kernel", _installed("liger_kernel")), ("torch_compile", True)):
        if not getattr(t, knob):
            continue
        if on_gpu and installed:
            setattr(result, knob, True)
        elif getattr(t, knob) != Training.model_fields[knob].default:
            where = "on a GPU with the liger-kernel package" if knob == "use_liger_kernel" else "on a GPU"
            result.warnings.append(f"{knob} only applies {where}; ignored here")
    return result


def sampler_args(group_by_length: bool) -> dict[str, Any]:
    """TrainingArguments for length-grouped batches, in this transformers' spelling (renamed in 5.x)."""
    if not group_by_length:
        return {}
    from transformers import TrainingArguments

    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def padding_free_collator(pad_token_id: int) -> Any:
    """TRL's collator in padding-free mode: one row per batch, position ids restarting at each example."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)


def keep_adapter_fp32(model: torch.nn.Module) -> None:
    """Undo TRL's bf16 cast of a quantized model's LoRA weights (right on a GPU, 1.6x slower on bf16-less CPUs)."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def use_cpu_kernels(model: torch.nn.Module, fast: SpeedPlan) -> None:
    """The plan's CPU kernels on this model: cheap LoRA dropout, and the lean LM head for TRL's fused loss."""
    from worker.training import cpu_kernels

    cpu_kernels.use_lean_lm_head(fast.cpu_kernels)  # on or off: the hook outlives the job that installed it
    if fast.cpu_kernels:
        cpu_kernels.use_cheap_dropout(model)


def peak_memory_bytes() -> int:
    """The training process's peak: CUDA memory allocated on a GPU, resident set size on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
