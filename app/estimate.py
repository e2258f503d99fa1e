"""Memory and time of a LoRA / QLoRA job from the base model's config.json alone: no weights, no torch.

Memory is what the training step holds at its peak: the frozen weights at their quantization, the LoRA
parameters with their gradients and optimizer states, the activations kept for the backward pass (all layers,
or one layer's input each plus one layer recomputed with gradient checkpointing), the logits and loss, and
the framework's overhead. Time is FLOPs per token over a measured throughput, plus a per-micro-batch cost.
docs/estimates.md derives every constant and compares the figures with measured ones.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from app.gpu_classes import GIB, GpuClass
from app.spec import JobSpec

NON_GATED = {"gpt2", "gpt_neox", "gptj", "falcon", "bloom", "opt", "phi", "gpt_bigcode", "codegen", "starcoder2"}
UNTIED_BY_DEFAULT = {"llama", "mistral", "mixtral"}
# Module names other architectures use, mapped onto the Llama names the estimate counts with.
MODULE_ALIASES = {
    "w1": ("gate_proj",),
    "w3": ("up_proj",),
    "w2": ("down_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "c_attn": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "c_fc": ("up_proj",),
    "fc1": ("up_proj",),
    "fc2": ("down_proj",),
    "dense_h_to_4h": ("up_proj",),
    "dense_4h_to_h": ("down_proj",),
}
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}  # by double_quant: 4-bit + absmax per 64
LOGIT_BYTES = 12  # per token and vocabulary entry: logits, their fp32 copy or TRL's shifted copy, log-softmax, grad
CUDA_CONTEXT = int(0.5 * GIB)  # CUDA context and cuBLAS workspace: outside PyTorch's allocator
FRAGMENTATION = 0.10  # the caching allocator reserves about this much more than it hands out
BNB_MIN_8BIT = 4096  # bitsandbytes keeps optimizer state of smaller tensors in 32 bits


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide memory and FLOPs, in Llama's terms (other decoders are mapped onto them)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool = True
    experts: int = 1
    experts_per_token: int = 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelShape":
        """Read a Hugging Face config.json; ValueError naming the keys it needs when they are missing."""
        c = config.get("text_config") or config

        def first(*keys: str, default: Any = None) -> Any:
            for key in keys:
                if c.get(key) is not None:
                    return c[key]
            if default is None:
                raise ValueError(f"config.json has none of {', '.join(keys)}")
            return default

        model_type = str(c.get("model_type") or config.get("model_type") or "")
        hidden = int(first("hidden_size", "n_embd", "d_model"))
        heads = int(first("num_attention_heads", "n_head", "num_heads"))
        kv_default = 1 if c.get("multi_query") else heads
        return cls(
            hidden=hidden,
            intermediate=int(first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
            layers=int(first("num_hidden_layers", "n_layer", "num_layers")),
            heads=heads,
            kv_heads=int(first("num_key_value_heads", "num_kv_heads", default=kv_default)),
            head_dim=int(first("head_dim", default=hidden // heads)),
            vocab=int(first("vocab_size")),
            tied_embeddings=bool(first("tie_word_embeddings", default=model_type not in UNTIED_BY_DEFAULT)),
            gated_mlp=model_type not in NON_GATED,
            experts=int(first("num_local_experts", "num_experts", default=1)),
            experts_per_token=int(first("num_experts_per_tok", default=1)),
        )

    def linears(self) -> dict[str, tuple[int, int, int]]:
        """Per layer: module name -> (in_features, out_features, copies); MoE MLPs have one copy per expert."""
        h, i, e = self.hidden, self.intermediate, self.experts
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        mods = {"q_proj": (h, q, 1), "k_proj": (h, kv, 1), "v_proj": (h, kv, 1), "o_proj": (q, h, 1)}
        mods.update({"up_proj": (h, i, e), "down_proj": (i, h, e)})
        if self.gated_mlp:
            mods["gate_proj"] = (h, i, e)
        return mods

    def layer_linear_parameters(self, active: bool = False) -> int:
        """Weights of one layer's linear modules; `active`: only the experts a token goes through."""
        total = 0
        for _name, (n_in, n_out, copies) in self.linears().items():
            if active and copies > 1:
                copies = self.experts_per_token
            total += n_in * n_out * copies
        return total

    @property
    def body_parameters(self) -> int:
        """The decoder layers' linear weights: what 4-bit and 8-bit quantization applies to."""
        return self.layers * (self.layer_linear_parameters() + (self.hidden * self.experts if self.experts > 1 else 0))

    @property
    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.body_parameters + embeddings + self.hidden * (2 * self.layers + 1)


