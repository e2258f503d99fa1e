"""Memory and time of a LoRA / QLoRA job from the base model's config.json alone: no weights, no torch.

Memory is what the training step holds at its peak: the frozen weights at their quantization, the LoRA
parameters with their gradients and optimizer states, the activations kept for the backward pass (all layers,
or one layer's input each plus one layer recomputed with gradient checkpointing), the loss head's tiles and the
gradients in flight, and the framework's overhead. docs/estimates.md derives every constant and compares the
figures with measured ones; app/gpu_classes.py turns a job into time.
"""

import math
from dataclasses import dataclass
from typing import Any

from app.adapter_spec import LORA_FAMILY
from app.spec import JobSpec

GIB = 2**30
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


def lora_targets(shape: ModelShape, spec: JobSpec) -> tuple[set[str], list[str]]:
    """The modules LoRA wraps (Llama names) and the requested names the estimate does not know.

    Adapters outside the LoRA family (IA3, prompt learning) train a few vectors or virtual tokens: none counted.
    """
    known, target_modules = set(shape.linears()), spec.lora.target_modules
    if spec.adapter.method not in LORA_FAMILY:
        return set(), []
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


def optimizer_bytes(optimizer: str, tensors: list[tuple[int, int]], param_bytes: int = 4) -> int:
    """State the optimizer keeps per trainable tensor: two moments (8-bit, fp32, or torch's in the parameters'
    dtype), factored for Adafactor, none for plain SGD."""
    total = 0
    for rows, cols in tensors:
        n = rows * cols
        if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            total += 2 * n + 8 * math.ceil(n / 2048) if n >= BNB_MIN_8BIT else 8 * n
        elif optimizer == "paged_adamw_32bit":
            total += 8 * n
        elif optimizer == "adafactor":
            total += 4 * (rows + cols)
        elif optimizer != "sgd":
            total += 2 * param_bytes * n
    return total


