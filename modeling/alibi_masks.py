# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""Where each query may look and what it pays for distance: the ALiBi masks, one rule each.

What `masking_utils` is to Llama, this file is to `modeling_alibi.py`: it turns an `AttentionLayout` (padding,
packed documents and the cache, `alibi_layout.py`) plus the per-head bias into the mask form each attention backend
takes (`create_alibi_mask`). Two rules are written once, and every form derives from them:
  - visibility: `AttentionLayout.visible` (causal, never padding, only inside the query's document), narrowed per
    head by `AttentionLayout.visible_within` (windowed ALiBi), in `alibi_layout.py`;
  - the ALiBi bias: `alibi_bias(slopes, distance) = -m_h * distance`, distance from `AttentionLayout.distance`.
It travels with checkpoints as Hub remote code beside `modeling_alibi.py` (transformers follows the relative import),
so it imports only torch and transformers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from transformers.utils import logging

from .alibi_blocked import (
    PATTERN_CACHE_BYTES,
    QUADRATIC_WARNING_BYTES,
    Compaction,
    StaticContinuation,
    WindowedAlibi,
    after_left_padding,
    blocked_by_default,
    blocked_plan,
    compactable,
    compiled_continuation,
    continued,
    own_slots,
    packed,
    packed_plan,
    quadratic_mask_reason,
)
from .alibi_compile import (
    FUSED_UNCOMPILED,
    block_mask_call,
    compile_disabled,
    compiled,
    flex_compiles,
    flex_too_old,
)
from .alibi_layout import AttentionLayout
from .alibi_triton import TritonAlibiMask, build_triton_mask

logger = logging.get_logger(__name__)

# `bias(head, distance)`: the fp32 score bias for heads and distances `pos_q - pos_k`, broadcasting
# over tensors or on the scalars flex_attention's `score_mod` gets.
ScoreBias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def get_alibi_slopes(num_heads: int, max_bias: float = 8.0) -> torch.Tensor:
    """The paper's per-head slopes, as an fp32 tensor of shape `[num_heads]` (`alibi_slope_values`)."""
    return torch.tensor(alibi_slope_values(num_heads, max_bias), dtype=torch.float32)


def alibi_slope_values(num_heads: int, max_bias: float = 8.0) -> list[float]:
    """The paper's per-head slopes as Python floats, each rounded to fp32 (the values `get_alibi_slopes` holds).

    For a power of two n, `start = 2**(-max_bias / n)` and the slopes are `start**1 ... start**n`.
    Otherwise take the slopes of the nearest lower power of two, then every other slope of twice
    that many until there are n (the official code, BLOOM and MPT agree on these values).
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}.")

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-max_bias / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    if closest != num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return [struct.unpack("f", struct.pack("f", slope))[0] for slope in slopes]


def alibi_windows(slopes: torch.Tensor, cutoff: float) -> torch.Tensor:
    """`[H]` long: the largest distance `d` whose bias `-m_h * d` is still at least `-cutoff`, per head."""
    return torch.floor(cutoff / slopes.double()).long()


@dataclass
class FlexAlibiMask:
    """The flex_attention mask: a `BlockMask` plus the `score_mod` that adds the bias (no L x L tensor).

    `length`: the real sequence length when the mask was built for a longer, bucketed one (`flex_bucket`); the
    attention function pads queries, keys and values to the mask's length and cuts the output back.
    """

    block_mask: BlockMask
    score_mod: Callable | None
    length: int | None = None


@dataclass
class FlashAlibiMask:
    """The flash_attention_2 mask: fp32 slopes (None without ALiBi) and, with padding or documents,
    the slots flash-attn's varlen kernel keeps and the cumulative lengths of its sequences."""

    slopes: torch.Tensor | None
    window: int = -1  # flash-attn's left window for every head (the widest ALiBi window); -1: unlimited
    query_valid: torch.Tensor | None = None  # [B, Q] bool; None: dense causal, the plain kernel
    key_valid: torch.Tensor | None = None  # [B, K] bool
    cu_seqlens_q: torch.Tensor | None = None  # [n + 1] int32
    cu_seqlens_k: torch.Tensor | None = None  # [n + 1] int32
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0


def flex_bucket(length: int) -> int:
    """The length a flex_attention prefill runs at: the next power of two, at least 128 (flex's block).

    flex_attention compiles once per shape (dynamic shapes hit an inductor C++ codegen error on the CPU in torch
    2.13), and dynamo stops compiling a function after 8 shapes and silently runs the unfused path: a model that
    prefills prompts of many lengths would end there. Bucketed, lengths up to 16,384 take at most 8 graphs.
    """
    return max(128, 1 << (length - 1).bit_length())


def padded_layout(layout: AttentionLayout, length: int) -> AttentionLayout:
    """`layout` (no cache, Q == K) grown to `length` slots. Real queries never see the new slots (they come after
    every real token); the new queries see garbage, and their outputs are cut off."""
    extra = length - layout.key_length

    def grow(tensor: torch.Tensor | None, value: int | bool) -> torch.Tensor | None:
        return None if tensor is None else F.pad(tensor, (0, extra), value=value)

    return AttentionLayout(
        layout.batch_size, length, length, 0, layout.device,
        grow(layout.key_positions, 0), grow(layout.key_valid, False), grow(layout.document_ids, -1),
    )  # fmt: skip


def build_dense_mask(
    layout: AttentionLayout,
    bias: ScoreBias | None,
    num_heads: int,
    dtype: torch.dtype,
    windows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The additive attention mask `[B or 1, H or 1, Q, K]` in `dtype`.

    Visible pairs hold the bias (`-m_h * (pos_q - pos_k)` for ALiBi); hidden pairs hold the dtype's
    minimum, as do keys beyond a head's `windows[h]` (windowed ALiBi). The bias is computed in fp32
    from the relative distance and only then cast: adding `m * pos_k` in bf16 loses whole units at
    long lengths.
    """
    # Index grids that broadcast to [B, H, Q, K], as transformers' masking_utils expands a mask_mod.
    batch, device = (1 if layout.is_plain else layout.batch_size), layout.device
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.arange(num_heads, device=device)[None, :, None, None]
    q_idx = torch.arange(layout.query_length, device=device)[None, None, :, None]
    kv_idx = torch.arange(layout.key_length, device=device)[None, None, None, :]
    visible = layout.visible_within(windows, b, h, q_idx, kv_idx)
    if bias is None:
        return torch.where(visible, 0.0, torch.finfo(dtype).min).to(dtype)
    return torch.where(visible, bias(h, layout.distance(b, q_idx, kv_idx)).to(dtype), torch.finfo(dtype).min)


def decoding_mask(
    layout: AttentionLayout, slopes: torch.Tensor, windows: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """`build_dense_mask` for queries after a cache over plain slots (decoding steps, a prompt continued after cached
    tokens; a slot is a position): `[1, H, Q, K]`, the same values in five ops where the general rule takes fifteen
    (its 170 us a step were 15% of a decoding step of the demo's model)."""
    queries = layout.past_length + torch.arange(layout.query_length, device=layout.device)
    distance = queries[:, None] - torch.arange(layout.key_length, device=layout.device)  # [Q, K] pos_q - pos_k
    hidden = distance < 0  # later queries, and a static cache's empty slots
    if windows is not None:
        hidden = hidden | (distance > windows[:, None, None])
    bias = alibi_bias(slopes[:, None, None], distance.float()).to(dtype)  # [H, Q, K]
    return bias.masked_fill(hidden, torch.finfo(dtype).min)[None]


def decoding_step(layout: AttentionLayout) -> bool:
    """Whether `layout` is one query after every cached slot of a dynamic cache, in plain layout (a decoding step
    of `generate`), where each head's mask is a function of the key's distance alone."""
    return (
        layout.query_length == 1
        and layout.is_plain
        and layout.custom_visible is None
        and type(layout.past_length) is int
        and layout.key_length == layout.past_length + 1
    )


def decoding_row(
    patterns: dict,
    slopes: list[float],
    windows: list[int] | None,
    dtype: torch.dtype,
    device: torch.device,
    length: int,
) -> torch.Tensor | None:
    """`decoding_mask` of a decoding step (`decoding_step`) over `length` keys, `[1, H, 1, length]`, the same values:
    the last `length` columns of a row per head, `-m_h * d` for distances `d = N - 1 ... 0` (the dtype's minimum past
    a window), kept in `patterns` and rebuilt twice as long when outgrown, so a step slices instead of computing (the
    mask's ops and their Python were a quarter of the ALiBi model's extra time in a decoding step of the demo's
    model). None where the row would take over a quarter of the patterns' budget (`PATTERN_CACHE_BYTES`), which
    would then be cleared and the row rebuilt at every step: the mask is computed there (8 heads in fp32: past
    131,072 keys, where attending to them costs far more than the mask)."""
    key = ("decoding", tuple(slopes), tuple(windows) if windows is not None else None, dtype, device)
    row = patterns.get(key)
    if row is None or row.shape[-1] < length:
        size = max(2 * (row.shape[-1] if row is not None else 0), length, 1024)
        if len(slopes) * size * torch.finfo(dtype).bits // 8 > PATTERN_CACHE_BYTES // 4:
            return None
        with torch.inference_mode(False):  # kept across forwards, as the blocked patterns
            reach = torch.tensor(windows, device=device) if windows is not None else None
            rates = torch.tensor(slopes, dtype=torch.float32, device=device)
            row = decoding_mask(AttentionLayout(1, 1, size, size - 1, device), rates, reach, dtype)[0, :, 0]  # [H, N]
        patterns[key] = row
    return row[None, :, None, row.shape[-1] - length :]


def flash_varlen_boundaries(
    layout: AttentionLayout, slopes: torch.Tensor | None = None, window: int = -1
) -> FlashAlibiMask:
    """Token indices and cumulative lengths for flash-attn's varlen kernel: one sequence per document and row.

    Keys are the real slots (`key_valid`, and at most the last query's slot); queries are the last Q
    slots of each row that hold tokens. A document with no query this step gets a 0-length query.
    """
    slots = torch.arange(layout.key_length, device=layout.device)
    key_valid = (slots <= layout.past_length + layout.query_length - 1)[None].expand(layout.batch_size, -1)
    if layout.key_valid is not None:
        key_valid = key_valid & layout.key_valid
    documents = (
        layout.document_ids if layout.document_ids is not None else torch.zeros_like(key_valid, dtype=torch.long)
    )
    # One id per (row, document), increasing along the flattened batch, so sequences are contiguous.
    rows = torch.arange(layout.batch_size, device=layout.device)[:, None]
    sequence = (rows * (documents.max() + 2) + documents + 1)[key_valid]
    query_valid = key_valid & (slots >= layout.past_length)
    boundaries = F.pad(sequence[1:] != sequence[:-1], (1, 0), value=True)
    sequence_index = boundaries.cumsum(0) - 1  # [tokens] which sequence each real key slot belongs to
    num_sequences = int(sequence_index[-1]) + 1
    seqlens_k = torch.bincount(sequence_index, minlength=num_sequences)
    seqlens_q = torch.bincount(sequence_index[query_valid[key_valid]], minlength=num_sequences)
    return FlashAlibiMask(
        slopes,
        window,
        query_valid=query_valid[:, int(layout.past_length) : int(layout.past_length) + layout.query_length],
        key_valid=key_valid,
        cu_seqlens_q=F.pad(seqlens_q.cumsum(0, dtype=torch.int32), (1, 0)),
        cu_seqlens_k=F.pad(seqlens_k.cumsum(0, dtype=torch.int32), (1, 0)),
        max_seqlen_q=int(seqlens_q.max()),
        max_seqlen_k=int(seqlens_k.max()),
    )


# What `AlibiModel` hands every layer as `attention_mask`, by backend (None: plain causal attention).
AlibiMask = torch.Tensor | WindowedAlibi | StaticContinuation | FlexAlibiMask | FlashAlibiMask | TritonAlibiMask | None


# The default attention implementation (`AlibiPreTrainedModel.get_correct_attn_implementation`), registered with
# transformers under this name by `alibi_attention`: the fastest exact ALiBi kernel for the device, and never an
# L x L tensor where one can be avoided. Multi-token forwards on `fused_devices` (CUDA) run flex_attention; everything
# else runs sdpa, with the key-only bias and blocked heads on the CPU and the small `[B, H, 1, K]` mask when decoding.
ALIBI_FUSED = "alibi_fused"
# Flash attention in Triton with the bias added per tile (`alibi_triton`): multi-token forwards on CUDA devices.
ALIBI_TRITON = "alibi_triton"


def alibi_bias(slopes: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """The ALiBi bias: `-m_h * distance` for slopes `m_h` and distances `pos_q - pos_k` (fp32, broadcasting)."""
    return -slopes * distance


def runs_flex(implementation: str, layout: AttentionLayout, bias: ScoreBias | None, fused: Fused) -> bool:
    """Whether this forward's mask is a flex_attention one.

    With flex_attention named, for every multi-token forward without a prepared 4-D mask (dense already: flex would
    save nothing). With `ALIBI_FUSED` (the default), only on a device of `fused.devices` where flex compiles, for a
    bias sdpa would need an L x L mask for (prefill, training, scoring), and never with attention dropout (flex has
    none); one-token decoding keeps sdpa with the small `[B, H, 1, K]` mask.
    """
    if layout.query_length == 1 or layout.custom_visible is not None:
        return False
    if implementation == "flex_attention":
        if (too_old := flex_too_old(layout.device)) is not None:
            raise RuntimeError(too_old)
        return True
    if not (implementation == ALIBI_FUSED and layout.device.type in fused.devices):
        return False
    if bias is None or fused.dropout != 0.0:
        return False
    if not flex_compiles(layout.device):
        why = "TORCHDYNAMO_DISABLE or TORCH_COMPILE_DISABLE is set" if compile_disabled() else "Triton is missing"
        if flex_too_old(layout.device) is not None:
            why = f"torch {torch.__version__} cannot compile it on the CPU"
        logger.warning_once(FUSED_UNCOMPILED.format(device=layout.device.type, why=why))
        return False
    return True


@dataclass
class Fused:
    """What the fused default needs to know about the model: where flex runs, and the dropout of this forward."""

    devices: tuple[str, ...]
    dropout: float = 0.0


def create_alibi_mask(
    config,
    layout: AttentionLayout,
    encoding,
    dtype: torch.dtype,
    heads: tuple[int, int],
    fused: Fused,
    block_masks: dict[tuple, BlockMask],
    patterns: dict[tuple, torch.Tensor] | None = None,
) -> AlibiMask:
    """The one mask every layer shares, in the form the attention backend `config._attn_implementation` takes.

    Args:
        config: the model's `AlibiConfig`.
        layout: where queries and keys sit (`build_layout` or `custom_mask_layout`).
        encoding: the position encoding module (`score_bias`, `slopes`, `windows` for all heads).
        heads: `(first, count)`, the heads this process computes (all of them, or its share under tensor
            parallelism): the slopes, windows and biases are those heads'.
        fused: for the `ALIBI_FUSED` default, the devices where it runs flex_attention and this forward's dropout.
        block_masks: a cache of flex `BlockMask`s for plain layouts, kept by the model.
        patterns: the blocked path's patterns, kept by the model (None: built afresh for this forward).
    """
    implementation = config._attn_implementation
    device = layout.device
    first, count = heads
    if patterns is not None and implementation != "flash_attention_2" and decoding_step(layout):
        slope_values = encoding.slope_values()
        if slope_values is not None:  # ALiBi: the mask every other path ends in, sliced from a kept row
            window_values = encoding.window_values()
            share = slice(first, first + count)
            window_values = window_values[share] if window_values is not None else None
            row = decoding_row(patterns, slope_values[share], window_values, dtype, device, layout.key_length)
            if row is not None:
                return row
    bias = encoding.score_bias(layout.key_length, device)
    slopes = encoding.slopes(device)
    windows = encoding.windows(device)
    # The same as Python numbers: the blocked path's plan, which a compiled forward traces as constants.
    slope_values, window_values = encoding.slope_values(), encoding.window_values()
    if count != config.num_attention_heads:  # tensor parallel: this rank's heads, with their own slopes
        share = slice(first, first + count)
        slopes = slopes[share] if slopes is not None else None
        windows = windows[share] if windows is not None else None
        slope_values = slope_values[share] if slope_values is not None else None
        window_values = window_values[share] if window_values is not None else None
        if bias is not None:
            every_head = bias
            bias = lambda head, distance: every_head(head + first, distance)  # noqa: E731
    if implementation == "flash_attention_2":
        if (bias is not None and slopes is None) or layout.custom_visible is not None:
            what = "a 4-D attention_mask" if layout.custom_visible is not None else config.position_encoding
            raise ValueError(f"flash_attention_2 cannot take {what}; use sdpa, eager or flex_attention.")
        # flash-attn has one window for all heads: the widest, so no head loses a key it would see.
        window = int(windows.max()) if windows is not None else -1
        return FlashAlibiMask(slopes, window) if layout.is_plain else flash_varlen_boundaries(layout, slopes, window)
    if implementation == ALIBI_TRITON and layout.query_length > 1 and layout.custom_visible is None:
        if bias is not None and slopes is None:
            raise ValueError(
                f"{ALIBI_TRITON} adds ALiBi's slopes (or no bias) per tile and cannot take "
                f"position_encoding={config.position_encoding!r}; use sdpa, eager or flex_attention."
            )
        return triton_alibi_mask(layout, slopes, windows, count)
    if runs_flex(implementation, layout, bias, fused):
        return flex_alibi_mask(layout, bias, windows, block_masks)
    sdpa = implementation in ("sdpa", ALIBI_FUSED)
    # The sdpa-style kernels (flex and Triton decode through sdpa) know `is_causal`; eager needs a tensor. A plain
    # layout is plain while compiling too (`build_layout` reads no values then: any attention_mask makes it general).
    if (sdpa or implementation in ("flex_attention", ALIBI_TRITON)) and layout.is_plain:
        every_key = layout.query_length == layout.key_length or (
            layout.query_length == 1 and layout.past_length + 1 == layout.key_length
        )
        if bias is None and every_key:
            return None  # plain causal attention: sdpa's is_causal, or nothing to mask at all
    # Where the blocked plan runs instead of a [B, H, Q, K] mask (without it, measured on cpu-small, Intel Xeon):
    # - a padded batch with no cache (training on tokenizer output, a padded prefill), with each row's tokens gathered
    #   ahead of its padding, which makes the layout plain (the tokens keep their positions, and the padding, now after
    #   them, is hidden by causality). Compiled, every attention_mask counts as padding (its values cannot be read), so
    #   this is also the all-ones mask's path there (a training step at 0.43x, 2,048 tokens);
    # - packed documents, each block cut at its queries' documents (`packed_plan`; 0.71x the unpacked step), padded
    #   ones too, compacted first (`Compaction.documents`; compiled, every packed batch with an attention_mask);
    # - a static cache's first forward, on the queries' own slots (`own_slots`: the later ones are empty; the kernel
    #   cuts the keys to them); a 4,096-token prompt generated at 0.37x the dynamic cache with 6x its memory;
    # - a prompt continued after cached tokens, for its last queries (`continued`, `WindowedAlibi.past`): 512 tokens
    #   after 4,096 at 0.60x the no-bias model; a left-padded batch's as documents from each row's first token
    #   (`after_left_padding`; a chunked prefill of 2 x 512 after 4,096 at 0.68x); with gradients too (a training step
    #   on 512 tokens after 4,096 at 0.41x); compiled after a static cache's tokens, in an op that reads their count
    #   (`StaticContinuation`; 512 after 4,096 at 0.57x).
    blocked = sdpa and slope_values is not None
    own = own_slots(layout) if blocked else layout
    past = continued(layout) if blocked else 0
    fresh = (own.is_plain and own.query_length == own.key_length) or compactable(own) or packed(own)
    if blocked and (fresh or past):
        length = past + own.query_length
        plan = blocked_plan(config, length, slope_values, window_values, dtype, patterns, device)
        if plan is not None:
            plan.past = past
            if past and own.key_valid is not None:
                plan.documents = after_left_padding(own.key_valid, past, own.query_length)
                return plan
            document_ids = own.document_ids if packed(own) else None
            if compactable(own):
                plan.compaction = Compaction.of(own.key_valid)
                document_ids = plan.compaction.documents(document_ids) if document_ids is not None else None
            return packed_plan(plan, document_ids) if document_ids is not None else plan
    if blocked and compiled_continuation(layout) and blocked_by_default(device, dtype):
        # Compiled after a static cache's tokens (its count a tensor): the plan, past and padding read in the op.
        plan = blocked_plan(config, layout.query_length, slope_values, window_values, dtype, patterns, device, True)
        return StaticContinuation(plan, layout.past_length.clone(), layout.key_valid, window_values)
    if layout.is_plain and layout.custom_visible is None and slopes is not None:
        mask = decoding_mask(layout, slopes, windows, dtype)
    else:
        mask = build_dense_mask(layout, bias, count, dtype, windows)
    if slopes is not None and layout.query_length > 1 and not torch.compiler.is_compiling():
        warn_if_quadratic(mask, layout, implementation, fused)
    return mask


QUADRATIC_WARNED: set[str] = set()  # the causes warned of in this process


def warn_if_quadratic(mask: torch.Tensor, layout: AttentionLayout, implementation: str, fused: Fused) -> None:
    """Warn once per cause where an ALiBi forward took a `[B, H, Q, K]` mask of `QUADRATIC_WARNING_BYTES` or more on
    a path the user did not choose for it: it ran out of memory silently before."""
    size = mask.numel() * mask.element_size()
    if size < QUADRATIC_WARNING_BYTES:
        return
    reason = quadratic_mask_reason(layout, implementation, fused.devices, fused.dropout)
    if reason is not None and reason not in QUADRATIC_WARNED:
        QUADRATIC_WARNED.add(reason)
        logger.warning(
            f"alibi-lm builds the ALiBi bias as a [B, H, Q, K] mask here (the first: {size / 2**20:,.0f} MiB at "
            f"{layout.query_length:,} x {layout.key_length:,}), memory that grows with the square of the length, "
            f"because {reason}."
        )


def flex_alibi_mask(
    layout: AttentionLayout, bias: ScoreBias | None, windows: torch.Tensor | None, block_masks: dict[tuple, BlockMask]
) -> FlexAlibiMask:
    """A `BlockMask` from `layout.visible_within` (cached per shape when plain) and a `score_mod` adding the bias.

    With windowed ALiBi the `BlockMask` is per head: each head's blocks past its window are skipped.
    """
    length = None
    bucketed = flex_bucket(layout.query_length)
    if (
        layout.query_length == layout.key_length
        and bucketed != layout.query_length
        and not torch.compiler.is_compiling()
    ):
        length, layout = layout.query_length, padded_layout(layout, bucketed)
    # Uncompiled, create_block_mask evaluates mask_mod on the whole Q x K grid; compiled it does
    # not, but compiling costs seconds per shape, so only long sequences pay for it.
    shape = (layout.query_length, layout.key_length)
    compile_mask = shape[0] * shape[1] >= 2048 * 2048
    reach = None if windows is None else tuple(windows.tolist())
    cache_key = (*shape, int(layout.past_length), layout.device, reach)
    block_mask = block_masks.get(cache_key) if layout.is_plain else None
    if block_mask is None:

        def mask_mod(b, h, q_idx, kv_idx):  # create_block_mask takes functions, not bound methods
            return layout.visible_within(windows, b, h, q_idx, kv_idx)

        batch = None if layout.is_plain else layout.batch_size
        heads = None if windows is None else len(windows)
        if compile_mask:
            signature = (
                layout.device.type, batch, heads, *shape, layout.key_valid is None, layout.document_ids is None,
            )  # fmt: skip
            block_mask = compiled(block_mask_call, signature)(mask_mod, batch, heads, *shape, layout.device)
        else:
            block_mask = create_block_mask(mask_mod, batch, heads, *shape, device=layout.device)
        if layout.is_plain:
            if len(block_masks) > 16:
                block_masks.clear()
            block_masks[cache_key] = block_mask

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias(h, layout.distance(b, q_idx, kv_idx))

    return FlexAlibiMask(block_mask, score_mod if bias is not None else None, length)


def triton_alibi_mask(
    layout: AttentionLayout, slopes: torch.Tensor | None, windows: torch.Tensor | None, num_heads: int
) -> TritonAlibiMask:
    """The `alibi_triton` form of a layout: its tensors (none when plain), the slopes and windows."""
    tensors = {} if layout.is_plain else dict(
        key_positions=layout.key_positions, key_valid=layout.key_valid, document_ids=layout.document_ids
    )  # fmt: skip
    return build_triton_mask(slopes, windows, num_heads, layout.device, layout.past_length, **tensors)
