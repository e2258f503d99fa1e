"""Every adapter method trains a few steps on the tiny model (4-bit base where supported) through the real recipe.

For each: the adapter's weights moved and the base's did not, the saved adapter reloads with
`PeftModel.from_pretrained` and reproduces the trained model, its outputs differ from the base model's, and
it packs into the downloadable archive like LoRA's. A GPTQ base is refused on the CPU, in words.
"""

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from app.spec.job import JobSpec
from tests.conftest import MODELS_DIR, TINY_MODEL
from worker.artifacts import pack_directory
from worker.training import adapters, recipe
from worker.training import model as modelling
from worker.training.errors import TrainingError
from worker.training.progress import LogReport

REVIEWS = [
    ("The food was terrible and the service slow.", "negative"),
    ("This movie was wonderful, great acting.", "positive"),
    ("So many books, so little time.", "positive"),
    ("A boring, awful story.", "negative"),
] * 2
FOUR_BIT = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
PROMPT = {"method": "prompt_tuning", "num_virtual_tokens": 6, "init_text": "Label the review:"}
# (adapter, quantization, PEFT's name for it). Every method on a 4-bit base; one each on 8-bit and unquantized.
CASES = [
    ({"method": "lora"}, FOUR_BIT, "LORA"),
    ({"method": "dora"}, FOUR_BIT, "LORA"),
    ({"method": "rslora"}, FOUR_BIT, "LORA"),
    ({"method": "ia3"}, FOUR_BIT, "IA3"),
    ({"method": "prefix_tuning", "num_virtual_tokens": 6}, FOUR_BIT, "PREFIX_TUNING"),
    (PROMPT, FOUR_BIT, "PROMPT_TUNING"),
    ({"method": "p_tuning", "num_virtual_tokens": 6, "encoder_hidden_size": 64}, FOUR_BIT, "P_TUNING"),
    ({"method": "ia3"}, {"bits": 8}, "IA3"),
    ({"method": "dora"}, None, "LORA"),
]


class Recorder(LogReport):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def _spec(adapter: dict[str, Any], quantization: dict[str, Any] | None) -> JobSpec:
    return JobSpec.model_validate(
        {
            "base_model": TINY_MODEL,
            "dataset": "reviews",
            "format": {"type": "prompt_completion", "prompt": "{review} ->", "completion": " {label}"},
            "quantization": quantization,
            "adapter": adapter,
            "lora": {"r": 8, "alpha": 16},
            # Prompt-learning methods want a far higher rate than LoRA's 2e-4 (docs/methods.md); a few steps
            # at 3e-2 move every method's weights.
            "training": {"max_steps": 3, "batch_size": 4, "learning_rate": 3e-2, "optimizer": "adamw_torch"},
        }
    )


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The logits at the real tokens' positions (prompt and P-tuning prepend their virtual tokens' too)."""
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -ids.shape[1] :].float()


def _case_id(adapter: dict[str, Any], quantization: dict[str, Any] | None) -> str:
    return f"{adapter['method']}-{quantization['bits'] if quantization else 32}bit"


@pytest.mark.parametrize(("adapter", "quantization", "peft_type"), CASES, ids=[_case_id(a, q) for a, q, _ in CASES])
def test_method_trains_saves_and_reloads(
    adapter: dict[str, Any],
    quantization: dict[str, Any] | None,
    peft_type: str,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = tmp_path / "reviews.jsonl"
    rows.write_text("".join(json.dumps({"review": r, "label": lab}) + "\n" for r, lab in REVIEWS))
    spec = _spec(adapter, quantization)
    built: dict[str, Any] = {}
    add_adapter = adapters.add_adapter

    def spy(model: Any, spec: JobSpec, init_adapter: Any = None) -> PeftModel:
        peft_model = add_adapter(model, spec, init_adapter)
        built["model"] = peft_model
        built["before"] = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
        return peft_model

    monkeypatch.setattr(adapters, "add_adapter", spy)
    report = Recorder()
    result = recipe.run(spec, rows, tmp_path / "out", report)

    assert result.steps == 3 and 0 < result.trainable_parameters < result.total_parameters
    trained: PeftModel = built["model"].eval()
    moved = [n for n, p in trained.named_parameters() if p.requires_grad and not torch.equal(p, built["before"][n])]
    assert moved, "no adapter weight moved in training"
    for name, param in trained.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, built["before"][name]), f"base weight {name} changed"
    if adapter["method"] == "prefix_tuning":
        assert any("gradient_checkpointing is off" in w for w in report.warnings)

    adapter_dir = Path(result.adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type
    assert config.get("use_dora", False) == (adapter["method"] == "dora")
    assert config.get("use_rslora", False) == (adapter["method"] == "rslora")
    archive = tmp_path / "adapter.tar.gz"
    pack_directory(adapter_dir, archive)
    with tarfile.open(archive) as tar:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(tar.getnames())

    ids = torch.tensor([[1, 50, 60, 70, 80]])
    base = modelling.load_model(spec)  # quantized alike, so the reloaded adapter must reproduce the trained one
    plain = _logits(base, ids)
    reloaded = PeftModel.from_pretrained(base, adapter_dir).eval()
    again = _logits(reloaded, ids)
    # On a CPU with bf16 units (and on a GPU) TRL trains a quantized model's LoRA weights in bf16, and PEFT
    # reloads them upcast to fp32: compare at the reloaded precision (the bf16 values upcast exactly).
    for param in trained.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
    assert torch.allclose(again, _logits(trained, ids), atol=5e-4), "the reloaded adapter is not the trained one"
    assert not torch.allclose(again, plain, atol=1e-4), "the adapter must change the model's outputs"


def test_prompt_tuning_starts_from_the_init_text(tiny_model: Path) -> None:
    spec = _spec(PROMPT, None)
    base = modelling.load_model(spec)
    model = adapters.add_adapter(base, spec)
    tokenizer = modelling.load_tokenizer(TINY_MODEL)
    ids = tokenizer(PROMPT["init_text"])["input_ids"]
    want = base.get_input_embeddings().weight[(ids * 6)[:6]]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, want)


def test_gptq_base_is_refused_on_the_cpu(tiny_model: Path) -> None:
    gptq = MODELS_DIR / "tiny-llama-gptq"
    shutil.copytree(tiny_model, gptq, dirs_exist_ok=True)
    config = json.loads((tiny_model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True}
    (gptq / "config.json").write_text(json.dumps(config))
    spec = JobSpec.model_validate({"base_model": gptq.name, "dataset": "d", "quantization": None})

    assert modelling.prequantized_method(str(gptq)) == "gptq"
    assert modelling.prequantized_method(str(tiny_model)) is None
    with pytest.raises(TrainingError) as refused:
        modelling.load_model(spec)
    assert refused.value.type == "unsupported_on_cpu" and "GPTQ" in refused.value.message
