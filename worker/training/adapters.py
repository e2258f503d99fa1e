"""The adapter a job trains: the spec's PEFT method as a PEFT config, put on the frozen base model.

One builder per method, chosen by `spec.adapter.method`; the LoRA family reads `spec.lora`. Which method fits
which budget, measured: docs/methods.md.
"""

import json
from pathlib import Path
from typing import Any

from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)

from app.core.errors import Invalid
from app.datasets import access as hub_access
from app.datasets import hub
from app.spec.adapter import (
    PROMPT_LEARNING,
    Ia3Adapter,
    LoraAdapter,
    PrefixTuningAdapter,
    PromptTuningAdapter,
    PTuningAdapter,
)
from app.spec.init_from import hub_adapter_mismatch
from app.spec.job import JobSpec
from worker.training.errors import TrainingError

TASK = "CAUSAL_LM"
# What is read of a Hub adapter repo: its config and safetensors weights (a pickled adapter_model.bin never is).
HUB_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _lora(spec: JobSpec, adapter: LoraAdapter) -> LoraConfig:
    lora = spec.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_dora=adapter.method == "dora",
        use_rslora=adapter.method == "rslora",
        task_type=TASK,
    )


def _ia3(adapter: Ia3Adapter) -> IA3Config:
    # None lets PEFT pick the architecture's modules (Llama: k_proj, v_proj, down_proj; down_proj feed-forward).
    return IA3Config(
        target_modules=adapter.target_modules,
        feedforward_modules=adapter.feedforward_modules,
        task_type=TASK,
    )


def _prefix_tuning(adapter: PrefixTuningAdapter, hidden_size: int) -> PrefixTuningConfig:
    return PrefixTuningConfig(
        num_virtual_tokens=adapter.num_virtual_tokens,
        prefix_projection=adapter.prefix_projection,
        # PEFT builds Linear(hidden, None) when projecting without a width: default to the model's.
        encoder_hidden_size=adapter.encoder_hidden_size or hidden_size,
        task_type=TASK,
    )


def _prompt_tuning(adapter: PromptTuningAdapter, base_model_path: str) -> PromptTuningConfig:
    # PEFT tokenizes init_text with the tokenizer it loads from this path: the base model's own, as the
    # worker resolved it (a local directory, or a Hub id whose files are already cached by then).
    return PromptTuningConfig(
        num_virtual_tokens=adapter.num_virtual_tokens,
        prompt_tuning_init=adapter.init.upper(),
        prompt_tuning_init_text=adapter.init_text,
        tokenizer_name_or_path=base_model_path if adapter.init == "text" else None,
        task_type=TASK,
    )


def _p_tuning(adapter: PTuningAdapter) -> PromptEncoderConfig:
    return PromptEncoderConfig(
        num_virtual_tokens=adapter.num_virtual_tokens,
        encoder_reparameterization_type=adapter.encoder_type.upper(),
        encoder_hidden_size=adapter.encoder_hidden_size,
        encoder_num_layers=adapter.encoder_num_layers,
        encoder_dropout=adapter.encoder_dropout,
        task_type=TASK,
    )


def peft_config(spec: JobSpec, model: Any) -> PeftConfig:
    """The PEFT config for the spec's adapter method, sized to `model` where PEFT needs that."""
    adapter = spec.adapter
    if isinstance(adapter, LoraAdapter):
        return _lora(spec, adapter)
    if isinstance(adapter, Ia3Adapter):
        return _ia3(adapter)
    if isinstance(adapter, PrefixTuningAdapter):
        return _prefix_tuning(adapter, model.config.hidden_size)
    if isinstance(adapter, PromptTuningAdapter):
        return _prompt_tuning(adapter, model.name_or_path)
    return _p_tuning(adapter)


def hub_adapter(spec: JobSpec) -> Path:
    """`init_from.hub`'s adapter files, downloaded as the job's tenant (app/datasets/access.py `current()`: its
    allow-lists and Hub token), after checking again that it was trained on this base with this method."""
    ref = spec.init_from
    assert ref is not None and ref.hub is not None
    access = hub_access.current()
    try:
        hub_access.check_hub_repo(access, ref.hub, "init_from.hub")
        listing = hub.list_repo(ref.hub, "model", access, revision=ref.revision)
        missing = [name for name in HUB_ADAPTER_FILES if name not in listing.files]
        if missing:
            raise Invalid(f"{ref.hub!r} is not a PEFT adapter repo with safetensors weights (no {', '.join(missing)})")
        root = hub.fetch(listing, list(HUB_ADAPTER_FILES), access)
    except (Invalid, hub.HubUnavailable) as exc:
        detail = exc.detail if isinstance(exc, Invalid) else str(exc)
        raise TrainingError("model_not_found", f"could not load init_from.hub {ref.hub!r}: {detail}") from None
    assert root is not None
    config = json.loads((root / "adapter_config.json").read_text(encoding="utf-8"))
    if (mismatch := hub_adapter_mismatch(ref.hub, config, spec.base_model, spec.adapter.method)) is not None:
        raise TrainingError("invalid_spec", f"init_from.hub: {mismatch}")
    return root


def add_adapter(model: Any, spec: JobSpec, init_adapter: Path | None = None) -> PeftModel:
    """The frozen base with the spec's adapter on it, ready to train; with `init_adapter` (`init_from`: an earlier
    job's trained adapter) or `init_from.hub` (a Hub adapter repo, loaded by name as the tenant), that adapter,
    trainable again (its own saved PEFT config applies)."""
    if init_adapter is None and spec.init_from is not None and spec.init_from.hub is not None:
        init_adapter = hub_adapter(spec)
    if init_adapter is not None:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    try:
        return get_peft_model(model, peft_config(spec, model))
    except ValueError as exc:
        field = "lora.target_modules" if isinstance(spec.adapter, LoraAdapter) else f"adapter ({spec.adapter.method})"
        raise TrainingError("invalid_spec", f"{field}: {exc}") from exc


def allows_gradient_checkpointing(spec: JobSpec) -> bool:
    """False for prefix tuning, which trains with gradient checkpointing off whatever the spec says.

    Its learned prefix is handed to the model as a KV cache, and each attention layer appends the real keys and
    values to that cache in place. Checkpointed recomputation runs the layer a second time and appends them
    again, so the keys no longer match the mask ("size of tensor a (15) must match ... (25)" on transformers
    5.24). Without checkpointing it holds every layer's activations: see the memory figures in docs/methods.md.
    """
    return spec.adapter.method != "prefix_tuning"


def fit_training(spec: JobSpec) -> tuple[JobSpec, list[str]]:
    """The spec less the training knobs its method cannot train with, and a warning for each that matters.

    Prompt-learning methods get padded batches, not padding-free ones: PEFT prepends the virtual tokens once per
    row and drops the position ids of prompt and P-tuning, so a flattened batch would become one long sequence
    whose examples attend to one another (same examples per step; only speed differs, so no warning).
    Prefix tuning trains without gradient checkpointing: see `allows_gradient_checkpointing`.
    """
    changes: dict[str, bool] = {}
    warnings = []
    if spec.adapter.method in PROMPT_LEARNING and spec.training.padding_free:
        changes["padding_free"] = False
    if not allows_gradient_checkpointing(spec) and spec.training.gradient_checkpointing:
        changes["gradient_checkpointing"] = False
        warnings.append(
            "training.gradient_checkpointing is off for prefix tuning (its learned prefix is a KV cache that "
            "recomputation would extend twice); activations take more memory than with LoRA"
        )
    if not changes:
        return spec, warnings
    return spec.model_copy(update={"training": spec.training.model_copy(update=changes)}), warnings
