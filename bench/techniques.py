"""Each speed technique on its own: our setting against the recipe's, one knob apart, on the same batches.

Leave-one-out from our defaults: for each technique two models differ only in it, and their training steps
(forward + backward) alternate, so a loaded machine slows both alike. Median step time, and on a GPU the
peak memory of a step.
"""

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workload import Workload, read_texts


@dataclass(frozen=True)
class Variant:
    padding_free: bool = True
    reentrant: bool = False
    compute_dtype: str = "auto"  # "auto": ours (bf16 on a GPU or a CPU with bf16 units, else fp32)
    upcast: bool = False  # prepare_model_for_kbit_training's fp32 casts
    attn: str = "auto"  # "auto": ours (sdpa per example of a flattened batch on the CPU, sdpa on a GPU)
    adapter_dtype: str = "auto"  # "auto": ours (fp32 on a CPU without bf16 units, TRL's bf16 elsewhere)
    cheap_dropout: bool = True  # CPU: LoRA dropout with 16-bit random draws (cpu_kernels.CheapDropout)
    lean_head: bool = True  # CPU: the fused LM head's loss through cpu_kernels.LeanLogProbs, not TRL's CPU path


def techniques(cuda: bool) -> list[tuple[str, Variant]]:
    """(name, the recipe's choice for that one knob); ours is Variant()."""
    return [
        ("padding-free batches (vs padded to longest)", Variant(padding_free=False)),
        ("non-reentrant checkpointing (vs reentrant)", Variant(reentrant=True)),
        (
            "4-bit compute dtype: ours (vs fp32 default)" if cuda else "fp32 4-bit compute (vs bf16) on this CPU",
            Variant(compute_dtype="float32" if cuda else "bfloat16"),
        ),
        ("no fp32 upcast of other layers (vs prepare_model_for_kbit_training)", Variant(upcast=True)),
        ("sdpa attention, per example on a CPU (vs eager)", Variant(attn="eager")),
        *(
            []
            if cuda
            else [
                ("fp32 LoRA weights (vs TRL's bf16 cast) on this CPU", Variant(adapter_dtype="bfloat16")),
                ("sdpa per example (vs over the flattened row, block-diagonal mask)", Variant(attn="sdpa")),
                ("LoRA dropout, 16-bit draws (vs torch's bernoulli_)", Variant(cheap_dropout=False)),
                ("lean fused LM head (vs TRL's CPU fallback)", Variant(lean_head=False)),
            ]
        ),
    ]


def _attn(v: Variant, cuda: bool) -> str:
    if v.attn != "auto":
        return v.attn
    if cuda or not v.padding_free:
        return "sdpa"
    from worker.training import packed_attention

    return packed_attention.NAME


def _model(v: Variant, model_dir: Path, w: Workload) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from worker.training.speed import cpu_trains_in_fp32

    cuda = torch.cuda.is_available()
    fast_bf16 = cuda or not cpu_trains_in_fp32()
    dtype = {"auto": torch.bfloat16 if fast_bf16 else torch.float32, "bfloat16": torch.bfloat16}.get(
        v.compute_dtype, torch.float32
    )
    qconfig = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    kwargs: dict[str, Any] = {"quantization_config": qconfig, "attn_implementation": _attn(v, cuda)}
    kwargs["dtype"] = torch.bfloat16 if cuda else torch.float32
    if cuda:
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.config.use_cache = False
    checkpointing = {"use_reentrant": v.reentrant}
    if v.upcast:
        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs=checkpointing)
    else:
        for param in model.parameters():
            param.requires_grad = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # the loss as SFTTrainer computes it
    lora = LoraConfig(r=w.lora_r, lora_alpha=w.lora_alpha, lora_dropout=w.lora_dropout, target_modules="all-linear")
    model = get_peft_model(model, lora)
    if v.cheap_dropout and not cuda:
        from worker.training.cpu_kernels import use_cheap_dropout

        use_cheap_dropout(model)
    model.lean_head = v.lean_head and not cuda
    adapter = {"auto": torch.bfloat16 if fast_bf16 else torch.float32, "bfloat16": torch.bfloat16}[v.adapter_dtype]
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(adapter)
    model.train()
    return model


def _batches(w: Workload, model_dir: Path, train: Path, n: int) -> list[list[list[int]]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = read_texts(train)[: n * w.batch_size]
    ids = [tokenizer(t, truncation=True, max_length=w.max_seq_length).input_ids for t in texts]
    return [ids[i : i + w.batch_size] for i in range(0, len(ids), w.batch_size)]


def _inputs(batch: list[list[int]], padding_free: bool, device: str) -> dict[str, Any]:
    import torch

    if padding_free:
        flat = torch.tensor([[t for ids in batch for t in ids]])
        positions = torch.tensor([[p for ids in batch for p in range(len(ids))]])
        labels = flat.clone()
        labels[positions == 0] = -100
        return {"input_ids": flat.to(device), "position_ids": positions.to(device), "labels": labels.to(device)}
    longest = max(len(ids) for ids in batch)
    input_ids = torch.tensor([ids + [2] * (longest - len(ids)) for ids in batch])
    mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in batch])
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _step(model: Any, inputs: dict[str, Any]) -> tuple[float, int]:
    import torch

    from worker.training.cpu_kernels import use_lean_lm_head

    use_lean_lm_head(model.lean_head)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        model(**inputs, fused_lm_head=True).loss.backward()
    if cuda:
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started, torch.cuda.max_memory_allocated() if cuda else 0


def measure(name: str, without: Variant, w: Workload, model_dir: Path, batches: list, rounds: int) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {"with": _model(Variant(), model_dir, w), "without": _model(without, model_dir, w)}
    times: dict[str, list[float]] = {"with": [], "without": []}
    memory = {"with": 0, "without": 0}
    for side in models:  # one untimed warm-up step each
        _step(
            models[side],
            _inputs(batches[0], Variant().padding_free if side == "with" else without.padding_free, device),
        )
    for r in range(rounds):
        batch = batches[r % len(batches)]
        for side in ("without", "with") if r % 2 else ("with", "without"):
            flat = (Variant() if side == "with" else without).padding_free
            seconds, peak = _step(models[side], _inputs(batch, flat, device))
            times[side].append(seconds)
            memory[side] = max(memory[side], peak)
    del models
    with_ms, without_ms = (1000 * statistics.median(times[s]) for s in ("with", "without"))
    return {
        "name": name,
        "with_ms": with_ms,
        "without_ms": without_ms,
        "speedup": without_ms / with_ms,
        "with_peak_bytes": memory["with"] or None,
        "without_peak_bytes": memory["without"] or None,
        "rounds": rounds,
    }


def measure_all(w: Workload, model_dir: Path, train: Path, rounds: int = 8) -> list[dict[str, Any]]:
    import torch

    batches = _batches(w, model_dir, train, n=rounds)
    return [measure(name, v, w, model_dir, batches, rounds) for name, v in techniques(torch.cuda.is_available())]
