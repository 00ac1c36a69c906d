# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""What `AlibiModel.forward` accepts, checked before any work: a clear error that names the argument and the shape
it needs, instead of an index error deep in a kernel (or a silently wrong bias from a mask of the wrong length).
It travels with checkpoints as Hub remote code beside `modeling_alibi.py`, so it imports only torch and transformers.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


def validate_inputs(
    vocab_size: int,
    inputs: torch.Tensor,
    attention_mask: torch.Tensor | None,
    document_ids: torch.Tensor | None,
    cache: Cache | None,
) -> None:
    """Raise a `ValueError` that names the bad argument of a forward (the model skips this while compiling: it reads
    values).

    Args:
        vocab_size: the model's vocabulary; `input_ids` must lie below it.
        inputs: `input_ids` `[B, Q]` or `inputs_embeds` `[B, Q, hidden]`.
        attention_mask: `[B, past + Q]`, `[B, Q]`, the whole static cache's, or a prepared `[B, 1, Q, past + Q]`.
        document_ids: `[B, past + Q]`.
        cache: the transformers `Cache` the forward continues, or None.
    """
    name = "input_ids" if inputs.dtype in (torch.int32, torch.int64) else "inputs_embeds"
    rank = 2 if name == "input_ids" else 3
    if inputs.dim() != rank:
        layout = "[batch, length]" if rank == 2 else "[batch, length, hidden]"
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(inputs.shape)}.")
    batch, length = inputs.shape[:2]
    if batch == 0 or length == 0:
        raise ValueError(f"{name} is empty (shape {tuple(inputs.shape)}): pass at least one token per row.")
    if name == "input_ids" and (int(inputs.min()) < 0 or int(inputs.max()) >= vocab_size):
        raise ValueError(
            f"input_ids must lie in [0, vocab_size={vocab_size}), got values in "
            f"[{int(inputs.min())}, {int(inputs.max())}]. Is the tokenizer's vocabulary larger than the model's?"
        )
    past_length = int(cache.get_seq_length()) if cache is not None else 0
    total = past_length + length
    # Also accepted: a mask of the new tokens only, or of the whole static cache (create_masks_for_generate).
    accepted = {(batch, total), (batch, length), (batch, cache.get_mask_sizes(length, 0)[0] if cache else length)}
    if attention_mask is not None and attention_mask.dim() == 4:  # prepared: 0 (or True) marks a visible pair
        if tuple(attention_mask.shape) != (batch, 1, length, total):
            raise ValueError(
                f"A 4-D attention_mask must have shape {(batch, 1, length, total)} (batch, 1, new tokens, "
                f"cached + new tokens), got {tuple(attention_mask.shape)}."
            )
        attention_mask = None
    for arg, value, shapes in (
        ("attention_mask", attention_mask, accepted),
        ("document_ids", document_ids, {(batch, total)}),
    ):
        if value is not None and (value.dim() != 2 or tuple(value.shape) not in shapes):
            raise ValueError(
                f"{arg} must be 2-D with shape {(batch, total)} (batch, cached + new tokens), got {tuple(value.shape)}."
            )
    if attention_mask is not None and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        values = attention_mask.unique().tolist()[:8]
        raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (token), got values {values}.")
