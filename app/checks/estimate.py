"""A job's memory, time and GPU-hours before it is queued: shown by POST /jobs/validate, enforced by POST /jobs.

A job that fits no GPU of the fleet is refused with the numbers, or, with `training.auto_fit_batch`, run with a
smaller micro-batch and more gradient accumulation (the same effective batch), which the estimate says.
"""

import json
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from app.checks.data import Problem, TokenLengths, ValidationReport
from app.core.errors import Invalid
from app.datasets.access import ANONYMOUS, HubAccess, check_base_model, local_model_dir
from app.datasets.hub import hub_model_files
from app.fleet.estimate import CPU, CUDA_CONTEXT, GIB, GPU, Batch, Memory, batch_shape, memory, peak_batch
from app.fleet.gpu_classes import Fleet, GpuClass, fleet, seconds_per_micro_batch
from app.fleet.model_shape import ModelShape, trainable_parameters
from app.fleet.prequantized import quant_method
from app.spec.job import JobSpec, Quantization, Training


class EstimateUnavailable(Exception):
    """The base model's config.json cannot be read here (offline, gated, not a model)."""


class MemoryPublic(BaseModel):
    weights_bytes: int
    lora_parameters_bytes: int
    gradients_bytes: int
    optimizer_states_bytes: int
    activations_bytes: int = Field(description="Kept for the backward pass, at the largest micro-batch.")
    transient_bytes: int = Field(description="The loss head's tiles and the gradients in flight at the peak.")
    overhead_bytes: int = Field(description="Dequantization scratch; on a GPU also CUDA context and fragmentation.")
    peak_bytes: int
    peak_gib: float
    allocated_bytes: int = Field(description="What torch.cuda.max_memory_allocated() should show at the peak.")

    @classmethod
    def of(cls, m: Memory) -> "MemoryPublic":
        return cls(
            weights_bytes=m.weights,
            lora_parameters_bytes=m.lora_parameters,
            gradients_bytes=m.gradients,
            optimizer_states_bytes=m.optimizer_states,
            activations_bytes=m.activations,
            transient_bytes=m.transient,
            overhead_bytes=m.overhead,
            peak_bytes=m.peak,
            peak_gib=round(m.peak / GIB, 2),
            allocated_bytes=m.allocated,
        )


class GpuEstimate(BaseModel):
    gpu: str
    memory_gib: float | None = Field(description="null for a CPU worker (host memory, no GPU limit).")
    fits: bool
    free_gib: float | None = Field(description="Memory left at the peak; negative when it does not fit.")
    tokens_per_second: float | None
    duration_seconds: float | None = Field(description="Training time once started (not queueing or loading).")
    gpu_hours: float | None


class JobEstimate(BaseModel):
    parameters: int
    trainable_parameters: int
    batch_size: int
    gradient_accumulation_steps: int
    peak_tokens: int = Field(description="Tokens in the largest micro-batch, padding included.")
    memory: MemoryPublic = Field(description="On a GPU (on a CPU-only fleet: on the CPU).")
    fits: bool = Field(description="Fits at least one GPU class of the fleet.")
    gpus: list[GpuEstimate]
    expected_gpu: str | None = Field(description="The first class of the fleet it fits: duration and GPU-hours here.")
    duration_seconds: float | None
    gpu_hours: float | None
    total_steps: int | None
    total_tokens: int | None = Field(description="Tokens processed over the whole job, padding included.")
    fleet: str = Field(description="Where the fleet's GPU classes came from.")
    adjusted: str | None = Field(None, description="What auto_fit_batch changed so that the job fits.")
    notes: list[str] = Field(default_factory=list)


class EstimatedReport(ValidationReport):
    """POST /jobs/validate's report with the job's estimate."""

    estimate: JobEstimate | None = Field(None, description="Memory, time and GPU-hours; null when unknown.")
    _fitted: Training | None = PrivateAttr(None)


@lru_cache(maxsize=64)
def _hub_config(base_model: str, access: HubAccess) -> str:
    # Keyed by the tenant's access too: a private repo's config read with one token is never served to another.
    try:
        root = hub_model_files(base_model, ["config.json"], access)
        if root is None:
            raise FileNotFoundError("no config.json in the repo")
        return (root / "config.json").read_text(encoding="utf-8")
    except Exception as exc:  # offline, not on the Hub, gated: the estimate is skipped, never the job
        raise EstimateUnavailable(f"{base_model!r}: config.json could not be fetched ({type(exc).__name__})") from None


def model_config(base_model: str, access: HubAccess = ANONYMOUS) -> dict[str, Any]:
    """The base model's config.json: from FT_MODELS_DIR, else from the Hub as the tenant (only that file, cached)."""
    local = local_model_dir(base_model)
    try:
        if local is not None:
            return json.loads((local / "config.json").read_text(encoding="utf-8"))
        return json.loads(_hub_config(base_model, access))
    except (OSError, ValueError) as exc:
        raise EstimateUnavailable(f"{base_model!r}: its config.json is not readable ({exc})") from None


