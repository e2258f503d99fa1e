"""The benchmark's shared workload: the model, the variable-length data and the one eval-loss measure for both sides."""

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.training.tiny import _CORPUS

BENCH_MODEL = "bench-llama"  # its directory name in FT_MODELS_DIR
# A bigger tiny-llama for the CPU bench (a few million parameters, GQA like TinyLlama), every dimension a
# multiple of 64 for the 4-bit kernels; the vocabulary is padded so the logits cost what a real model's do.
CPU_MODEL = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 4096,
    "max_position_embeddings": 2048,
}
# TinyLlama-1.1B's architecture (random weights, nothing downloaded), saved in bf16 as TinyLlama ships.
TINYLLAMA_MODEL = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "dtype": "bfloat16",
}


@dataclass
class Workload:
    """What both sides train: identical model, data, quantization, LoRA and loop settings."""

    model: str = "cpu"  # "cpu" (CPU_MODEL) or "tinyllama"
    train_rows: int = 800
    eval_rows: int = 64
    median_tokens: int = 96  # lengths are log-normal, as in instruction data: most short, a long tail
    length_sigma: float = 0.8
    max_seq_length: int = 512
    batch_size: int = 4
    gradient_accumulation_steps: int = 4
    max_steps: int = 40
    learning_rate: float = 1e-3
    warmup_steps: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_config(self) -> dict[str, Any]:
        return TINYLLAMA_MODEL if self.model == "tinyllama" else CPU_MODEL


def job_spec(w: Workload, dataset: str, validation: str, **training: Any) -> dict[str, Any]:
    """The same model, data, 4-bit NF4, LoRA and loop as the recipe; every speed knob at the service default."""
    return {
        "name": "bench",
        "base_model": BENCH_MODEL,
        "dataset": dataset,
        "validation_dataset": validation,
        "format": {"type": "text", "field": "text"},
        "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True},
        "lora": {"r": w.lora_r, "alpha": w.lora_alpha, "dropout": w.lora_dropout, "target_modules": "all-linear"},
        "training": {
            "max_steps": w.max_steps,
            "batch_size": w.batch_size,
            "gradient_accumulation_steps": w.gradient_accumulation_steps,
            "learning_rate": w.learning_rate,
            "warmup_steps": w.warmup_steps,
            "max_seq_length": w.max_seq_length,
            "optimizer": "paged_adamw_8bit",
            "seed": w.seed,
            "logging_steps": 1,
            **training,
        },
    }


def make_model(workload: Workload, out_dir: Path) -> Path:
    """The random-weight Llama both sides fine-tune (built once, reused when present)."""
    from worker.training.tiny import make_tiny_model

    if not (out_dir / "config.json").exists():
        make_tiny_model(out_dir, config=workload.model_config)
    return out_dir


def _vocabulary(seed: int) -> tuple[list[str], dict[str, list[str]]]:
    """Words of the tiny model's corpus and a sparse bigram chain over them: text a model can learn."""
    words = sorted({w for w in _CORPUS.split() if w.isascii()})
    rng = random.Random(seed)
    return words, {w: rng.sample(words, 3) for w in words}


def make_texts(n: int, workload: Workload, seed: int) -> list[str]:
    """n documents whose token counts are log-normal around median_tokens (about two tokens a word)."""
    words, successors = _vocabulary(workload.seed)
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        tokens = rng.lognormvariate(math.log(workload.median_tokens), workload.length_sigma)
        n_words = max(4, min(int(tokens / 2), workload.max_seq_length))
        word = rng.choice(words)
        out = [word]
        for _ in range(n_words - 1):
            word = rng.choice(successors[word])
            out.append(word)
        texts.append(" ".join(out))
    return texts


def write_dataset(workload: Workload, out_dir: Path) -> tuple[Path, Path]:
    """train.jsonl and eval.jsonl of {"text": ...} rows, the same files for both sides."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n, seed in (
        ("train", workload.train_rows, workload.seed),
        ("eval", workload.eval_rows, workload.seed + 1),
    ):
        path = out_dir / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps({"text": t}) for t in make_texts(n, workload, seed)) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def eval_loss(model_dir: Path, adapter_dir: Path, eval_path: Path, max_seq_length: int) -> float:
    """Mean next-token loss of base + adapter on the eval texts, computed the same way for both sides.

    Each trainer's own eval differs in details (the recipe's pad-is-EOS masking, TRL's appended EOS), so
    the comparison uses this one measure: the 4-bit base loaded alike, one text at a time, no padding.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from worker.training.model import keep_4bit_layers_trainable_on_cpu

    cuda = torch.cuda.is_available()
    qconfig = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32,
    )
    kwargs: dict[str, Any] = {"quantization_config": qconfig, "dtype": torch.bfloat16 if cuda else torch.float32}
    if cuda:
        kwargs["device_map"] = {"": 0}
    base = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    keep_4bit_layers_trainable_on_cpu(base)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in read_texts(eval_path):
            ids = tokenizer(text, truncation=True, max_length=max_seq_length, return_tensors="pt").input_ids
            ids = ids.to(base.device)
            n = ids.shape[1] - 1
            total += float(model(input_ids=ids, labels=ids).loss) * n
            count += n
    return total / count


def flops_per_token(model_dir: Path, train: Path, max_seq_length: int) -> float:
    """Model FLOPs per trained token for LoRA on a frozen base (recomputation by checkpointing not counted).

    Forward: 2 per weight of every linear layer (lm_head too) plus causal attention, 2·q·s per layer for a
    token in a sequence of s (q = heads × head_dim). Backward: activation gradients only, as the base is
    frozen: 2 per weight, twice the attention. Per token: 4·N + 6·q·layers·E[s²]/E[s].
    """
    from transformers import AutoConfig, AutoTokenizer

    c = AutoConfig.from_pretrained(model_dir)
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    h, layers = c.hidden_size, c.num_hidden_layers
    linear = layers * (2 * h * q + 2 * h * kv + 3 * h * c.intermediate_size) + h * c.vocab_size
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [min(len(tokenizer(t).input_ids), max_seq_length) for t in read_texts(train)]
    s_eff = sum(s * s for s in lengths) / sum(lengths)
    return 4 * linear + 6 * q * layers * s_eff
