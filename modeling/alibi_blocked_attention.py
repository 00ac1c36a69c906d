# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""The blocked plan's attention: each head in blocks of queries against the keys its window reaches
(`blocked_head`), the heads that see the whole sequence in one fused causal call with the key-only bias
(`key_only_attention`), and `blocked_attention`, which runs a `WindowedAlibi` plan (`alibi_blocked.py`) over all heads.

`alibi_attention.py`'s sdpa kernel calls it for the mask `create_alibi_mask` builds for windowed ALiBi and the CPU
default, traced where the length is fixed and inside its ops where it is not. Hub remote code like the rest of the
model; imports only torch and its siblings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from .alibi_blocked import (
    FUSED_CPU_ATTENTION,
    PackedDocuments,
    WindowedAlibi,
    key_only_exact,
    runs_key_only,
    windowed_block_size,
)
from .alibi_layout import AttentionLayout
from .alibi_masks import alibi_bias


def key_only_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """`[1, H, 1, L]` fp32: `m_h * (pos_k - c)`, the bias the fused CPU kernel takes together with its causal mask.

    Softmax is invariant to a per-row constant, so `m * pos_k` gives the same attention as `-m * (pos_q - pos_k)`.
    Centring on `c = (L - 1) / 2` halves the largest bias. Exact only in fp32, with no dropout and Q == K, and only on
    SDPA's fused CPU kernel (`key_only_attention`; the math kernel refuses a mask together with `is_causal`); precise
    only while `m * L` is small, which `windowed_alibi_attention` ensures by running here only heads whose window
    holds the sequence.
    """
    keys = torch.arange(length, device=slopes.device, dtype=torch.float32) - (length - 1) / 2
    # The bias rule at distance `-(pos_k - c)`: `alibi_bias` up to the constant `-m * (pos_q - c)` of each row.
    return alibi_bias(slopes[None, :, None, None], -keys[None, None, None, :])


def key_only_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, scale: float, past: int = 0
) -> torch.Tensor:
    """Causal attention `[B, H, Q, D]` with the key-only bias (`key_only_bias`, over all K keys) on the fused CPU
    kernel, for queries after `past` cached keys (K = past + Q).

    The kernel's `is_causal` aligns its first query with the first key, so after a cache the keys split in two: the
    cached ones, which every query sees (no causal mask), and the queries' own, causal; the two partial softmaxes join
    by their log-sum-exps. No gradient flows through a log-sum-exp: without a cache only (or without gradients)."""
    if past == 0:
        return FUSED_CPU_ATTENTION(query, key, value, 0.0, True, attn_mask=bias, scale=scale)[0]
    cached, cached_lse = FUSED_CPU_ATTENTION(
        query, key[:, :, :past], value[:, :, :past], 0.0, False, attn_mask=bias[..., :past], scale=scale
    )[:2]
    own, own_lse = FUSED_CPU_ATTENTION(
        query, key[:, :, past:], value[:, :, past:], 0.0, True, attn_mask=bias[..., past:], scale=scale
    )[:2]
    lse = torch.logaddexp(cached_lse, own_lse)  # [B, H, Q]
    return cached * (cached_lse - lse).exp()[..., None] + own * (own_lse - lse).exp()[..., None]


def head_runs(whole: list[bool]) -> list[tuple[int, int, bool]]:
    """`(first, stop, whole)` for each run of consecutive heads: those that see the whole sequence share one call
    (ALiBi's mildest slopes come last, so usually one run), every other head is a run of its own."""
    runs: list[tuple[int, int, bool]] = []
    for h, fused in enumerate(whole):
        if fused and runs and runs[-1][2]:
            runs[-1] = (runs[-1][0], h + 1, True)
        else:
            runs.append((h, h + 1, fused))
    return runs


