"""The estimator on known model shapes: weights per quantization, LoRA and optimizer bytes, activations, time,
and the fit-or-refuse decision for a fleet."""

import json
from pathlib import Path

import pytest

from app.checks.data import TokenLengths
from app.checks.estimate import EstimatedReport, add_estimate, smaller_batches, spec_to_run
from app.core.config import settings
from app.fleet.estimate import CPU, GIB, GPU, memory, optimizer_bytes, peak_batch
from app.fleet.gpu_classes import KNOWN, fleet, parse_fleet, seconds_per_micro_batch
from app.fleet.model_shape import ModelShape, trainable_parameters
from app.spec.job import JobSpec
from tests.conftest import MODELS_DIR

# The published shapes (config.json fields) of TinyLlama-1.1B, Llama-2-7B, Qwen-7B and Mixtral-8x7B.
TINYLLAMA = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}
LLAMA_7B = {**TINYLLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32}
LLAMA_7B.update(num_key_value_heads=32)
QWEN_7B = {**LLAMA_7B, "model_type": "qwen", "vocab_size": 151936}
LLAMA_13B = {**LLAMA_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40}
LLAMA_13B.update(num_attention_heads=40, num_key_value_heads=40)
MIXTRAL = {**LLAMA_7B, "model_type": "mixtral", "intermediate_size": 14336, "num_key_value_heads": 8}
MIXTRAL.update(num_local_experts=8, num_experts_per_tok=2)


def spec(**fields: object) -> JobSpec:
    return JobSpec.model_validate({"base_model": "m", "dataset": "ds_" + "0" * 24, **fields})


def gpu_memory(config: dict, job: JobSpec, longest: int = 512):
    return memory(ModelShape.from_config(config), job, peak_batch(job, True, longest, longest), GPU)


def test_tinyllama_weights_per_quantization() -> None:
    shape = ModelShape.from_config(TINYLLAMA)
    assert shape.parameters == 1_100_048_384  # what the model card says: 1.1B
    weights = {
        name: gpu_memory(TINYLLAMA, spec(quantization=q)).weights / 1e9
        for name, q in [
            ("nf4+dq", {"bits": 4}),
            ("nf4", {"bits": 4, "double_quant": False}),
            ("int8", {"bits": 8}),
            ("bf16", None),
        ]
    }
    # 4-bit: 0.97B decoder weights at ~0.516 bytes (double quantization) + 131M embedding and LM head in bf16,
    # which bitsandbytes never quantizes: 0.76 GB, not the 0.55 GB that quantizing everything would give.
    assert 0.70 < weights["nf4+dq"] < 0.80
    assert weights["nf4"] - weights["nf4+dq"] == pytest.approx(0.969e9 * (4 / 64 - 1 / 64 - 4 / 16384) / 1e9, rel=0.01)
    assert 1.15 < weights["int8"] < 1.30
    assert weights["bf16"] == pytest.approx(2.2, rel=0.01)


def test_lora_parameters_match_peft() -> None:
    # PEFT's print_trainable_parameters() for TinyLlama with r=16 on all linear layers: 12,615,680.
    assert trainable_parameters(ModelShape.from_config(TINYLLAMA), spec()) == 12_615_680
    only_q_v = spec(lora={"r": 8, "target_modules": ["q_proj", "v_proj"]})
    assert trainable_parameters(ModelShape.from_config(LLAMA_7B), only_q_v) == 4_194_304  # PEFT's figure
    assert trainable_parameters(ModelShape.from_config(TINYLLAMA), spec(adapter={"method": "ia3"})) == 0


def test_optimizer_states_per_optimizer() -> None:
    big, small = [(16, 4096)], [(16, 128)]  # 65,536 and 2,048 values
    assert optimizer_bytes("paged_adamw_8bit", big) == 2 * 65536 + 8 * 32  # two 8-bit moments + block scales
    assert optimizer_bytes("adamw_8bit", small) == 8 * 2048  # bitsandbytes keeps tensors < 4096 in 32 bits
    assert optimizer_bytes("paged_adamw_32bit", big, param_bytes=2) == 8 * 65536
    assert optimizer_bytes("adamw_torch", big, param_bytes=2) == 4 * 65536  # torch keeps state in bf16 params' dtype
    assert optimizer_bytes("adamw_torch", big, param_bytes=4) == 8 * 65536
    assert optimizer_bytes("sgd", big) == 0
    assert optimizer_bytes("adafactor", big) == 4 * (16 + 4096)  # factored second moment
    job = gpu_memory(TINYLLAMA, spec())
    assert job.paged == job.optimizer_states > 0  # paged state can spill to host: not in the allocator's peak
    assert job.allocated == job.peak - job.fixed - job.paged


