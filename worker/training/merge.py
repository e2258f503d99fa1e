"""Merging an adapter into its base: an unquantized copy of the base with the adapter's weights folded in.

A 4-bit or 8-bit base is never merged into: the base is reloaded in full precision (bf16 on a GPU that has it,
fp32 otherwise) and the adapter applied to that, so the merged weights are dequantized ones. No SQL here: the
export's record is worker/export.py's.
"""

import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.spec.job import JobSpec
from worker.training import model as modelling
from worker.training.errors import TrainingError

MERGEABLE = {"lora", "dora", "rslora", "ia3"}  # prompt-learning methods add virtual tokens: nothing to merge


def merge_adapter(spec: JobSpec, adapter_dir: Path, out_dir: Path) -> Path:
    """Write out_dir: config.json, model.safetensors (merged weights) and the job's tokenizer."""
    if spec.adapter.method not in MERGEABLE:
        raise TrainingError(
            "not_mergeable", f"a {spec.adapter.method} adapter has no weights to merge; export works for lora-like ones"
        )
    source = modelling.resolve_base_model(spec.base_model)
    dtype = modelling.compute_dtype() if modelling.device_type() == "cuda" else torch.float32
    if modelling.prequantized_method(source):
        raise TrainingError(
            "not_mergeable", f"{spec.base_model!r} ships quantized (GPTQ/AWQ): it cannot be dequantized"
        )
    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    shutil.rmtree(out_dir, ignore_errors=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(out_dir)  # the tokenizer the job trained with
    return out_dir
