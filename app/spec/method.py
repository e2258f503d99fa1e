"""The job spec's `method`: supervised training (the default), or preference tuning after it (DPO, KTO, ORPO, SimPO).

Field names and defaults are TRL's (`DPOConfig`, `KTOConfig`, `ORPOConfig`, `CPOConfig`), so its documentation reads
directly; docs/preference.md says what each one optimises and which data it takes.
"""

from typing import Annotated, Literal

from pydantic import Field

from app.spec.formats import StrictModel

DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down"]


class SftMethod(StrictModel):
    type: Literal["sft"] = Field("sft", description="Supervised fine-tuning on the format's examples.")


class DpoMethod(StrictModel):
    """Direct Preference Optimization on prompt / chosen / rejected pairs; the reference is the starting model."""

    type: Literal["dpo"] = "dpo"
    beta: float = Field(
        0.1, gt=0, le=100, description="How far from the reference the policy may move: higher stays closer."
    )
    loss_type: DpoLoss = Field(
        "sigmoid", description="`sigmoid` (DPO), `ipo`, `hinge`, `robust`, ... (TRL's DPOConfig.loss_type)."
    )
    rpo_alpha: float | None = Field(
        None, ge=0, le=100, description="Weight of an SFT loss on the chosen answers (RPO); null: none."
    )


class KtoMethod(StrictModel):
    """Kahneman-Tversky Optimization on unpaired answers, each labelled good (true) or bad (false)."""

    type: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, le=100, description="How far from the reference the policy may move.")
    desirable_weight: float = Field(1.0, gt=0, le=100, description="Weight of the loss on good answers.")
    undesirable_weight: float = Field(1.0, gt=0, le=100, description="Weight of the loss on bad answers.")


class OrpoMethod(StrictModel):
    """Odds Ratio Preference Optimization: SFT and preference in one loss, no reference model."""

    type: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, le=100, description="Weight of the odds-ratio term (the paper's lambda).")


class SimpoMethod(StrictModel):
    """SimPO: length-normalised rewards with a target margin, no reference model (TRL's CPO with loss `simpo`)."""

    type: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, le=100, description="Reward scale.")
    gamma: float = Field(0.5, ge=0, le=100, description="Target reward margin (TRL's simpo_gamma).")


Method = Annotated[
    SftMethod | DpoMethod | KtoMethod | OrpoMethod | SimpoMethod,
    Field(discriminator="type"),
]
PAIRED = ("dpo", "orpo", "simpo")  # methods trained on chosen / rejected pairs
UNPAIRED = ("kto",)  # methods trained on single answers with a good / bad label


def method_problem(
    method: str, format_type: str, packing: bool, adapter_method: str, batch_size: int, sft_only: list[str]
) -> str | None:
    """Why the method cannot train with this format, packing, adapter, batch size or SFT-only settings (`sft_only`:
    the training fields set that only supervised jobs use); None when it can."""
    if method in PAIRED and format_type != "preference":
        return f'method {method!r} trains on pairs: use format {{"type": "preference"}}'
    if method in UNPAIRED and format_type != "unpaired_preference":
        return f'method {method!r} trains on labelled answers: use format {{"type": "unpaired_preference"}}'
    if method == "sft" and format_type in ("preference", "unpaired_preference"):
        return f"format {format_type!r} is preference data: set method.type to dpo, orpo, simpo or kto"
    if method != "sft" and packing:
        return f"training.packing does not apply to method {method!r}"
    if method != "sft" and adapter_method not in ("lora", "dora", "rslora"):
        return f"method {method!r} trains LoRA-family adapters (lora, dora, rslora)"
    if method != "sft" and sft_only:
        return f"{', '.join(sft_only)} apply to method sft only: leave them off for {method!r}"
    if method == "kto" and batch_size < 2:
        return "method 'kto' needs training.batch_size of 2 or more (its KL term pairs answers within a batch)"
    return None
