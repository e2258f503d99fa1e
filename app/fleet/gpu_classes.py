"""The GPU classes estimates are made for: memory and training speed per class, and the fleet the workers have.

Speeds are relative to one published measurement (Qwen-7B LoRA and QLoRA on an A100-SXM4-80G, see
docs/estimates.md): `compute` scales the matmul throughput, `bandwidth` the per-micro-batch overhead
(4-bit dequantization and kernel launches, bound by memory bandwidth). The CPU figures were measured here.
"""

from dataclasses import dataclass

from app.core.config import settings
from app.fleet.estimate import GIB, Batch
from app.fleet.model_shape import ModelShape
from app.spec.job import JobSpec


@dataclass(frozen=True)
class GpuClass:
    name: str
    memory_gib: float | None  # total memory as nvidia-smi reports it; None: a CPU (host memory, no GPU limit)
    compute: float  # matmul throughput relative to an A100 (dense 16-bit, Hopper discounted to what HF reaches)
    bandwidth: float  # memory bandwidth relative to an A100-80GB (2039 GB/s)

    @property
    def is_cpu(self) -> bool:
        return self.memory_gib is None

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory_gib is None else int(self.memory_gib * GIB)


# Memory: nvidia-smi's total (MiB / 1024). Compute: datasheet dense fp16/bf16 tensor TFLOPS / 312 (A100), with
# H100/H200 at 2.5x rather than 3.2x: the HF stack with bitsandbytes does not reach Hopper's peak.
# Bandwidth: datasheet GB/s / 2039.
KNOWN: tuple[GpuClass, ...] = (
    GpuClass("T4", 15.0, 0.21, 0.16),
    GpuClass("A10", 22.5, 0.40, 0.29),
    GpuClass("L4", 22.5, 0.39, 0.15),
    GpuClass("A100-40GB", 40.0, 1.0, 0.76),
    GpuClass("A100-80GB", 80.0, 1.0, 1.0),
    GpuClass("H100", 79.6, 2.5, 1.64),
    GpuClass("H200", 140.4, 2.5, 2.35),
)
CPU = GpuClass("cpu", None, 0.0, 0.0)
ALIASES = {"a100": "A100-80GB", "a100-40": "A100-40GB", "a100-80": "A100-80GB", "h100-80gb": "H100"}


@dataclass(frozen=True)
class Machine:
    """One kind of worker machine in FT_FLEET_GPUS: its GPU class and how many of them one machine has."""

    gpu: GpuClass
    gpus: int = 1  # on a CPU machine: the processes one job may spread over (gloo)

    def describe(self) -> str:
        return f"{self.gpu.name}*{self.gpus}" if self.gpus > 1 else self.gpu.name


@dataclass(frozen=True)
class Fleet:
    classes: tuple[GpuClass, ...]
    source: str  # how the fleet was known, shown in every estimate
    machines: tuple[Machine, ...] = ()  # declared with FT_FLEET_GPUS; empty: not known

    @property
    def cpu_only(self) -> bool:
        return all(c.is_cpu for c in self.classes)


def find_class(name: str) -> GpuClass | None:
    wanted = ALIASES.get(name.strip().lower(), name.strip()).lower()
    if wanted == "cpu":
        return CPU
    return next((c for c in KNOWN if c.name.lower() == wanted), None)


def nearest_by_memory(memory_gib: float, name: str) -> GpuClass:
    """A custom GPU: its memory, and the speed of the known class closest in memory (a guess, said so in docs)."""
    like = min(KNOWN, key=lambda c: abs((c.memory_gib or 0) - memory_gib))
    return GpuClass(name, memory_gib, like.compute, like.bandwidth)


def _parse_machine(item: str) -> Machine:
    described, star, count = item.partition("*")
    name, _, memory = described.partition(":")
    if star and not (count.strip().isdigit() and 1 <= int(count) <= 64):
        raise ValueError(f"FT_FLEET_GPUS: {item!r}: the count after `*` must be 1 to 64 GPUs per machine")
    gpus = int(count) if star else 1
    if memory:
        try:
            return Machine(nearest_by_memory(float(memory), name.strip()), gpus)
        except ValueError:
            raise ValueError(f"FT_FLEET_GPUS: {item!r}: the memory after `:` must be a number of GiB") from None
    if (known := find_class(name)) is not None:
        return Machine(known, gpus)
    names = ", ".join(c.name for c in KNOWN)
    raise ValueError(f"FT_FLEET_GPUS: unknown GPU class {name!r} (known: {names}, cpu; or NAME:GIB)")