@dataclass
class Memory:
    """Bytes at the peak of a training step, by what holds them."""

    weights: int
    lora_parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    transient: int  # the LM head's tiles and the gradients in flight when the step peaks
    overhead: int  # dequantization scratch; on a GPU also the CUDA context and allocator fragmentation
    paged: int = 0  # optimizer states in CUDA unified memory: they can spill to host memory
    fixed: int = 0  # CUDA context and fragmentation: not in torch.cuda.max_memory_allocated()
    notes: tuple[str, ...] = ()

    @property
    def peak(self) -> int:
        parts = (self.weights, self.lora_parameters, self.gradients, self.optimizer_states, self.activations)
        return sum(parts) + self.transient + self.overhead

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated() would report: no context, fragmentation or paged state."""
        return self.peak - self.fixed - self.paged

    @property
    def training_growth(self) -> int:
        """What a step adds to a loaded model: gradients, optimizer states, activations, transients, scratch."""
        return self.gradients + self.optimizer_states + self.activations + self.transient + self.overhead - self.fixed


@dataclass(frozen=True)
class Device:
    """What differs between a GPU worker and a CPU worker for memory (both measured or read from the code paths)."""

    cuda: bool
    act_bytes: int  # activations: bf16 under autocast on a GPU, fp32 on the CPU
    dropout_mask_bytes: int  # CUDA's fused dropout keeps a bool mask; the CPU keeps a float one
    head_tiles: int  # TRL's chunked LM head: its tile plus (on the CPU, torch ops) temporaries of tile size
    fixed: int  # CUDA context and cuBLAS workspace


GPU = Device(cuda=True, act_bytes=2, dropout_mask_bytes=1, head_tiles=2, fixed=CUDA_CONTEXT)
CPU = Device(cuda=False, act_bytes=4, dropout_mask_bytes=4, head_tiles=10, fixed=0)


@dataclass(frozen=True)
class Batch:
    """One micro-batch as the model receives it (worker/training/speed.py decides padded or flattened)."""

    tokens: int  # positions the model runs, padding included
    mask_rows: int  # sequences an attention mask covers: the batch size when padded, 1 when flattened
    mask_span: int  # positions per mask row: the padded length, or the whole flattened batch
    masked: bool  # False: causal attention without a mask (flash-attention 2)


def _layer_activation_bytes(shape: ModelShape, spec: JobSpec, targets: set[str], device: Device) -> float:
    """Bytes one decoder layer keeps per token for its backward pass (frozen weights keep no inputs)."""
    act, h, q = device.act_bytes, shape.hidden, shape.heads * shape.head_dim
    inner = shape.intermediate * shape.experts_per_token
    total = 8 * h  # both RMSNorms keep their input in fp32
    total += 4 * q * act  # attention keeps q, k and v (repeated to every head when a mask is given), output
    total += (3 if shape.gated_mlp else 1) * inner * act  # activation function input, output, and up projection
    inputs = {"q_proj": "x1", "k_proj": "x1", "v_proj": "x1", "o_proj": "attn", "gate_proj": "x2", "up_proj": "x2"}
    sizes = {"x1": h, "attn": q, "x2": h, "mlp": inner}
    used = [inputs.get(name, "mlp") for name in targets]
    if spec.lora.dropout > 0:  # each adapter keeps its own dropped-out copy of its input and the mask
        total += sum(sizes[t] * (act + device.dropout_mask_bytes) for t in used)
    else:  # adapters share their input tensor
        total += sum(sizes[t] * act for t in set(used))
    if spec.quantization is not None and spec.quantization.bits == 8:
        total += sum(sizes[t] * act for t in {"x1", "attn", "x2", "mlp"} - set(used))  # int8 matmuls keep x
    return total + len(targets) * spec.lora.r * act


def _attention_bytes(shape: ModelShape, spec: JobSpec, batch: Batch, device: Device) -> int:
    """Per layer: the attention mask sdpa turns into a float bias and keeps; eager also keeps the probabilities."""
    elements = batch.mask_rows * batch.mask_span**2 if batch.masked else 0
    if spec.training.attn_implementation == "eager":
        elements += shape.heads * batch.mask_rows * batch.mask_span**2
    return elements * device.act_bytes


def _weight_bytes(shape: ModelShape, spec: JobSpec, device: Device) -> int:
    quant, params = spec.quantization, shape.parameters
    if spec.task == "classification" and not shape.tied_embeddings:
        params -= shape.vocab * shape.hidden  # the LM head gives way to a small score head
    other = params - shape.body_parameters  # embeddings, lm_head and norms are never quantized
    if quant is None:
        return params * device.act_bytes
    if quant.bits == 4:
        return int(shape.body_parameters * NF4_BYTES[quant.double_quant]) + other * device.act_bytes
    rows = shape.layers * sum(n_out * copies for _in, n_out, copies in shape.linears().values())
    return shape.body_parameters + 4 * rows + other * device.act_bytes  # int8 weights and an fp32 scale per row


def memory(shape: ModelShape, spec: JobSpec, batch: Batch, device: Device = GPU) -> Memory:
    """Peak memory of one training step on one micro-batch."""
    t, act, n = spec.training, device.act_bytes, batch.tokens
    targets, unknown = lora_targets(shape, spec)
    tensors = lora_tensors(shape, spec, targets)
    trainable = sum(r * c for r, c in tensors)
    # TRL casts a quantized model's adapter to bf16; on a CPU without bf16 units the recipe keeps it fp32.
    lora_bytes = 2 if device.cuda and spec.quantization is not None else 4
    states = optimizer_bytes(t.optimizer, tensors, lora_bytes)
    layer = n * _layer_activation_bytes(shape, spec, targets, device) + _attention_bytes(shape, spec, batch, device)
    # The LM head never builds the logits: TRL scores them in tiles of 4096 tokens x 32768 vocabulary entries,
    # keeping its input and an fp32 gradient for it; its backward runs first, with every activation still held.
    head = min(n, 4096) * min(shape.vocab, 32768) * act * device.head_tiles + n * shape.hidden * (4 + act)
    if spec.task == "classification":  # a small score head on the last token instead
        head = n * shape.hidden * (4 + act)
    backward = n * (4 * shape.intermediate * shape.experts_per_token + 8 * shape.hidden) * act  # gradients in flight
    if t.gradient_checkpointing:  # each layer keeps its input; one layer at a time is recomputed
        kept = n * shape.layers * shape.hidden * act
        activations, peak_extra = kept + layer, max(head - layer, backward)
    else:
        activations, peak_extra = shape.layers * layer, max(head, backward)
    largest = max(n_in * n_out for n_in, n_out, _ in shape.linears().values())
    scratch = largest * (2 + act) if spec.quantization is not None else 0  # a dequantized weight and its cast
    fixed = device.fixed + int(FRAGMENTATION * (activations + peak_extra)) if device.fixed else 0
    notes = tuple(f"lora.target_modules {name!r} is not known to the estimate and not counted" for name in unknown)
    return Memory(
        weights=_weight_bytes(shape, spec, device),
        lora_parameters=lora_bytes * trainable,
        gradients=lora_bytes * trainable,
        optimizer_states=states,
        activations=int(activations),
        transient=int(peak_extra),
        overhead=scratch + fixed,
        paged=states if t.optimizer.startswith("paged_") and device.cuda else 0,
        fixed=fixed,
        notes=notes,
    )


def trainable_parameters(shape: ModelShape, spec: JobSpec) -> int:
    targets, _ = lora_targets(shape, spec)
    return sum(r * c for r, c in lora_tensors(shape, spec, targets))


def batch_shape(spec: JobSpec, cuda: bool, tokens_each: float, longest: int) -> Batch:
    """A micro-batch as worker/training/speed.py shapes it: flattened (padding-free or packed) into one row whose
    mask spans it all, unless flash-attention 2 runs each sequence alone; or padded to its longest example."""
    t = spec.training
    flash = cuda and t.attn_implementation == "flash_attention_2"
    if t.packing:
        tokens_each = longest = t.max_seq_length
    tokens = max(1, round(t.batch_size * tokens_each))
    flattened = t.packing or (t.padding_free and (not cuda or flash))
    if flattened and not flash:
        return Batch(tokens=tokens, mask_rows=1, mask_span=tokens, masked=True)
    if flattened:
        return Batch(tokens=tokens, mask_rows=t.batch_size, mask_span=longest, masked=False)
    return Batch(tokens=t.batch_size * longest, mask_rows=t.batch_size, mask_span=longest, masked=not flash)


def peak_batch(spec: JobSpec, cuda: bool, longest: int, p95: int) -> Batch:
    """The largest micro-batch: the longest example with others from the long tail (p95), cut at max_seq_length."""
    t = spec.training
    longest, p95 = min(longest, t.max_seq_length), min(p95, t.max_seq_length)
    return batch_shape(spec, cuda, ((t.batch_size - 1) * p95 + longest) / t.batch_size, longest)
