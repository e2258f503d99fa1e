"""A base model's shape from its config.json (no weights, no torch), and the LoRA matrices a spec puts on it."""

from dataclasses import dataclass
from typing import Any

from app.spec.adapter import LORA_FAMILY
from app.spec.job import JobSpec

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


def trainable_parameters(shape: ModelShape, spec: JobSpec) -> int:
    targets, _ = lora_targets(shape, spec)
    return sum(r * c for r, c in lora_tensors(shape, spec, targets))
