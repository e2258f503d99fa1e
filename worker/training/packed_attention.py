"""`sdpa_packed`: SDPA that attends within each example of a padding-free batch instead of over the whole row.

A padding-free batch is one row of concatenated examples whose position ids restart at each example. Stock
`sdpa` gets a dense block-diagonal causal mask for it and computes every query against every key of the whole
row: (sum of lengths)^2 scores, most of them masked, and no causal skipping (a mask disables it). This runs
SDPA once per example with `is_causal=True` instead: sum of length^2 / 2 scores, the same result (transformers
splits examples where it builds the mask: wherever the position id does not step by one).

Anything else (a padded batch, generation with a KV cache, one example) goes to stock `sdpa` with its mask
unchanged: the mask function registered for this name is sdpa's own.
"""

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sdpa_packed"


def segments(position_ids: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> list[tuple[int, int]] | None:
    """[start, end) of each example in a one-row packed batch; None when the batch is not one (then: stock sdpa)."""
    if position_ids is None or query.shape[0] != 1 or position_ids.shape[0] != 1:
        return None
    length = query.shape[2]
    if key.shape[2] != length or position_ids.shape[-1] != length or length < 2:
        return None
    positions = position_ids[0]
    breaks = (torch.nonzero(positions[1:] - positions[:-1] != 1).flatten() + 1).tolist()
    if not breaks:
        return None
    bounds = [0, *breaks, length]
    return list(zip(bounds[:-1], bounds[1:], strict=False))


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The AttentionInterface function: query [1, heads, T, d]; returns [1, T, heads, d] as sdpa does."""
    bounds = segments(kwargs.get("position_ids"), query, key)
    plain_causal = is_causal is not False and getattr(module, "is_causal", True) and not kwargs.get("sliding_window")
    if bounds is None or not plain_causal:  # a sliding window, or not causal: the mask says it, not is_causal
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    pieces = [
        sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,  # causal within the example: SDPA's is_causal path, no mask
            dropout=dropout,
            scaling=scaling,
            is_causal=True,
            **kwargs,
        )[0]
        for start, end in bounds
    ]
    return torch.cat(pieces, dim=1), None


AttentionInterface.register(NAME, packed_sdpa_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