def lora_targets(shape: ModelShape, target_modules: str | list[str]) -> tuple[set[str], list[str]]:
    """The modules LoRA wraps (Llama names) and the requested names the estimate does not know."""
    known = set(shape.linears())
    if target_modules == "all-linear":
        return known, []
    targets, unknown = set(), []
    for name in target_modules:
        mapped = MODULE_ALIASES.get(name, (name,))
        hits = [m for m in mapped if m in known]
        targets.update(hits)
        if not hits:
            unknown.append(name)
    return targets, unknown


def lora_tensors(shape: ModelShape, spec: JobSpec, targets: set[str]) -> list[tuple[int, int]]:
    """(rows, cols) of every LoRA matrix: A is r x in, B is out x r, per layer and expert."""
    r, tensors = spec.lora.r, []
    for name in sorted(targets):
        n_in, n_out, copies = shape.linears()[name]
        tensors += [(r, n_in), (n_out, r)] * (copies * shape.layers)
    return tensors


def optimizer_bytes(optimizer: str, tensors: list[tuple[int, int]]) -> int:
    """State the optimizer keeps per trainable tensor: two moments, 8- or 32-bit; factored for Adafactor."""
    total = 0
    for rows, cols in tensors:
        n = rows * cols
        if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            total += 2 * n + 8 * math.ceil(n / 2048) if n >= BNB_MIN_8BIT else 8 * n
        elif optimizer == "adafactor":
            total += 4 * (rows + cols)
        elif optimizer != "sgd":
            total += 8 * n
    return total


def _layer_activation_bytes(shape: ModelShape, spec: JobSpec, targets: set[str], act: int) -> float:
    """Bytes one decoder layer keeps per token for its backward pass (frozen weights keep no inputs)."""
    h, q = shape.hidden, shape.heads * shape.head_dim
    inner = shape.intermediate * shape.experts_per_token
    total = 8 * h  # both RMSNorms keep their input in fp32
    total += 4 * q * act  # attention keeps q, k and v (repeated to every head when padding needs a mask), output
    total += (3 if shape.gated_mlp else 1) * inner * act  # activation function input, output, and up projection
    inputs = {"q_proj": "x1", "k_proj": "x1", "v_proj": "x1", "o_proj": "attn", "gate_proj": "x2", "up_proj": "x2"}
    sizes = {"x1": h, "attn": q, "x2": h, "mlp": inner}
    used = [inputs.get(name, "mlp") for name in targets]
    if spec.lora.dropout > 0:  # each adapter keeps its own dropped-out copy of its input and the mask
        total += sum(sizes[t] * (act + 1) for t in used)
    else:  # adapters share their input tensor
        total += sum(sizes[t] * act for t in set(used))
    if spec.quantization is not None and spec.quantization.bits == 8:
        total += sum(sizes[t] * act for t in set(inputs.values()) | {"mlp"} if t not in used)  # int8 matmuls keep x
    return total + len(targets) * spec.lora.r * act