def block_pattern(slope: float, window: int, block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`[block, window + block]`: the bias of query i of any block on key j of the keys it can reach, -inf where hidden.

    One block as a layout of its own: its queries sit at slots window ... window + block - 1 after the span's first
    key, so the pattern follows the model's visibility and bias rules (it is the one tensor quadratic in the window).
    Made outside inference mode, since the model keeps it across forwards: one made in inference mode could not be
    saved for a later training step's backward.
    """
    with torch.inference_mode(False):
        span_layout = AttentionLayout(1, block, window + block, window, device)
        i = torch.arange(block, device=device)[:, None]
        j = torch.arange(window + block, device=device)[None, :]
        visible = span_layout.visible_within(torch.tensor([window], device=device), 0, 0, i, j)
        bias = alibi_bias(torch.tensor(slope, device=device), span_layout.distance(0, i, j).float())
        return torch.where(visible, bias, float("-inf")).to(dtype)


def cached(patterns: dict, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`patterns[key]`, built on first use. Read once: a model serving threads shares its cache between them."""
    found = patterns.get(key)
    if found is None:
        found = patterns[key] = build()
    return found


def blocked_head(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slope: float,
    window: int,
    patterns: dict,
    scaling: float,
    dropout: float,
    documents: PackedDocuments | None = None,
    past: int = 0,
) -> torch.Tensor:
    """One head `[B, Q, D]` in blocks of queries, each against the `window` keys before it and its own block; the
    queries follow `past` cached keys (`k` and `v` hold past + Q).

    The bias-and-window pattern `[n, w + n]` is the same for every block. Blocks whose span starts at or after
    position 0 go through one sdpa call (blocks as its head dimension, keys cut out with `unfold`); the first
    `ceil(w / n)` blocks, whose span would start before 0, take one call each with the pattern's last columns.
    Every call is 4-D: the CPU's fused kernel takes only 4-D (sdpa sends 3-D to its math kernel, which writes out
    every score). With packed documents, each query's keys before its document's start are hidden too: the pattern
    becomes a mask per row and block (linear in L), which the layers after the first find in `documents.masks`.
    """
    batch, length, dim = q.shape  # length: the queries
    block = windowed_block_size(window)
    span = window + block  # the keys one block of queries can reach
    device, dtype = q.device, q.dtype
    pattern = cached(
        patterns, (slope, window, dtype, device), lambda: block_pattern(slope, window, block, dtype, device)
    )
    lead = min(-(-max(window - past, 0) // block), -(-length // block))  # blocks whose span starts before slot 0
    parts = []
    for i in range(lead):
        start, stop = i * block, min(length, (i + 1) * block)
        begin = window - past - start  # the pattern's column of key slot 0
        mask = pattern[: stop - start, begin : begin + past + stop]
        if documents is not None:  # [B, 1, n, stop]: keys from slot 0
            mask = documents.cut((slope, window, dtype, i), mask, documents.starts[:, None, start:stop])
        parts.append(F.scaled_dot_product_attention(
            q[:, None, start:stop], k[:, None, : past + stop], v[:, None, : past + stop],
            attn_mask=mask, dropout_p=dropout, scale=scaling,
        )[:, 0])  # fmt: skip
    first = lead * block
    if first < length:
        blocks = -(-(length - first) // block)
        tail = blocks * block - (length - first)  # zero queries that fill the last block (their rows are cut off)
        # Keys and values from slot `past + first - window` on, cut into overlapping spans: [B, blocks, span, D].
        k, v = (
            F.pad(t[:, past + first - window :], (0, 0, 0, tail)).unfold(1, span, block).transpose(-1, -2)
            for t in (k, v)
        )
        q = F.pad(q[:, first:], (0, 0, 0, tail)).view(batch, blocks, block, dim)
        mask = pattern
        if documents is not None:  # [B, blocks, n, span]: block i's keys from slot past + first - window + i n
            spans = past + first - window + block * torch.arange(blocks, device=device)
            begins = F.pad(documents.starts[:, first:], (0, tail)).view(batch, blocks, block)
            mask = documents.cut((slope, window, dtype, "blocks"), pattern, begins - spans[:, None])
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        parts.append(attended.view(batch, blocks * block, dim)[:, : length - first])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def blocked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: WindowedAlibi, scaling: float, dropout: float
) -> torch.Tensor:
    """Causal windowed-ALiBi attention `[B, H, L, D]` in blocks, each seeing only the keys its window reaches.

    For head h with window w and block size n, query block i (positions `[i n, (i + 1) n)`) attends to key
    positions `[i n - w, (i + 1) n)`: w + n scores per query instead of the causal triangle's L / 2. The
    bias-and-window pattern `[n, w + n]` is the same for every block, so it is built once per head (`blocked_head`).
    Nothing is L x L: memory is O(L (w + n) / n) per head. On the CPU flash kernel, the heads `runs_key_only` picks run
    as one fused causal call with the key-only bias. The heads are split once and the outputs joined once, in the
    `[B, L, H, D]` layout the caller transposes back to (each backward a slice or a copy, no zero-filled inputs).
    After `mask.past` cached tokens (a continued prompt) the queries are the last of `past + Q` slots.
    """
    batch, heads, queries, dim = query.shape
    past = mask.past
    length = past + queries  # the keys
    # Packed documents cut every head's keys per query: no head can take the key-only bias's one causal call, but
    # where each row's queries share their document's start (`PackedDocuments.first`).
    documents = mask.documents
    fused = key_only_exact(query.device, query.dtype, dropout) and (documents is None or documents.first is not None)
    if past and torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        fused = False  # after a cache, the key-only call joins two softmaxes by log-sum-exps, which carry no gradient
    whole = [fused and runs_key_only(mask, h, length, query.dtype) for h in range(heads)]

    def key_only_bias_of(slopes: list[float]) -> torch.Tensor:  # [1 or B, h, 1, K]
        bias = key_only_pattern(mask, slopes, length, query.device)
        if documents is None:
            return bias
        return bias.masked_fill(
            torch.arange(length, device=bias.device) < documents.first[:, None, None, None], float("-inf")
        )

    if all(whole):  # every head (short sequences, e.g. training at L): one call on the tensors as they are
        return key_only_attention(query, key, value, key_only_bias_of(mask.slopes), scaling, past)
    runs = head_runs(whole)
    sizes = [stop - first for first, stop, _ in runs]
    outputs = []
    for (first, stop, fused_run), q, k, v in zip(runs, *(t.split(sizes, dim=1) for t in (query, key, value))):
        if fused_run:
            outputs.append(
                key_only_attention(q, k, v, key_only_bias_of(mask.slopes[first:stop]), scaling, past).transpose(1, 2)
            )
        else:
            window = min(mask.windows[first], length - 1)
            attended = blocked_head(
                q[:, 0], k[:, 0], v[:, 0], mask.slopes[first], window, mask.patterns, scaling, dropout,
                mask.documents, past,
            )  # fmt: skip
            outputs.append(attended[:, :, None])
    return torch.cat(outputs, dim=2).transpose(1, 2)


def key_only_pattern(mask: WindowedAlibi, slopes: list[float], length: int, device: torch.device) -> torch.Tensor:
    """The key-only bias of these heads at this length, built by the first layer and kept like the patterns."""

    def build():
        with torch.inference_mode(False):  # kept across forwards, as `block_pattern`
            return key_only_bias(torch.tensor(slopes, device=device), length)

    return cached(mask.patterns, ("key-only", tuple(slopes), length, device), build)