def config_reader(access: HubAccess) -> Callable[[str], dict[str, Any] | None]:
    """A base model's config.json as this tenant may read it (check_prequantized_base's reader); None when it may
    not use the model or the config cannot be had: the checks that follow say which."""

    def read(base_model: str) -> dict[str, Any] | None:
        try:
            check_base_model(access, base_model)
            return model_config(base_model, access)
        except (Invalid, EstimateUnavailable):
            return None

    return read


def _mean_length(lengths: TokenLengths, cap: int) -> float:
    """Mean tokens per example from the median and p95, as for log-normal lengths, cut at max_seq_length."""
    sigma = math.log(max(lengths.p95, 1) / max(lengths.p50, 1)) / 1.645
    return min(lengths.p50 * math.exp(sigma**2 / 2), lengths.max, cap)


def _typical_batch(spec: JobSpec, lengths: TokenLengths | None, cuda: bool) -> Batch:
    """An average micro-batch (batches grouped by length on a GPU pad little): what time is counted in."""
    mean = _mean_length(lengths, spec.training.max_seq_length) if lengths else spec.training.max_seq_length
    return batch_shape(spec, cuda, mean, max(1, round(mean)))


REFERENCE_PASS = 4 / 3  # DPO, KTO: a reference forward on top of forward + backward (about 3 forwards' work)


def _as_trained(spec: JobSpec) -> JobSpec:
    """What a micro-batch holds: a preference job's examples are two sequences each (chosen and rejected; KTO: the
    answers and as many mismatched pairs for its KL term), so it is counted as twice the batch of sequences."""
    if spec.method.type == "sft":
        return spec
    t = spec.training
    return spec.model_copy(update={"training": t.model_copy(update={"batch_size": t.batch_size * 2})})


def _evaluate(shape: ModelShape, spec: JobSpec, report: ValidationReport, where: Fleet) -> JobEstimate:
    asked, spec = spec, _as_trained(spec)
    t, lengths = spec.training, report.token_lengths
    longest, p95 = (lengths.max, lengths.p95) if lengths else (t.max_seq_length, t.max_seq_length)
    on_gpu = memory(shape, spec, peak_batch(spec, True, longest, p95), GPU)
    on_cpu = memory(shape, spec, peak_batch(spec, False, longest, p95), CPU)
    steps = report.total_steps
    micro_batches = steps * t.gradient_accumulation_steps if steps else None
    typical = {cuda: _typical_batch(spec, lengths, cuda) for cuda in (True, False)}
    factor = REFERENCE_PASS if spec.method.type in ("dpo", "kto") else 1.0
    gpus = [
        _on(c, on_cpu if c.is_cpu else on_gpu, shape, spec, typical[not c.is_cpu], micro_batches, factor)
        for c in where.classes
    ]
    expected = next((g for g in gpus if g.fits), None)
    notes = list(on_gpu.notes)
    if lengths is None:
        notes.append("token lengths unknown (no tokenizer here): every example is assumed max_seq_length long")
    if where.cpu_only:
        notes.append("CPU-only workers: memory is host memory, and no GPU-hours are used")
    if spec is not asked:
        notes.append(
            f"{spec.method.type}: two sequences per example (batch_size {asked.training.batch_size} holds "
            f"{t.batch_size} sequences)" + (", and a reference forward pass on each" if factor > 1 else "")
        )
    return JobEstimate(
        parameters=shape.parameters,
        trainable_parameters=trainable_parameters(shape, spec),
        batch_size=asked.training.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        peak_tokens=peak_batch(spec, not where.cpu_only, longest, p95).tokens,
        memory=MemoryPublic.of(on_cpu if where.cpu_only else on_gpu),
        fits=expected is not None,
        gpus=gpus,
        expected_gpu=expected.gpu if expected else None,
        duration_seconds=expected.duration_seconds if expected else None,
        gpu_hours=expected.gpu_hours if expected else None,
        total_steps=steps,
        total_tokens=micro_batches * typical[not where.cpu_only].tokens if micro_batches else None,
        fleet=where.source,
        notes=notes,
    )


def _on(
    gpu: GpuClass,
    mem: Memory,
    shape: ModelShape,
    spec: JobSpec,
    typical: Batch,
    micro_batches: int | None,
    factor: float = 1.0,
) -> GpuEstimate:
    seconds = seconds_per_micro_batch(shape, spec, typical, gpu) * factor
    duration = round(micro_batches * seconds, 2) if micro_batches else None
    free = None if gpu.memory_bytes is None else round((gpu.memory_bytes - mem.peak) / GIB, 2)
    return GpuEstimate(
        gpu=gpu.name,
        memory_gib=gpu.memory_gib,
        fits=free is None or free >= 0,
        free_gib=free,
        tokens_per_second=round(typical.tokens / seconds, 1),
        duration_seconds=duration,
        gpu_hours=None if gpu.is_cpu or duration is None else round(duration / 3600, 3),
    )


