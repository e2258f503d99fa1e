"""Peak memory of a LoRA / QLoRA training step from the base model's config.json alone: no weights, no torch.

Memory is what the training step holds at its peak: the frozen weights at their quantization, the LoRA
parameters with their gradients and optimizer states, the activations kept for the backward pass (all layers,
or one layer's input each plus one layer recomputed with gradient checkpointing), the loss head's tiles and the
gradients in flight, and the framework's overhead. docs/estimates.md derives every constant and compares the
figures with measured ones; app/fleet/gpu_classes.py turns a job into time.
"""

import math
from dataclasses import dataclass

from app.fleet.model_shape import ModelShape, lora_targets, lora_tensors
from app.spec.job import JobSpec

GIB = 2**30
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}  # by double_quant: 4-bit + absmax per 64
CUDA_CONTEXT = int(0.5 * GIB)  # CUDA context and cuBLAS workspace: outside PyTorch's allocator
FRAGMENTATION = 0.10  # the caching allocator reserves about this much more than it hands out
BNB_MIN_8BIT = 4096  # bitsandbytes keeps optimizer state of smaller tensors in 32 bits


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
# training.cpu_kernels' LM head on a CPU (worker/training/cpu_kernels.py: tile_tokens): tiles of at most 1024
# tokens and 4M logits over the whole vocabulary, two tile-sized temporaries at its peak.
LEAN_TILE_TOKENS, LEAN_TILE_ELEMENTS, LEAN_MIN_TOKENS, LEAN_HEAD_TILES = 1024, 1 << 22, 64, 2


def _head_tile_bytes(shape: ModelShape, spec: JobSpec, tokens: int, device: Device) -> int:
    """The LM head's temporaries at its peak: TRL's fused head, or on a CPU (by default) the lean one."""
    if not device.cuda and spec.training.cpu_kernels:
        tile = max(LEAN_MIN_TOKENS, min(LEAN_TILE_TOKENS, LEAN_TILE_ELEMENTS // max(shape.vocab, 1)))
        return min(tokens, tile) * shape.vocab * device.act_bytes * LEAN_HEAD_TILES
    # TRL scores 4096 tokens x 32768 vocabulary entries at a time
    return min(tokens, 4096) * min(shape.vocab, 32768) * device.act_bytes * device.head_tiles


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
    # The LM head never builds the logits: it scores them in tiles, keeping its input and an fp32 gradient for
    # it; its backward runs first, with every activation still held.
    head = _head_tile_bytes(shape, spec, n, device) + n * shape.hidden * (4 + act)
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


def batch_shape(spec: JobSpec, cuda: bool, tokens_each: float, longest: int) -> Batch:
    """A micro-batch as worker/training/speed.py shapes it: flattened (padding-free or packed) into one row whose
    mask spans it all, unless each sequence attends alone (flash-attention 2's varlen kernel on a GPU, sdpa_packed on
    a CPU); or padded to its longest example."""
    t = spec.training
    flash = cuda and t.attn_implementation == "flash_attention_2"
    # speed.plan: on a CPU, padding-free batches with sdpa (flash-attention 2 falls back to it) run sdpa_packed
    per_example = flash or (not cuda and t.padding_free and not t.packing and t.attn_implementation != "eager")
    if t.packing:
        tokens_each = longest = t.max_seq_length
    tokens = max(1, round(t.batch_size * tokens_each))
    flattened = t.packing or (t.padding_free and (not cuda or flash))
    if flattened and not per_example:
        return Batch(tokens=tokens, mask_rows=1, mask_span=tokens, masked=True)
    if flattened:
        return Batch(tokens=tokens, mask_rows=t.batch_size, mask_span=longest, masked=False)
    return Batch(tokens=t.batch_size * longest, mask_rows=t.batch_size, mask_span=longest, masked=not flash)


def peak_batch(spec: JobSpec, cuda: bool, longest: int, p95: int) -> Batch:
    """The largest micro-batch: the longest example with others from the long tail (p95), cut at max_seq_length."""
    t = spec.training
    longest, p95 = min(longest, t.max_seq_length), min(p95, t.max_seq_length)
    return batch_shape(spec, cuda, ((t.batch_size - 1) * p95 + longest) / t.batch_size, longest)
