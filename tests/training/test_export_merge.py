"""Merged export, prompt formatting, lineage and the model card, in process on the tiny model."""

import struct
import zlib
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.spec.job import JobSpec
from app.spec.lineage import clone_spec, deep_merge, format_hash, library_versions
from worker.model_card import loss_curve_png, write_model_card
from worker.training.generation import format_prompt, prompt_and_target, template_prompt_part
from worker.training.merge import merge_adapter


def _spec(**overrides: object) -> JobSpec:
    base = {
        "base_model": "tiny-llama",
        "dataset": "ds_" + "0" * 24,
        "format": {"type": "template", "template": "review: {review} -> sentiment: {label}"},
        "quantization": None,
    }
    return JobSpec.model_validate({**base, **overrides})


@pytest.fixture
def adapter_dir(tiny_model: Path, tmp_path: Path) -> Path:
    """A LoRA adapter with non-zero weights (as if trained), saved with the tokenizer like a job's."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.mark.parametrize("quantization", [None, {"bits": 4}])
def test_merged_export_matches_base_plus_adapter(
    tiny_model: Path, adapter_dir: Path, tmp_path: Path, quantization: dict | None
) -> None:
    # A 4-bit job merges into a full-precision reload of its base, so both give the same merged weights.
    merged_dir = merge_adapter(_spec(quantization=quantization), adapter_dir, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in merged_dir.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter_dir)
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        expected, got = reference(ids).logits, merged(ids).logits
        with reference.disable_adapter():
            plain = reference(ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3), "the adapter must matter for this test to mean anything"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_prompt_is_the_template_up_to_its_last_field(tiny_model: Path) -> None:
    assert template_prompt_part("{review} -> sentiment: {label}") == ("{review} -> sentiment:", " {label}")
    assert template_prompt_part("{a} {{x}} {b}: {c}.") == ("{a} {{x}} {b}:", " {c}.")
    assert template_prompt_part("{text}") == ("{text}", "")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    spec = _spec()
    assert format_prompt(spec, tokenizer, "great fun") == "review: great fun -> sentiment:"
    row = {"review": "so bad", "label": "negative"}
    assert prompt_and_target(spec, tokenizer, row) == ("review: so bad -> sentiment:", " negative")
    pc = _spec(format={"type": "prompt_completion", "prompt": "Q: {q}\nA: ", "completion": "{a}"})
    assert format_prompt(pc, tokenizer, "why?") == "Q: why?\nA: "
    assert prompt_and_target(pc, tokenizer, {"q": "why?", "a": "because"}) == ("Q: why?\nA:", " because")
    chat = _spec(format={"type": "chat"})
    assert format_prompt(chat, tokenizer, "hi").endswith("<|assistant|>\n")


def test_lineage_and_clone_merge() -> None:
    versions = library_versions()
    assert versions["torch"] and versions["transformers"] and versions["peft"] and "bitsandbytes" in versions
    assert format_hash(_spec()) == format_hash(_spec(name="other"))
    assert format_hash(_spec()) != format_hash(_spec(format={"type": "template", "template": "{review}: {label}"}))
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    spec = _spec().model_dump(mode="json")
    clone = clone_spec(spec, {"training": {"seed": 7}, "format": {"type": "text", "field": "review"}})
    assert clone.training.seed == 7 and clone.training.learning_rate == spec["training"]["learning_rate"]
    assert clone.format.type == "text"


def _png_size(data: bytes) -> tuple[int, int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat_len = struct.unpack(">I", data[33:37])[0]
    return width, height, len(zlib.decompress(data[41 : 41 + idat_len]))


def test_model_card_has_spec_lineage_metrics_and_curve(tmp_path: Path) -> None:
    width, height, raw = _png_size(loss_curve_png([(1, 3.0), (2, 2.0), (3, 1.5)]))
    assert raw == height * (1 + 3 * width)
    lineage = {"dataset_sha256": "ab" * 32, "format_sha256": "cd" * 32, "seed": 42, "device": "cpu",
               "libraries": library_versions()}  # fmt: skip
    evaluation = {"examples": 8, "base": {"eval_loss": 5.0, "perplexity": 148.4, "accuracy": 0.0},
                  "adapter": {"eval_loss": 1.0, "perplexity": 2.7, "accuracy": 1.0}}  # fmt: skip
    result = {"steps": 3, "train_loss": 2.1, "eval_loss": 1.0, "evaluation": evaluation}
    write_model_card(tmp_path, _spec(), lineage, result, [(1, 3.0), (3, 1.5)], "job_" + "1" * 24)
    card = (tmp_path / "README.md").read_text()
    for expected in ("ab" * 32, "cd" * 32, "| seed | 42 |", "torch", "loss_curve.png", "| accuracy | 0 | 1 |"):
        assert expected in card
    assert '"template": "review: {review} -> sentiment: {label}"' in card
    assert (tmp_path / "loss_curve.png").stat().st_size > 100
