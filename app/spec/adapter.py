"""The job spec's `adapter`: which PEFT method trains (LoRA by default), each with its own validated settings.

Defaults are the ones PEFT's configs and method guides use. The LoRA family (`lora`, `dora`, `rslora`) reads its
rank, alpha, dropout and targets from the spec's `lora` object, so specs written before `adapter` existed keep
their meaning; the other methods ignore `lora`. See docs/methods.md for what each method costs and reaches.
"""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

LORA_FAMILY = ("lora", "dora", "rslora")
# Methods that prepend learned virtual tokens instead of changing weights (PEFT's "prompt learning").
PROMPT_LEARNING = ("prefix_tuning", "prompt_tuning", "p_tuning")
# The methods PEFT 0.21 can put on a GPTQ- or AWQ-quantized base: its GPTQ/AWQ LoRA layers refuse DoRA,
# IA3 has no layer for those kernels, and the prompt-learning methods were never run on one here.
PREQUANTIZED_METHODS = ("lora", "rslora")


def _module_names(value: list[str] | None, field: str) -> list[str] | None:
    if value is not None and not all(re.fullmatch(r"[\w.]+", v) for v in value):
        raise ValueError(f"{field} must be module names like `k_proj`, got {value!r}")
    return value


class _Method(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraAdapter(_Method):
    """LoRA and its two variants; rank, alpha, dropout, targets and bias come from the spec's `lora`."""

    method: Literal["lora", "dora", "rslora"] = Field(
        "lora",
        description="`lora`: low-rank updates (scale alpha/r). `dora`: LoRA plus a learned magnitude per output "
        "(weight-decomposed; better at low rank, ~1.5-2x slower). `rslora`: rank-stabilised scale alpha/sqrt(r), "
        "for high ranks.",
    )


class Ia3Adapter(_Method):
    """IA3: learned vectors that rescale keys, values and the feed-forward input; the fewest parameters."""

    method: Literal["ia3"] = Field("ia3", description="IA3 (infused adapter by inhibiting and amplifying).")
    target_modules: list[str] | None = Field(
        None,
        description="Modules rescaled; null: PEFT's choice for the architecture (Llama: k_proj, v_proj, down_proj).",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Which target_modules are feed-forward (their input is rescaled, not their output); "
        "null: PEFT's choice (Llama: down_proj). Required with target_modules, and a subset of them.",
    )

    @field_validator("target_modules", "feedforward_modules")
    @classmethod
    def _names(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        return _module_names(value, info.field_name or "modules")

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> "Ia3Adapter":
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module, or be null for PEFT's choice")
        if self.target_modules is None and self.feedforward_modules is not None:
            raise ValueError("feedforward_modules needs target_modules too (it must be a subset of them)")
        if self.target_modules is not None and self.feedforward_modules is None:
            raise ValueError("with target_modules, set feedforward_modules too: a subset of them, or [] for none")
        extra = set(self.feedforward_modules or ()) - set(self.target_modules or ())
        if extra:
            raise ValueError(f"feedforward_modules must be a subset of target_modules, got {sorted(extra)} extra")
        return self


VirtualTokens = Annotated[int, Field(ge=1, le=512)]


class PrefixTuningAdapter(_Method):
    """Prefix tuning: learned keys and values prepended at every layer (trains with gradient checkpointing off)."""

    method: Literal["prefix_tuning"] = Field("prefix_tuning", description="Prefix tuning (Li & Liang, 2021).")
    num_virtual_tokens: VirtualTokens = Field(20, description="Length of the learned prefix, in tokens.")
    prefix_projection: bool = Field(
        False, description="Reparameterise the prefix through a two-layer MLP (more parameters while training)."
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, le=65536, description="Width of that MLP; null: the model's hidden size."
    )

    @model_validator(mode="after")
    def _projection_width(self) -> "PrefixTuningAdapter":
        if self.encoder_hidden_size is not None and not self.prefix_projection:
            raise ValueError("encoder_hidden_size applies only with prefix_projection: true")
        return self


class PromptTuningAdapter(_Method):
    """Prompt tuning: learned input embeddings prepended to every example, started from a text."""

    method: Literal["prompt_tuning"] = Field("prompt_tuning", description="Prompt tuning (Lester et al., 2021).")
    num_virtual_tokens: VirtualTokens = Field(20, description="Length of the learned prompt, in tokens.")
    init: Literal["text", "sample_vocab", "random"] = Field(
        "text",
        description="Start from the embeddings of init_text (repeated or cut to num_virtual_tokens; what the "
        "paper and PEFT recommend), of random vocabulary tokens, or from random vectors.",
    )
    init_text: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="The text the prompt starts from when init is `text`, e.g. `Classify the sentiment of this "
        "review:`; tokenized with the base model's tokenizer on the worker.",
    )

    @model_validator(mode="after")
    def _text_for_text_init(self) -> "PromptTuningAdapter":
        if self.init == "text" and not (self.init_text and self.init_text.strip()):
            raise ValueError("init_text is required when init is `text` (or set init to `sample_vocab`)")
        if self.init != "text" and self.init_text is not None:
            raise ValueError(f"init_text applies only when init is `text`, not {self.init!r}")
        return self


class PTuningAdapter(_Method):
    """P-tuning: virtual tokens produced by a small trained encoder (MLP or LSTM) over learned embeddings."""

    method: Literal["p_tuning"] = Field("p_tuning", description="P-tuning (Liu et al., 2021).")
    num_virtual_tokens: VirtualTokens = Field(20, description="How many virtual tokens are prepended.")
    encoder_type: Literal["mlp", "lstm"] = Field("mlp", description="The prompt encoder (PEFT's default: MLP).")
    encoder_hidden_size: int = Field(128, ge=1, le=65536, description="Width of the prompt encoder.")
    encoder_num_layers: int = Field(2, ge=1, le=8, description="LSTM layers (the MLP always has two).")
    encoder_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in the LSTM encoder.")

    @model_validator(mode="after")
    def _lstm_only(self) -> "PTuningAdapter":
        if self.encoder_type == "mlp" and self.encoder_num_layers != 2:
            raise ValueError(f"encoder_num_layers applies to the `lstm` encoder only, got {self.encoder_num_layers}")
        return self


AdapterSettings = LoraAdapter | Ia3Adapter | PrefixTuningAdapter | PromptTuningAdapter | PTuningAdapter
Adapter = Annotated[AdapterSettings, Field(discriminator="method")]


def adapter_problems(adapter: AdapterSettings, bits: int | None, packing: bool) -> list[str]:
    """Combinations of method, quantization and packing that PEFT or bitsandbytes cannot train, with the reason.

    Each was seen failing (or silently training the wrong thing) on the CPU with the pinned versions; the rest of
    the method x base grid (none, 4-bit, 8-bit) trains, saves and reloads: tests/training/test_adapter_methods.py.
    """
    method = adapter.method
    problems = []
    if method == "dora" and bits == 8:
        problems.append(
            "adapter.method `dora` cannot train on an 8-bit base (quantization.bits 8): with bitsandbytes 0.50 "
            "and PEFT 0.21 DoRA's forward pass loses the int8 weight state and fails; use quantization.bits 4 "
            "or null, or method `lora`"
        )
    if method in PROMPT_LEARNING and packing:
        problems.append(
            f"adapter.method `{method}` cannot train with training.packing: its virtual tokens are prepended once "
            "per packed row, not per example, and PEFT drops the position ids that keep packed examples apart; "
            "set training.packing to false"
        )
    return problems