def smaller_batches(training: Training) -> list[Training]:
    """Halved micro-batches down to 1, each with the accumulation that keeps the effective batch (worker/oom.py)."""
    options, batch = [], training.batch_size
    effective = training.batch_size * training.gradient_accumulation_steps
    while batch > 1 and math.ceil(effective / (batch // 2)) <= 4096:
        batch //= 2
        update = {"batch_size": batch, "gradient_accumulation_steps": math.ceil(effective / batch)}
        options.append(training.model_copy(update=update))
    return options


def _refusal(shape: ModelShape, spec: JobSpec, est: JobEstimate) -> Problem:
    m, gpu = est.memory, max(est.gpus, key=lambda g: g.memory_gib or 0)
    gib = {k: round(v / GIB, 1) for k, v in m.model_dump().items() if k.endswith("_bytes")}
    adapter = gib["lora_parameters_bytes"] + gib["gradients_bytes"] + gib["optimizer_states_bytes"]
    message = (
        f"needs {m.peak_gib:g} GiB at batch_size {est.batch_size} and {est.peak_tokens:,} tokens per micro-batch "
        f"(weights {gib['weights_bytes']:g}, adapter with gradients and optimizer {adapter:g}, activations "
        f"{gib['activations_bytes']:g}, loss head and gradients in flight {gib['transient_bytes']:g}, overhead "
        f"{gib['overhead_bytes']:g}) but the largest GPU of the fleet, {gpu.gpu}, has {gpu.memory_gib:g} GiB"
    )
    if m.weights_bytes + CUDA_CONTEXT > (gpu.memory_gib or 0) * GIB:
        hint = "4-bit quantization" if spec.quantization is None or spec.quantization.bits == 8 else "a smaller model"
        return Problem(field="base_model", message=f"{message}: its weights alone do not fit; use {hint}")
    hints = ["a shorter training.max_seq_length"]
    if not spec.training.gradient_checkpointing:
        hints.insert(0, "training.gradient_checkpointing")
    if spec.quantization is None:
        hints.append("4-bit quantization")
    if not spec.training.auto_fit_batch:
        hints.append("training.auto_fit_batch (smaller micro-batches, same effective batch)")
    return Problem(field="training.max_seq_length", message=f"{message}; try {', or '.join(hints)}")


def add_estimate(spec: JobSpec, report: EstimatedReport, access: HubAccess = ANONYMOUS) -> None:
    """Estimate the job for the fleet; refuse it (a problem) when it fits nowhere, or fit its micro-batch."""
    try:
        config = model_config(spec.base_model, access)
        shape = ModelShape.from_config(config)
    except (EstimateUnavailable, ValueError) as exc:
        report.warnings.append(f"estimate: not made, {exc}")
        return
    if quant_method(config) and spec.quantization is None:  # GPTQ/AWQ: already quantized, counted like bitsandbytes
        bits = 8 if (config.get("quantization_config") or {}).get("bits") == 8 else 4
        spec = spec.model_copy(update={"quantization": Quantization(bits=bits)})
    where = fleet()
    report.estimate = _evaluate(shape, spec, report, where)
    if report.estimate.fits:
        return
    if spec.training.auto_fit_batch:
        for training in smaller_batches(spec.training):
            fitted = _evaluate(shape, spec.model_copy(update={"training": training}), report, where)
            if fitted.fits:
                fitted.adjusted = (
                    f"does not fit at batch_size {spec.training.batch_size} ({report.estimate.memory.peak_gib:g} GiB); "
                    f"runs with batch_size {training.batch_size} and gradient_accumulation_steps "
                    f"{training.gradient_accumulation_steps} (the same effective batch) on {fitted.expected_gpu}"
                )
                report.warnings.append(f"training.batch_size: {fitted.adjusted}")
                report.estimate, report._fitted = fitted, training
                return
        last = smaller_batches(spec.training)[-1:]
        if last:  # refuse with the numbers at the smallest micro-batch tried
            report.estimate = _evaluate(shape, spec.model_copy(update={"training": last[0]}), report, where)
    report.problems.append(_refusal(shape, spec, report.estimate))
    report.ok = False


def spec_to_run(spec: JobSpec, report: ValidationReport) -> JobSpec:
    """The spec as it will run: with the micro-batch auto_fit_batch chose, if it had to."""
    fitted = report._fitted if isinstance(report, EstimatedReport) else None
    return spec if fitted is None else spec.model_copy(update={"training": fitted})


def stored_estimate(report: ValidationReport) -> dict[str, Any] | None:
    """What jobs.estimate keeps: the estimate the job was queued with."""
    estimate = getattr(report, "estimate", None)
    return estimate.model_dump(mode="json") if estimate is not None else None
