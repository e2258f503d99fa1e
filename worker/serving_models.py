"""The embedded serving backend's loaded models: one base kept loaded, the tenants' adapters beside it, an LRU.

Loading a base takes seconds to minutes and its memory dwarfs an adapter's, so a worker keeps one base (the last
used; a request for another base unloads it first) and loads each adapter once as a named PEFT adapter on it.
Requests then pick their adapter per row (`adapter_names=` in one mixed batch, worker/serving_generation.py), so
switching adapters costs nothing. Adapters are kept least recently used first and dropped (`delete_adapter`)
beyond FT_SERVING_MAX_ADAPTERS or FT_SERVING_ADAPTER_MEMORY_BYTES.

The base is served unquantized, in the compute dtype (bf16 on a GPU that has it, fp32 on the CPU), whatever the
jobs on it trained with: jobs on one base may differ (none, 4-bit, 8-bit), one copy must serve all of them, and a
LoRA trained on a quantized base applies to the full-precision weights it approximates (as merging one does).
It also keeps 4-bit's CPU layout problems (docs/PITFALLS) out of serving. A base that fits only in 4-bit belongs
on vLLM or a larger GPU. A GPTQ/AWQ base stays in its own quantization (worker/training/model.py load_model).
"""

import gc
import logging
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from app.spec.job import JobSpec
from worker.training import model as modelling

log = logging.getLogger(__name__)
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


def adapter_name(job_id: str, sha256: str) -> str:
    """A PEFT adapter name per job and checksum: a re-trained or replaced adapter is a different one."""
    return f"{job_id}_{sha256[:16]}"


class ServingModels:
    """The base this worker serves and the adapters loaded on it (least recently used first)."""

    def __init__(self, max_adapters: int, max_bytes: int):
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self.base_model: str | None = None
        self.model: Any = None  # the base, or a PeftModel around it once an adapter is loaded
        self.tokenizer: Any = None
        self.adapters: OrderedDict[str, int] = OrderedDict()  # name -> bytes of its tensors

    def base(self, spec: JobSpec) -> tuple[Any, Any]:
        """(model, tokenizer) for the spec's base model, loading it (and unloading another) when needed."""
        if self.base_model != spec.base_model:
            self.unload()
            log.info("serving: loading base model %s", spec.base_model)
            served = spec.model_copy(update={"quantization": None})  # see the module docstring
            tokenizer = modelling.load_tokenizer(spec.base_model)
            model = modelling.load_model(served, "sdpa")
            model.config.use_cache = True  # training turns the KV cache off; generation wants it
            model.eval()
            self.model, self.tokenizer, self.base_model = model, tokenizer, spec.base_model
        return self.model, self.tokenizer

    def unload(self) -> None:
        """Drop the base and its adapters, and give their memory back before anything else loads."""
        self.model = self.tokenizer = self.base_model = None
        self.adapters.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def has_adapters(self) -> bool:
        return isinstance(self.model, PeftModel)

    def use(self, adapters: dict[str, Path]) -> None:
        """Make these adapters (name -> unpacked directory) loaded at once, marking them most recently used.

        The least recently used others are dropped beyond the bounds; the ones named here never are (a batch
        needs all of them), so a batch may overshoot the memory bound by its own adapters.
        """
        for name, directory in adapters.items():
            if name in self.adapters:
                self.adapters.move_to_end(name)
                continue
            self._load(name, directory)
        self._evict(keep=adapters)

    def _load(self, name: str, directory: Path) -> None:
        log.info("serving: loading adapter %s on %s", name, self.base_model)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(directory), adapter_name=name, is_trainable=False)
        self.model.eval()
        self.adapters[name] = adapter_bytes(self.model, name)

    def _evict(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        for name in list(self.adapters):
            over = len(self.adapters) > self.max_adapters or sum(self.adapters.values()) > self.max_bytes
            if not over:
                return
            if name not in keep:
                log.info("serving: dropping adapter %s (least recently used)", name)
                self.model.delete_adapter(name)
                del self.adapters[name]


def adapter_bytes(model: torch.nn.Module, name: str) -> int:
    """The memory an adapter's tensors take (LoRA A and B per layer, any modules it saves fully)."""
    part = f".{name}."
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if part in n)