def test_activations_scale_with_batch_and_checkpointing() -> None:
    padded = {"padding_free": False, "max_seq_length": 2048}
    one = gpu_memory(LLAMA_7B, spec(training={"batch_size": 1, **padded}), 2048)
    four = gpu_memory(LLAMA_7B, spec(training={"batch_size": 4, **padded}), 2048)
    assert four.activations == pytest.approx(4 * one.activations, rel=0.01)
    saved = gpu_memory(LLAMA_7B, spec(training={"batch_size": 4, "gradient_checkpointing": False, **padded}), 2048)
    assert saved.activations > 10 * four.activations  # every layer's activations instead of one layer's
    assert saved.peak / GIB > 40 > four.peak / GIB  # 7B QLoRA at 4 x 2048 tokens fits 40 GB only checkpointed


def test_cpu_keeps_everything_in_fp32() -> None:
    job = spec(quantization=None)
    shape = ModelShape.from_config(TINYLLAMA)
    on_cpu = memory(shape, job, peak_batch(job, False, 512, 512), CPU)
    on_gpu = memory(shape, job, peak_batch(job, True, 512, 512), GPU)
    assert on_cpu.weights == 2 * on_gpu.weights and on_cpu.fixed == 0 < on_gpu.fixed


def test_mixture_of_experts_and_other_architectures() -> None:
    assert ModelShape.from_config(MIXTRAL).parameters / 1e9 == pytest.approx(46.7, rel=0.01)  # Mixtral-8x7B
    gpt2 = ModelShape.from_config(
        {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    )
    assert not gpt2.gated_mlp and gpt2.tied_embeddings and gpt2.parameters / 1e6 == pytest.approx(124, rel=0.02)
    nested = ModelShape.from_config({"model_type": "llava", "text_config": TINYLLAMA})
    assert nested == ModelShape.from_config(TINYLLAMA)
    with pytest.raises(ValueError, match="hidden_size"):
        ModelShape.from_config({"model_type": "mystery"})


@pytest.mark.parametrize(("bits", "seconds"), [(4, {1024: 3.5, 2048: 7.0, 4096: 11.6, 8192: 22.3}), (None, {})])
def test_time_matches_the_published_reference(bits: int | None, seconds: dict[int, float]) -> None:
    """Qwen-7B on an A100-80GB, batch 1 x 8 accumulation (the source of the constants, docs/estimates.md)."""
    seconds = seconds or {256: 1.2, 512: 1.5, 1024: 2.8, 2048: 5.2, 4096: 10.1, 8192: 21.3}  # 16-bit LoRA
    shape, a100 = ModelShape.from_config(QWEN_7B), next(g for g in KNOWN if g.name == "A100-80GB")
    for length, measured in seconds.items():
        training = {"batch_size": 1, "padding_free": False, "max_seq_length": length}
        job = spec(quantization={"bits": bits} if bits else None, training=training)
        step = 8 * seconds_per_micro_batch(shape, job, peak_batch(job, True, length, length), a100)
        assert step == pytest.approx(measured, rel=0.25), length


def test_fleet_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [g.name for g in parse_fleet("a10, A100-80GB ,cpu")] == ["A10", "A100-80GB", "cpu"]
    custom = parse_fleet("RTX4090:24")[0]
    assert custom.name == "RTX4090" and custom.memory_gib == 24 and custom.compute > 0
    with pytest.raises(ValueError, match="unknown GPU class 'V100'"):
        parse_fleet("V100")
    assert fleet().classes == KNOWN  # nothing configured: every known class
    monkeypatch.setattr(settings, "worker_gpu_memory_gb", 24.0)
    assert [g.memory_gib for g in fleet().classes] == [24.0]
    monkeypatch.setattr(settings, "worker_gpu_memory_gb", 0.0)
    assert fleet().cpu_only


def model_dir(name: str, config: dict) -> str:
    """A model directory in FT_MODELS_DIR with only a config.json: all the estimate reads."""
    path = MODELS_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return name


@pytest.fixture
def llama_7b_dir() -> str:
    return model_dir("llama-7b-shape", LLAMA_7B)


def report(steps: int = 100, longest: int = 2048) -> EstimatedReport:
    lengths = TokenLengths(min=100, p50=600, p95=1500, max=longest)
    return EstimatedReport(ok=True, token_lengths=lengths, train_examples=400, total_steps=steps)


def test_a_job_that_fits_gets_time_and_gpu_hours(llama_7b_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "T4,A100-80GB")
    job, result = spec(base_model=llama_7b_dir), report()
    add_estimate(job, result)
    est = result.estimate
    assert result.ok and est.fits and est.expected_gpu == "T4" and [g.gpu for g in est.gpus] == ["T4", "A100-80GB"]
    t4, a100 = est.gpus
    assert 0 < a100.duration_seconds < t4.duration_seconds
    assert t4.gpu_hours == pytest.approx(t4.duration_seconds / 3600, abs=0.001)
    assert est.duration_seconds == t4.duration_seconds and est.total_steps == 100 and est.total_tokens > 0
    assert est.memory.peak_gib < 15 and est.trainable_parameters == 39_976_960


def test_too_big_a_micro_batch_is_fitted_with_the_same_effective_batch(
    llama_7b_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "T4")
    training = {"batch_size": 16, "gradient_accumulation_steps": 2, "max_seq_length": 2048}
    job, result = spec(base_model=llama_7b_dir, training=training), report()
    add_estimate(job, result)
    assert result.ok and result.estimate.fits and "effective batch" in result.estimate.adjusted
    ran = spec_to_run(job, result).training
    assert ran.batch_size < 16 and ran.batch_size * ran.gradient_accumulation_steps == 32
    assert result.estimate.batch_size == ran.batch_size and any("batch_size" in w for w in result.warnings)
    assert [t.batch_size for t in smaller_batches(job.training)] == [8, 4, 2, 1]


def test_a_job_that_fits_nowhere_is_refused_with_the_numbers(
    llama_7b_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "T4")
    big = {"batch_size": 16, "gradient_checkpointing": False, "auto_fit_batch": False, "max_seq_length": 2048}
    result = report()
    add_estimate(spec(base_model=llama_7b_dir, training=big), result)
    (problem,) = result.problems
    assert not result.ok and problem.field == "training.max_seq_length"
    assert "GiB at batch_size 16" in problem.message and "T4, has 15 GiB" in problem.message
    assert "training.gradient_checkpointing" in problem.message and "auto_fit_batch" in problem.message
    result = report()
    add_estimate(spec(base_model=model_dir("llama-13b-shape", LLAMA_13B), quantization=None), result)  # 26 GB
    assert [p.field for p in result.problems] == ["base_model"] and "4-bit quantization" in result.problems[0].message


def test_no_estimate_without_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    result = report()
    add_estimate(spec(base_model="someone/not-cached"), result)  # tests run with HF_HUB_OFFLINE=1
    assert result.ok and result.estimate is None and result.warnings[0].startswith("estimate: not made")


def test_cpu_only_workers_are_never_refused(llama_7b_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "cpu")
    result = report()
    add_estimate(spec(base_model=llama_7b_dir, quantization=None), result)
    est = result.estimate
    assert result.ok and est.fits and est.gpus[0].gpu_hours is None and any("CPU-only" in n for n in est.notes)
    assert Path(settings.resolved_models_dir, llama_7b_dir, "config.json").is_file()


def test_a_gptq_base_counts_as_already_quantized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "T4")
    gptq = {**LLAMA_13B, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    result = report()
    add_estimate(spec(base_model=model_dir("llama-13b-gptq", gptq), quantization=None), result)  # as the API sets it
    assert result.ok and result.estimate.fits and result.estimate.memory.weights_bytes < 8e9  # not 26 GB of bf16


def test_preference_jobs_count_two_sequences_per_example_and_the_reference_pass(
    llama_7b_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "fleet_gpus", "A100-80GB")
    training = {"batch_size": 4, "max_seq_length": 2048}
    estimates = {}
    for method, fmt in [("sft", "chat"), ("dpo", "preference"), ("orpo", "preference")]:
        job, result = (
            spec(base_model=llama_7b_dir, training=training, method={"type": method}, format={"type": fmt}),
            report(),
        )
        add_estimate(job, result)
        estimates[method] = result.estimate
    sft, dpo, orpo = estimates["sft"], estimates["dpo"], estimates["orpo"]
    assert dpo.batch_size == sft.batch_size == 4  # the spec's batch, as asked
    assert dpo.memory.peak_bytes > sft.memory.peak_bytes and dpo.peak_tokens == 2 * sft.peak_tokens
    assert dpo.duration_seconds == pytest.approx(orpo.duration_seconds * 4 / 3, rel=0.01)  # DPO's reference pass
    assert orpo.duration_seconds > sft.duration_seconds
    assert any("two sequences per example" in n and "reference forward" in n for n in dpo.notes)
