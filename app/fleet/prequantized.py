"""Base models that ship already quantized (GPTQ, AWQ), told from their config.json alone: no torch here.

Such a base is trained with LoRA on top and never quantized a second time. A spec that names a quantization
for it is refused; one that left `quantization` at its default gets `null` instead, so the stored spec says
what runs. Loading needs GPU kernels: the worker refuses the job on a CPU (docs/methods.md).
"""

import json
from collections.abc import Callable
from typing import Any

from app.core.config import settings
from app.core.errors import Invalid
from app.spec.adapter import PREQUANTIZED_METHODS
from app.spec.job import JobSpec

PREQUANTIZED = ("gptq", "awq")
WHY_NOT_PREQUANTIZED = {
    "dora": "PEFT 0.21's GPTQ and AWQ LoRA layers refuse DoRA",
    "ia3": "PEFT 0.21 has no IA3 layer for GPTQ or AWQ kernels",
}


def quant_method(config: dict[str, Any]) -> str | None:
    """`gptq` or `awq` when a model config's `quantization_config` says so, else None."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        return None
    method = str(quantization.get("quant_method", "")).lower()
    return method if method in PREQUANTIZED else None


# Reads a base model's config.json as the caller's tenant may (app.checks.estimate.config_reader); None: unknown.
ConfigReader = Callable[[str], dict[str, Any] | None]


def local_config(base_model: str) -> dict[str, Any] | None:
    """The config.json of a directory in FT_MODELS_DIR; None for a Hub id, which only a tenant's reader may read."""
    local = (settings.resolved_models_dir / base_model).resolve()
    if not (local.is_relative_to(settings.resolved_models_dir) and local.is_dir()):
        return None
    try:
        return json.loads((local / "config.json").read_text())
    except (OSError, ValueError):
        return None


def check_prequantized_base(spec: JobSpec, read_config: ConfigReader = local_config) -> None:
    """For a GPTQ/AWQ base: refuse a second quantization or a method PEFT cannot put on it; else null the default.

    Raises Invalid (422) naming the field. Mutates `spec.quantization` to None when the caller left it unset.
    `read_config` reads the base's config.json as the tenant (its allow-lists, its Hub token); when it cannot, the
    worker decides from the config it loads.
    """
    config = read_config(spec.base_model)
    method = quant_method(config) if config is not None else None
    if method is None:
        return
    kind = method.upper()
    if "quantization" in spec.model_fields_set and spec.quantization is not None:
        _refuse(
            "quantization",
            f"{spec.base_model!r} is already {kind}-quantized (its config.json says so); it is trained as it is, "
            "with LoRA on top, and is not quantized again: set quantization to null",
        )
    if spec.adapter.method not in PREQUANTIZED_METHODS:
        why = WHY_NOT_PREQUANTIZED.get(spec.adapter.method, "it was never run on a GPTQ/AWQ base here")
        _refuse(
            "adapter.method",
            f"{spec.base_model!r} is {kind}-quantized and `{spec.adapter.method}` cannot train on it ({why}); "
            f"use {' or '.join(f'`{m}`' for m in PREQUANTIZED_METHODS)}, or an unquantized base",
        )
    spec.quantization = None


def _refuse(field: str, message: str) -> None:
    raise Invalid(f"{field}: {message}", extra={"problems": [{"field": field, "message": message}]})