@dataclass
class Memory:
    """Bytes at the peak of a training step, by what holds them."""

    weights: int
    lora_parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    overhead: int
    paged: int = 0  # optimizer states in CUDA unified memory: they can spill to host memory
    fixed: int = 0  # CUDA context and allocator fragmentation, not in torch.cuda.max_memory_allocated
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        parts = (self.weights, self.lora_parameters, self.gradients, self.optimizer_states, self.activations)
        return sum(parts) + self.logits + self.overhead

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated() would report: no context, fragmentation or paged state."""
        return self.peak - self.fixed - self.paged

    @property
    def training_growth(self) -> int:
        """What a step adds to a loaded model: gradients, optimizer states, activations, logits, scratch."""
        return self.gradients + self.optimizer_states + self.activations + self.logits + self.overhead - self.fixed


def memory(shape: ModelShape, spec: JobSpec, seq_len: int, on_gpu: bool = True) -> Memory:
    """Peak memory of one micro-batch of `spec.training.batch_size` sequences of `seq_len` tokens.

    On a GPU the model is bf16 (fp16 without bf16) and activations 16-bit; on the CPU everything is fp32.
    """
    t, quant = spec.training, spec.quantization
    act = 2 if on_gpu else 4
    other = shape.parameters - shape.body_parameters  # embeddings, lm_head and norms are never quantized
    if quant is None:
        weights = shape.parameters * act
    elif quant.bits == 4:
        weights = int(shape.body_parameters * NF4_BYTES[quant.double_quant]) + other * act
    else:
        weights = shape.body_parameters + 4 * shape.layers * shape.hidden * 7 + other * act  # int8 + row scales
    targets, unknown = lora_targets(shape, spec.lora.target_modules)
    tensors = lora_tensors(shape, spec, targets)
    trainable = sum(r * c for r, c in tensors)
    states = optimizer_bytes(t.optimizer, tensors)
    tokens = t.batch_size * seq_len
    layer = _layer_activation_bytes(shape, spec, targets, act)
    transient = 4 * shape.hidden * act  # gradients of the residual stream in flight
    if t.gradient_checkpointing:  # each layer's input kept; one layer recomputed at a time
        kept = shape.layers * shape.hidden * act + layer + transient
    else:
        kept = shape.layers * layer + transient
    activations = int(tokens * kept) + t.batch_size * seq_len * seq_len  # + the boolean attention mask
    logits = tokens * shape.vocab * LOGIT_BYTES
    largest = max(n_in * n_out for n_in, n_out, _ in shape.linears().values())
    scratch = largest * (2 + act) if quant is not None else 0  # a dequantized weight and its cast
    fixed = CUDA_CONTEXT + int(FRAGMENTATION * (activations + logits)) if on_gpu else 0
    notes = [f"lora.target_modules {', '.join(unknown)} are not known to the estimate and not counted"] if unknown else []
    return Memory(
        weights=weights,
        lora_parameters=4 * trainable,
        gradients=4 * trainable,
        optimizer_states=states,
        activations=activations,
        logits=logits,
        overhead=scratch + fixed,
        paged=states if t.optimizer.startswith("paged_") and on_gpu else 0,
        fixed=fixed,
        notes=notes,
    )


def trainable_parameters(shape: ModelShape, spec: JobSpec) -> int:
    targets, _ = lora_targets(shape, spec.lora.target_modules)
    return sum(r * c for r, c in lora_tensors(shape, spec, targets))


def flops_per_token(shape: ModelShape, seq_len: int, gradient_checkpointing: bool) -> float:
    """Forward, backward to the inputs only (frozen weights need no weight gradient) and the recomputation."""
    body = 2 * shape.layers * shape.layer_linear_parameters(active=True)
    head = 2 * shape.vocab * shape.hidden
    attention = 2 * seq_len * shape.heads * shape.head_dim * shape.layers  # causal: half of QK^T and AV
    forward = body + head + attention
    backward = body + head + 2 * attention
    return forward + backward + ((body + attention) if gradient_checkpointing else 0)


# Throughput of the reference GPU (A100-SXM4-80G), fitted to Qwen-7B's published LoRA / Q-LoRA profile
# (docs/estimates.md): matmul FLOP/s, and seconds per micro-batch per billion quantized-or-not body weights.
REFERENCE_FLOPS = 156e12
MICRO_BATCH_SECONDS_PER_BILLION = {None: 0.012, 8: 0.05, 4: 0.025}
INT8_SLOWDOWN = 0.5  # LLM.int8 matmuls: no measured figure here; about half the 16-bit speed is commonly seen
# This machine's CPU (2 cores), measured with tests/test_memory_estimate.py: FLOP/s and seconds per micro-batch.
CPU_FLOPS = 8e9
CPU_MICRO_BATCH_SECONDS = 0.05


def seconds_per_micro_batch(shape: ModelShape, spec: JobSpec, tokens: int, seq_len: int, gpu: GpuClass) -> float:
    """Matmul time of `tokens` padded tokens plus the per-micro-batch cost (dequantization, launches)."""
    work = tokens * flops_per_token(shape, seq_len, spec.training.gradient_checkpointing)
    if gpu.is_cpu:
        return work / CPU_FLOPS + CPU_MICRO_BATCH_SECONDS
    bits = spec.quantization.bits if spec.quantization is not None else None
    rate = REFERENCE_FLOPS * gpu.compute * (INT8_SLOWDOWN if bits == 8 else 1.0)
    passes = 3 if spec.training.gradient_checkpointing else 2
    fixed = MICRO_BATCH_SECONDS_PER_BILLION[bits] * shape.body_parameters / 1e9 * passes / 3 / gpu.bandwidth
    return work / rate + fixed
