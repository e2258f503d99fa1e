"""A base model with a classification head (decoder or encoder), quantized as the spec says, with its adapter.

`AutoModelForSequenceClassification` gives decoder bases (Llama, Mistral, Qwen) a `score` head that reads the last
non-pad token and encoder bases (BERT) a pooler and a `classifier`. The head is never quantized and trains in
full (PEFT's `modules_to_save`); the body gets the spec's adapter (LoRA by default) for PEFT's SEQ_CLS task.
"""

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from app.spec.examples import render_template
from app.spec.formats import template_fields
from app.spec.job import JobSpec
from worker.training import adapters
from worker.training import model as modelling
from worker.training.errors import TrainingError

HEAD_MODULES = ("classifier", "score", "pooler")  # BERT-style: pooler + classifier; decoders: score
# transformers matches skip patterns from a module boundary (or as a suffix): keeps every head out of 4/8-bit.
SKIP_QUANTIZATION = [r"(?:.*\.)?(?:classifier|score|pooler)"]
LABELS_FILE = "labels.json"
PREDICT_BATCH = 32


def load_classifier(spec: JobSpec, labels: list[str], tokenizer: PreTrainedTokenizerBase, attn: str = "sdpa") -> Any:
    """The frozen base with a fresh head of len(labels) outputs, quantized as the spec says (head excluded)."""
    source = modelling.resolve_base_model(spec.base_model)
    if modelling.prequantized_method(source):
        raise TrainingError(
            "unsupported_model",
            f"{spec.base_model!r} is GPTQ/AWQ-quantized; classification jobs need an unquantized base "
            "(quantization bits 4 or 8 quantizes it here, keeping the head out)",
        )
    kwargs: dict[str, Any] = {
        "dtype": modelling.compute_dtype(),
        "use_safetensors": True,
        "trust_remote_code": False,
        "attn_implementation": attn,
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": "single_label_classification",
    }
    qconfig = modelling.quantization_config(spec.quantization)
    if qconfig is not None:
        qconfig.llm_int8_skip_modules = SKIP_QUANTIZATION
        kwargs["quantization_config"] = qconfig
    if modelling.device_type() == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise modelling._load_error(spec.base_model, exc) from exc
    model.config.use_cache = False
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find each text's last token by it
    for param in model.parameters():
        param.requires_grad = False
    if qconfig is not None:
        modelling.keep_4bit_layers_trainable_on_cpu(model)
    return model


def head_modules(model: torch.nn.Module) -> list[str]:
    """Which of the head's module names this architecture has."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [name for name in HEAD_MODULES if name in names]


def add_adapter(model: Any, spec: JobSpec) -> PeftModel:
    """The spec's adapter for PEFT's SEQ_CLS task, with the head trained in full."""
    config = adapters.peft_config(spec, model)
    config.task_type = "SEQ_CLS"
    if hasattr(config, "modules_to_save"):
        config.modules_to_save = head_modules(model)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingError("invalid_spec", f"adapter ({spec.adapter.method}): {exc}") from exc


def save_classifier(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, labels: list[str], spec: JobSpec, out: Path
) -> Path:
    """The adapter (head included) plus labels.json, which names each output so the adapter is usable alone."""
    modelling.save_adapter(model, tokenizer, out)
    (out / LABELS_FILE).write_text(labels_json(labels, spec))
    return out


def labels_json(labels: list[str], spec: JobSpec) -> str:
    """labels.json: the adapter's outputs by name, and how to build its input text."""
    info = {
        "task": "classification",
        "labels": labels,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "text": spec.format.text_template(),
        "base_model": spec.base_model,
        "max_length": spec.training.max_seq_length,
    }
    return json.dumps(info, indent=2)


class TrainedClassifier:
    """A trained adapter on its base, ready to label texts; loaded once, used for many requests."""

    def __init__(self, spec: JobSpec, adapter_dir: Path):
        info = json.loads((adapter_dir / LABELS_FILE).read_text())
        self.labels: list[str] = info["labels"]
        self.template: str = info.get("text", "{text}")
        self.max_length: int = info.get("max_length", spec.training.max_seq_length)
        self.tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=False)
        self.tokenizer.truncation_side = spec.training.truncation_side
        base = load_classifier(spec, self.labels, self.tokenizer)
        self.model = PeftModel.from_pretrained(base, adapter_dir)
        self.model.eval()

    def _render(self, text: str) -> str:
        fields = template_fields(self.template)
        # A one-column template is applied as in training; with several columns the text is taken as rendered.
        return render_template(self.template, {fields[0]: text}, 0) if len(fields) == 1 else text

    @torch.inference_mode()
    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """For each text: the most likely label and every label's probability."""
        device = next(self.model.parameters()).device
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), PREDICT_BATCH):
            batch = [self._render(t) for t in texts[start : start + PREDICT_BATCH]]
            inputs = self.tokenizer(
                batch, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
            )
            probs = self.model(**inputs.to(device)).logits.float().softmax(-1).cpu().tolist()
            for row in probs:
                best = max(range(len(row)), key=row.__getitem__)
                results.append({"label": self.labels[best], "scores": dict(zip(self.labels, row, strict=True))})
        return results