def parse_machines(value: str) -> tuple[Machine, ...]:
    """`A100-80GB*4,A10,RTX4090:24*2,cpu*2` -> one Machine per item: class (`NAME:GIB` for one the table does not
    know) and GPUs per machine (`*N`, default 1)."""
    return tuple(_parse_machine(item) for item in filter(None, (part.strip() for part in value.split(","))))


def parse_fleet(value: str) -> tuple[GpuClass, ...]:
    """The GPU classes of FT_FLEET_GPUS, e.g. `A10,A100-80GB*4,RTX4090:24,cpu`; see parse_machines."""
    return tuple(machine.gpu for machine in parse_machines(value))


def fleet() -> Fleet:
    """FT_FLEET_GPUS, else FT_WORKER_GPU_MEMORY_GB (every worker's GPU), else every known class."""
    if settings.fleet_gpus.strip():
        machines = parse_machines(settings.fleet_gpus)
        return Fleet(tuple(m.gpu for m in machines), "FT_FLEET_GPUS", machines)
    if settings.worker_gpu_memory_gb is not None:
        if settings.worker_gpu_memory_gb <= 0:
            return Fleet((CPU,), "FT_WORKER_GPU_MEMORY_GB=0: CPU-only workers")
        gpu = nearest_by_memory(settings.worker_gpu_memory_gb, f"worker GPU ({settings.worker_gpu_memory_gb:g} GiB)")
        return Fleet((gpu,), "FT_WORKER_GPU_MEMORY_GB")
    return Fleet(KNOWN, "not configured (set FT_FLEET_GPUS or FT_WORKER_GPU_MEMORY_GB): every known GPU class")


def flops_per_token(shape: ModelShape, span: int, gradient_checkpointing: bool) -> float:
    """Forward, backward to the inputs only (frozen weights need no weight gradient) and the recomputation.

    `span`: the positions each query is scored against (a flattened batch under a dense mask: all of it).
    """
    body = 2 * shape.layers * shape.layer_linear_parameters(active=True)
    head = 2 * shape.vocab * shape.hidden
    attention = 2 * span * shape.heads * shape.head_dim * shape.layers  # causal: half of QK^T and AV
    forward = body + head + attention
    backward = body + head + 2 * attention
    return forward + backward + ((body + attention) if gradient_checkpointing else 0)


# Throughput of the reference GPU (A100-SXM4-80G), fitted to Qwen-7B's published LoRA / Q-LoRA profile
# (docs/estimates.md): matmul FLOP/s, and seconds per micro-batch per billion quantized-or-not body weights.
REFERENCE_FLOPS = 156e12
MICRO_BATCH_SECONDS_PER_BILLION = {None: 0.012, 8: 0.05, 4: 0.035}
MICRO_BATCH_FLOOR_SECONDS = 0.02  # Python, hooks and kernel launches: what even a tiny model's step costs
INT8_SLOWDOWN = 0.5  # LLM.int8 matmuls: no measured figure here; about half the 16-bit speed is commonly seen
# This CPU (2 cores), measured with tests/training/test_memory_estimate.py: FLOP/s and seconds per micro-batch.
CPU_FLOPS = 7e9  # tiny-llama, padded 8 x 512 tokens: ~3,100 tokens/s at 2.4 MFLOP per token
CPU_MICRO_BATCH_SECONDS = 0.05


def seconds_per_micro_batch(shape: ModelShape, spec: JobSpec, batch: Batch, gpu: GpuClass) -> float:
    """Matmul time of the batch's tokens (padding included) plus the per-micro-batch cost (dequantization, launches)."""
    work = batch.tokens * flops_per_token(shape, batch.mask_span, spec.training.gradient_checkpointing)
    if gpu.is_cpu:
        return work / CPU_FLOPS + CPU_MICRO_BATCH_SECONDS
    bits = spec.quantization.bits if spec.quantization is not None else None
    rate = REFERENCE_FLOPS * gpu.compute * (INT8_SLOWDOWN if bits == 8 else 1.0)
    passes = 3 if spec.training.gradient_checkpointing else 2
    fixed = MICRO_BATCH_SECONDS_PER_BILLION[bits] * shape.body_parameters / 1e9 * passes / 3 / gpu.bandwidth
    return work / rate + max(fixed, MICRO_BATCH_FLOOR_SECONDS)
