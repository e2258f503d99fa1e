"""The job spec (body of POST /jobs): one pydantic model, every field defaulted and documented."""

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from app.core.egress import check_url
from app.spec.adapter import Adapter, LoraAdapter, adapter_problems
from app.spec.formats import (
    HUB_ID,
    AlpacaFormat,
    ChatFormat,
    ClassificationFormat,
    HubDataset,
    PromptCompletionFormat,
    ShareGPTFormat,
    StrictModel,
    TemplateFormat,
    TextFormat,
)
from app.spec.init_from import InitFrom
from app.spec.integrations import Integrations
from app.spec.method import Method, SftMethod, method_problem
from app.spec.preference import PreferenceFormat, UnpairedPreferenceFormat

LOCAL_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Format = Annotated[
    TextFormat
    | TemplateFormat
    | PromptCompletionFormat
    | ChatFormat
    | ShareGPTFormat
    | AlpacaFormat
    | PreferenceFormat
    | UnpairedPreferenceFormat
    | ClassificationFormat,
    Field(discriminator="type"),
]


class Quantization(StrictModel):
    bits: Literal[4, 8] = Field(4, description="4: QLoRA (NF4 base); 8: LoRA on an 8-bit base.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (4-bit).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the matmuls on 4-bit weights."
    )


class Lora(StrictModel):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="`all-linear` or a list of module names such as `q_proj`."
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError("target_modules must be `all-linear` or a list of module names")
        if isinstance(value, list) and (not value or not all(re.fullmatch(r"[\w.]+", v) for v in value)):
            raise ValueError("target_modules must be a non-empty list of module names like `q_proj`")
        return value


Optimizer = Literal[
    "paged_adamw_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
    "adamw_torch",
    "adamw_torch_fused",
    "sgd",
    "adafactor",
]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]


class Training(StrictModel):
    epochs: float = Field(1, gt=0, le=1000, description="Passes over the data (max_steps wins when set).")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="Stop after this many steps.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Scheduler = Field("linear", description="Learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(4, ge=1, le=4096, description="Examples per micro-batch per device.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    auto_fit_batch: bool = Field(
        True,
        description="When the estimate says the job fits no GPU of the fleet, halve batch_size and raise "
        "gradient_accumulation_steps (same effective batch) until it fits, instead of refusing the job.",
    )
    max_seq_length: int = Field(512, ge=8, le=131072, description="Tokens per example; longer ones are cut.")
    truncation_side: Literal["right", "left"] = Field("right", description="Which end long examples lose.")
    optimizer: Optimizer = Field("paged_adamw_8bit", description="Optimizer (8-bit paged by default).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations to save memory.")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the data held out for eval loss.")
    eval_every_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (else each epoch).")
    logging_steps: int = Field(1, ge=1, description="Report loss every N steps.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for the data split, shuffling and LoRA init.")
    packing: bool = Field(False, description="Pack several short examples into one sequence (no padding).")
    # Speed knobs: the fast choice is the default; each is guarded so a CPU worker keeps working.
    padding_free: bool = Field(
        True,
        description="Batches without padding: examples are concatenated, position ids restart at each one and "
        "attention never crosses them. Same examples per step as padded batches. On a GPU without "
        "flash_attention_2, batches of similar lengths are grouped instead.",
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa",
        description="Attention kernel: sdpa (PyTorch's fused attention), flash_attention_2 (GPU, needs the "
        "flash-attn package; falls back to sdpa with a warning), eager (plain matmuls, slowest).",
    )
    use_liger_kernel: bool = Field(
        True,
        description="GPU only: Liger's fused Triton kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy) "
        "when the liger-kernel package is installed; ignored on CPU.",
    )
    torch_compile: bool = Field(
        False,
        description="GPU only: compile the model with torch.compile; pays off on long jobs, costs minutes of "
        "compilation on short ones; ignored on CPU.",
    )
    cpu_kernels: bool = Field(
        True,
        description="CPU only: LoRA dropout with 16-bit random draws and a lean fused LM-head loss (log-probs, "
        "entropy, top-1 in a few whole-tile ops); the same results at ~1.2x the stock ops' tokens/s on a CPU. "
        "Ignored on a GPU, where the stock CUDA ops are already fast.",
    )
    load_best: bool = Field(
        False, description="Keep the adapter from the evaluation with the lowest eval loss, not the last step's."
    )
    metric_for_best: Literal["eval_loss", "accuracy", "f1"] = Field(
        "eval_loss",
        description="What load_best compares: eval_loss (lowest wins), or for classification jobs accuracy or "
        "macro f1 (highest wins).",
    )
    checkpoint_every_steps: int | None = Field(
        100, ge=1, description="Save a resumable checkpoint every N steps (null: only on a graceful stop)."
    )
    evaluate_base: bool = Field(
        False,
        description="After training, compare the base model with the adapter on the eval data: eval loss, "
        "perplexity and, for label tasks (text -> one of a few labels), exact-match accuracy; see docs/try-it.md.",
    )


class Resources(StrictModel):
    """What one machine must have to run the job; the API routes the job to workers that have it."""

    gpus: int = Field(
        1, ge=1, le=64, description="GPUs on one machine the job trains on (one process each; on a CPU worker: slots)."
    )
    min_gpu_memory_gb: float | None = Field(
        None, gt=0, le=4096, description="Least memory each of those GPUs must have, in GiB; null: any GPU."
    )


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]


