"""Load the base model (hub id or FT_MODELS_DIR, safetensors only, no remote code), quantize it, add LoRA."""

import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from app.core.errors import Invalid
from app.datasets import access as hub_access
from app.datasets import hub
from app.fleet.prequantized import quant_method
from app.spec.adapter import PREQUANTIZED_METHODS
from app.spec.job import JobSpec, Quantization
from worker.training import adapters
from worker.training.errors import TrainingError
from worker.training.speed import cpu_trains_in_fp32

log = logging.getLogger(__name__)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# A Hub base model's top-level files that loading reads: config, safetensors weights, tokenizer, chat template.
MODEL_FILES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")


def resolve_base_model(base_model: str) -> str:
    """The folder the base model loads from: its directory in FT_MODELS_DIR, else its Hub files downloaded as the
    job's tenant (app/datasets/access.py `current()`: its token or none, never HF_TOKEN) into huggingface_hub's cache.

    Either only if the tenant may use it: the allow-lists are checked again here, as they may have changed since
    the job was queued. Everything then loads from a local folder, so no later `from_pretrained` asks the Hub with
    the service's token, or is handed a cached private model the tenant's token was never shown to read.
    """
    access = hub_access.current()
    try:
        local = hub_access.check_base_model(access, base_model)
    except Invalid as exc:
        raise TrainingError("invalid_spec", exc.detail) from None
    if local is not None:
        return str(local)
    try:
        listing = hub.list_repo(base_model, "model", access)
        wanted = [p for p in listing.files if "/" not in p and p.endswith(MODEL_FILES)]
        root = hub.fetch(listing, wanted, access)
    except (Invalid, hub.HubUnavailable) as exc:
        detail = exc.detail if isinstance(exc, Invalid) else str(exc)
        raise TrainingError("model_not_found", f"could not load base model {base_model!r}: {detail}") from None
    if root is None:
        raise TrainingError("model_not_found", f"base model {base_model!r} on the Hub has no config or weights")
    return str(root)


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype() -> torch.dtype:
    """bf16 where the GPU has it, fp16 on older GPUs, fp32 on the CPU."""
    if device_type() == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(q: Quantization | None) -> BitsAndBytesConfig | None:
    if q is None:
        return None
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = DTYPES[q.compute_dtype]
    if device_type() == "cpu" and dtype is torch.float16:
        dtype = torch.float32  # the CPU has no fast fp16 matmul
    if device_type() == "cpu" and dtype is torch.bfloat16 and cpu_trains_in_fp32():
        dtype = torch.float32  # bf16 on a CPU: emulated and slow, or (with bf16 units) memory that grows per step
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def _load_error(base_model: str, exc: Exception) -> TrainingError:
    text = str(exc)
    if "safetensors" in text.lower() or "pytorch_model.bin" in text:
        return TrainingError(
            "unsupported_model",
            f"{base_model!r} has no safetensors weights; pickled weights are "
            "never loaded. Convert it to safetensors or pick another model.",
        )
    if "trust_remote_code" in text:
        return TrainingError("unsupported_model", f"{base_model!r} needs custom remote code, which is never run here")
    return TrainingError(
        "model_not_found",
        f"could not load base model {base_model!r}: not a directory in FT_MODELS_DIR and not a model on the "
        f"Hugging Face Hub that this worker can reach ({type(exc).__name__}: {text.splitlines()[0][:300]})",
    )


def load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    source = resolve_base_model(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:
        raise _load_error(base_model, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # the usual choice for decoder models without a pad token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(spec: JobSpec, attn_implementation: str = "sdpa") -> Any:
    """The frozen base model, quantized as the spec says, on the GPU when there is one."""
    source = resolve_base_model(spec.base_model)
    kwargs: dict[str, Any] = {"dtype": compute_dtype(), "use_safetensors": True, "trust_remote_code": False}
    kwargs["attn_implementation"] = attn_implementation
    prequantized = prequantized_method(source)
    if prequantized:
        check_prequantized_base(spec, prequantized)  # its own GPTQ/AWQ weights; never a second quantization
    qconfig = None if prequantized else quantization_config(spec.quantization)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if device_type() == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(spec.base_model, exc) from exc
    model.config.use_cache = False  # the KV cache only costs memory while training
    for param in model.parameters():
        param.requires_grad = False
    if qconfig is not None:
        keep_4bit_layers_trainable_on_cpu(model)
    return model


def keep_4bit_layers_trainable_on_cpu(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights into its inference-only CPU layout.

    On CPUs with AVX512-BF16, the first no-grad forward (an eval pass, a generation) converts a
    Linear4bit's weight, after which training that layer fails. Turning the fast path off keeps
    eval-then-train working; the GPU path is unaffected.
    """
    if device_type() != "cpu":
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def add_lora(model: Any, spec: JobSpec) -> PeftModel:
    """The spec's adapter (LoRA unless `adapter.method` names another) on the base: see worker/training/adapters.py."""
    return adapters.add_adapter(model, spec)


def prequantized_method(source: str) -> str | None:
    """`gptq` or `awq` when the base ships quantized (its config says so), read before any weight is loaded."""
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception:  # load_model names the problem when it loads the model itself
        return None
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    return quant_method({"quantization_config": quantization})


def check_prequantized_base(spec: JobSpec, method: str) -> None:
    """A GPTQ/AWQ base trains LoRA on a GPU with the kernels installed; anything else fails here, in words."""
    from transformers.utils import is_gptqmodel_available, is_optimum_available

    kind = method.upper()
    if device_type() != "cuda":
        raise TrainingError(
            "unsupported_on_cpu",
            f"{spec.base_model!r} is {kind}-quantized and its kernels need a GPU; this worker has none. Run it on "
            "a GPU worker, or train an unquantized base (4-bit QLoRA trains on the CPU too).",
        )
    if spec.adapter.method not in PREQUANTIZED_METHODS:
        raise TrainingError(
            "invalid_spec", f"adapter.method {spec.adapter.method!r} cannot train on a {kind} base; use lora or rslora"
        )
    missing = [] if is_gptqmodel_available() else ["gptqmodel"]
    if method == "gptq" and not is_optimum_available():
        missing.append("optimum")
    if missing:
        raise TrainingError(
            "unsupported_model",
            f"{spec.base_model!r} is {kind}-quantized and this worker lacks {' and '.join(missing)} to load it; "
            f"install them on the GPU workers (pip install {' '.join(missing)})",
        )
    if spec.quantization is not None:
        log.warning("%s is already %s-quantized: spec.quantization is ignored", spec.base_model, kind)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total); 4-bit weights count as the parameters they stand for."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def save_adapter(model: PeftModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