# A chat fine-tune of an uploaded dataset (a made-up id): what most jobs set.
EXAMPLE = {"base_model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "dataset": "ds_0123456789abcdef01234567"}
EXAMPLE |= {"name": "support-bot", "format": {"type": "chat"}, "training": {"max_steps": 200}}


class JobSpec(StrictModel):
    """What to fine-tune, on which data, and how."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})  # shown in /docs, fuzzed first

    name: str | None = Field(None, max_length=200, description="A label for people.")
    task: Literal["causal_lm", "classification"] = Field(
        "causal_lm",
        description="`causal_lm`: learn to generate the text. `classification`: a head that picks one of the "
        "labels for each text (format type `classification`); see docs/classification.md.",
    )
    base_model: str = Field(
        description="A Hugging Face Hub id (`TinyLlama/TinyLlama-1.1B-Chat-v1.0`) or a directory in FT_MODELS_DIR. "
        "A Hub PEFT adapter repo means its base, with that adapter trained on (the job's spec then shows the base "
        "and `init_from: {hub}`); see docs/hub.md."
    )
    dataset: str | HubDataset = Field(description="An uploaded dataset id, or `{hub, split}`.")
    validation_dataset: str | HubDataset | None = Field(None, description="Held-out data for eval loss.")
    format: Format = Field(default_factory=TextFormat, description="How rows become training text.")
    quantization: Quantization | None = Field(
        default_factory=Quantization, description="4-bit QLoRA by default; 8-bit; null: no quantization."
    )
    lora: Lora = Field(default_factory=Lora, description="The LoRA adapter.")
    adapter: Adapter = Field(
        default_factory=LoraAdapter,
        description="The PEFT method: `lora` (default), `dora`, `rslora` (these three use `lora`'s settings), "
        "`ia3`, `prefix_tuning`, `prompt_tuning`, `p_tuning`; see docs/methods.md.",
    )
    method: Method = Field(
        default_factory=SftMethod,
        description="`sft` (supervised, the default), or preference tuning: `dpo`, `kto`, `orpo`, `simpo`; "
        "see docs/preference.md.",
    )
    init_from: InitFrom | None = Field(
        None,
        description="Continue from another job's adapter (or one of its checkpoints), or from a Hub adapter repo "
        "(`{hub}`); null: a fresh adapter.",
    )
    training: Training = Field(default_factory=Training, description="The optimisation loop.")
    resources: Resources = Field(
        default_factory=Resources,
        description="GPUs per machine and GPU memory the job needs; it waits for a worker that has them "
        "(docs/operations.md, Fleet).",
    )
    priority: int = Field(
        0, ge=0, le=9, description="0 to 9: among queued jobs a worker could run, a higher priority starts first."
    )
    metadata: Metadata | None = Field(
        None, description="Up to 16 string labels (keys up to 64 characters, values up to 512), as in OpenAI's API."
    )
    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description="An http(s) URL POSTed (signed, retried) when the job succeeds, fails or is cancelled.",
    )
    integrations: Integrations = Field(
        default_factory=list,
        description="Experiment trackers the job's settings, metric points and adapter are logged to: "
        '`{"type": "wandb", "wandb": {"project": ...}}` (OpenAI\'s shape) and `{"type": "mlflow", "mlflow": '
        '{"tracking_uri": ...}}`; credentials are the tenant\'s secrets. See docs/trackers.md.',
    )

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("name must be printable text (no control characters)")
        return value

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str) -> str:
        if "://" in value or value.startswith(("/", ".", "~")) or ".." in value or "\\" in value:
            raise ValueError("base_model must be a hub id like `owner/name` or a directory name in FT_MODELS_DIR")
        if not (HUB_ID.fullmatch(value) or LOCAL_MODEL.fullmatch(value)):
            raise ValueError("base_model must be a hub id like `owner/name` or a directory name in FT_MODELS_DIR")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        # Refused here: a bad scheme and a literal non-public host (FT_EGRESS_ALLOW); a name is checked when sent.
        return None if value is None else check_url(value)

    @model_validator(mode="after")
    def _eval_needs_data(self) -> "JobSpec":
        if self.training.eval_every_steps and not (self.training.eval_fraction or self.validation_dataset):
            raise ValueError("training.eval_every_steps needs training.eval_fraction > 0 or a validation_dataset")
        if self.training.load_best and not (self.training.eval_fraction or self.validation_dataset):
            raise ValueError("training.load_best needs training.eval_fraction > 0 or a validation_dataset")
        if self.training.evaluate_base and not (self.training.eval_fraction or self.validation_dataset):
            raise ValueError("training.evaluate_base needs training.eval_fraction > 0 or a validation_dataset")
        return self

    @model_validator(mode="before")
    @classmethod
    def _task_from_format(cls, data: Any) -> Any:
        """A classification format with no `task` given means a classification job."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "classification" and "task" not in data:
            return {**data, "task": "classification"}
        return data

    @model_validator(mode="after")
    def _task_fits_format(self) -> "JobSpec":
        classifying = self.format.type == "classification"
        if (self.task == "classification") != classifying:
            raise ValueError('task "classification" goes with format {"type": "classification", ...}, and only it')
        if self.training.metric_for_best != "eval_loss" and not classifying:
            raise ValueError(f"training.metric_for_best {self.training.metric_for_best!r} needs task classification")
        if classifying and self.training.packing:
            raise ValueError("training.packing does not apply to classification (one label per text)")
        return self

    @model_validator(mode="after")
    def _method_fits(self) -> "JobSpec":
        t = self.training
        sft_only = [f"training.{name}" for name in ("load_best", "evaluate_base") if getattr(t, name)]
        m = self.method.type
        if problem := method_problem(m, self.format.type, t.packing, self.adapter.method, t.batch_size, sft_only):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _adapter_fits(self) -> "JobSpec":
        bits = self.quantization.bits if self.quantization else None
        if problems := adapter_problems(self.adapter, bits, self.training.packing):
            raise ValueError("; ".join(problems))
        return self
