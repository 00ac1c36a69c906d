# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""ALiBi causal language model for Hugging Face Transformers.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

Head h adds `-m_h * (i - j)` to the score of query position i on key position j. The bias lives in
the attention mask, built once per forward and shared by every layer from two rules, each written
once in `AttentionLayout`: which key slots a query may see (causal, not padding, same packed
document) and how far apart two tokens are. Its form depends on the backend: eager / sdpa get a
4-D `[B, H, Q, K]` tensor computed in fp32 from the relative distance (on the CPU in fp32 without
padding, sdpa gets the key-only bias `m_h * pos_k` plus `is_causal=True`); flex_attention a
`score_mod` and a `BlockMask`; flash_attention_2 the slopes as `alibi_slopes`, and its varlen
kernel for padding and packed documents. Packed documents come as `document_ids`, or in
transformers' padding-free format (restarting `position_ids`, or `cu_seq_lens_q/k`).

The layout follows transformers' `models/llama/modeling_llama.py` (v5.24). This file travels with
checkpoints as Hub remote code, so it imports only torch, transformers and `configuration_alibi`
(imported first: it checks the transformers version).
"""

# isort: off
from .configuration_alibi import AlibiConfig

# isort: on
import functools
import importlib
import importlib.util
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.models.llama.modeling_llama import (  # the same math: softmax(QK^T * scale + mask) V, RoPE, GQA
    apply_rotary_pos_emb,
    eager_attention_forward,
    repeat_kv,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

# `bias(head, distance)`: the fp32 score bias for heads and distances `pos_q - pos_k`, broadcasting
# over tensors or on the scalars flex_attention's `score_mod` gets.
ScoreBias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# --- 1. Small helpers: slopes, buckets, packing, the attention layout and its masks --------


def get_alibi_slopes(num_heads: int, max_bias: float = 8.0) -> torch.Tensor:
    """The paper's per-head slopes, as an fp32 tensor of shape `[num_heads]`.

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
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_windows(slopes: torch.Tensor, cutoff: float) -> torch.Tensor:
    """`[H]` long: the largest distance `d` whose bias `-m_h * d` is still at least `-cutoff`, per head."""
    return torch.floor(cutoff / slopes.double()).long()


def t5_relative_position_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's causal bucketing of `distance = pos_q - pos_k >= 0` (Raffel et al. 2020, unidirectional)."""
    distance = distance.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Larger distances share buckets that grow logarithmically up to max_distance.
    large = max_exact + (
        torch.log(distance.float().clamp(min=1) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return torch.where(is_small, distance, large)


def inverse_frequencies(dim: int, base: float, device: torch.device) -> torch.Tensor:
    """`[dim / 2]` fp32 frequencies `base**(-2i / dim)` of sinusoidal and rotary embeddings."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


@dataclass
class WindowedAlibi:
    """The blocked sdpa path's "mask": each head's slope and window, nothing L x L.

    Head h sees the `windows[h]` tokens before each query and itself. `windowed_alibi_attention`
    cuts the queries into blocks and gives each block only the keys its window reaches, so a
    head's cost is linear in L; heads whose window holds the whole sequence share one fused causal
    call. Plain causal layouts (no padding, no documents) with Q == K only. It serves windowed
    ALiBi (`alibi_window_cutoff`) and the CPU default path, whose windows end where the bias
    has silenced a key (`ALIBI_UNDERFLOW_CUTOFF`).
    """

    slopes: list[float]
    windows: list[int]
    # Each head's bias-and-window pattern, built by the first layer and reused by the others: this object is made
    # once per forward and shared by every layer.
    patterns: dict[tuple, torch.Tensor] = field(default_factory=dict)


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


def packed_document_ids(
    position_ids: torch.Tensor | None, cu_seq_lens: torch.Tensor | None, batch_size: int, length: int
) -> torch.Tensor | None:
    """Document ids `[B, L]` of a padding-free packed batch, or None when nothing is packed.

    Args:
        position_ids: `[B or 1, L]`; a position that does not follow its left neighbour starts a
            new document (transformers' `find_packed_sequence_indices`).
        cu_seq_lens: `[n + 1]` flash-attn varlen boundaries over the flattened batch; they win
            over `position_ids` when both are given.
    """
    if cu_seq_lens is not None:
        if not torch.compiler.is_compiling() and int(cu_seq_lens[-1]) != batch_size * length:
            raise ValueError(
                f"cu_seq_lens_k must end at the number of tokens ({batch_size} x {length} = "
                f"{batch_size * length}), got {int(cu_seq_lens[-1])}."
            )
        flat = torch.arange(batch_size * length, device=cu_seq_lens.device)
        return torch.searchsorted(cu_seq_lens[1:].to(flat.dtype), flat, right=True).view(batch_size, length)
    if position_ids is None:
        return None
    return find_packed_sequence_indices(position_ids.expand(batch_size, -1))


@dataclass
class AttentionLayout:
    """Where each query and key slot sits, derived once per forward from padding, documents and the cache.

    Attributes:
        batch_size, query_length, key_length: B, Q and K (K includes a static cache's empty slots).
        past_length: tokens already in the cache (an int, or a 0-d tensor for static caches).
        device: where the index tensors live.
        key_positions: `[B, K]` long, each slot's position within its document, counting real
            tokens only; None when every slot is a token of one document (position = slot).
        key_valid: `[B, K]` bool, False for padding and empty slots; None when there are none.
        document_ids: `[B, K]` long, the packed document of each slot; None for one per row.
        custom_visible: `[B, 1, Q, K]` bool from a prepared 4-D attention mask; it replaces the rule.
    """

    batch_size: int
    query_length: int
    key_length: int
    past_length: int | torch.Tensor
    device: torch.device
    key_positions: torch.Tensor | None = None
    key_valid: torch.Tensor | None = None
    document_ids: torch.Tensor | None = None
    custom_visible: torch.Tensor | None = None

    @property
    def is_plain(self) -> bool:
        """Causal attention over one unpadded document per row: the mask depends only on the shape."""
        return self.key_positions is None

    @property
    def query_positions(self) -> torch.Tensor:
        """`[B, Q]` (or `[1, Q]` when plain) position of each query."""
        query_slots = torch.arange(self.query_length, device=self.device) + self.past_length
        if self.key_positions is None:
            return query_slots[None]
        return self.key_positions[:, query_slots]

    def visible(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """May query `q_idx` see key slot `kv_idx`? The one visibility rule, as a flex `mask_mod`.

        Causal in slot order, never a padding slot, only inside the query's document. A query always
        sees its own slot, so no row is empty and a padding row's softmax stays finite. Works on the
        scalars flex_attention passes and on broadcast index tensors for the dense mask alike.
        """
        if self.custom_visible is not None:
            return self.custom_visible[b, 0, q_idx, kv_idx]
        q_slot = q_idx + self.past_length
        keep = kv_idx <= q_slot
        if self.key_valid is not None:
            keep = keep & self.key_valid[b, kv_idx]
        if self.document_ids is not None:
            keep = keep & (self.document_ids[b, kv_idx] == self.document_ids[b, q_slot])
        return keep | (kv_idx == q_slot)

    def visible_within(
        self, windows: torch.Tensor | None, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        """`visible`, and no farther than head h's window `windows[h]` (windowed ALiBi; None: no window)."""
        keep = self.visible(b, h, q_idx, kv_idx)
        if windows is None:
            return keep
        return keep & ((self.distance(b, q_idx, kv_idx) <= windows[h]) | (kv_idx == q_idx + self.past_length))

    def distance(self, b: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """`pos_q - pos_k` (long), on scalars or broadcast index tensors like `visible`."""
        q_slot = q_idx + self.past_length
        if self.key_positions is None:
            return q_slot - kv_idx
        return self.key_positions[b, q_slot] - self.key_positions[b, kv_idx]


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


def build_layout(
    attention_mask: torch.Tensor | None,
    document_ids: torch.Tensor | None,
    batch_size: int,
    query_length: int,
    key_length: int,
    past_length: int | torch.Tensor,
    device: torch.device,
) -> AttentionLayout:
    """The `AttentionLayout` of a forward pass.

    Args:
        attention_mask: `[B, <= K]` 0/1 padding mask over cached + new tokens, or None.
        document_ids: `[B, <= K]` packed-document ids over cached + new tokens, or None.

    Positions count real tokens inside each document (a cumulative sum), so a left-padded row, or a
    document packed after others, gets the positions, and so the ALiBi bias, it would have alone.
    Slots past the given masks (a static cache's empty tail) are padding of document -1.
    """
    valid = None
    if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
        valid = attention_mask.to(device=device, dtype=torch.bool)
        valid = F.pad(valid, (0, key_length - valid.shape[1]), value=False)
    if document_ids is not None:
        document_ids = F.pad(document_ids.to(device), (0, key_length - document_ids.shape[1]), value=-1)
    if valid is None and document_ids is None:
        return AttentionLayout(batch_size, query_length, key_length, past_length, device)

    real = valid.long() if valid is not None else torch.ones(batch_size, key_length, dtype=torch.long, device=device)
    count = real.cumsum(-1)  # [B, K] real tokens up to and including each slot
    if document_ids is not None:
        # Restart the count at each document: subtract the tokens before the latest document start.
        starts = F.pad(document_ids[:, 1:] != document_ids[:, :-1], (1, 0), value=True)
        count = count - torch.where(starts, count - real, 0).cummax(-1).values
    positions = (count - 1).clamp(min=0)
    return AttentionLayout(batch_size, query_length, key_length, past_length, device, positions, valid, document_ids)


def custom_mask_layout(
    mask: torch.Tensor,
    position_ids: torch.Tensor | None,
    query_length: int,
    key_length: int,
    past_length: int | torch.Tensor,
    device: torch.device,
) -> AttentionLayout:
    """The layout of a prepared 4-D mask `[B, 1, Q, K]` (True or 0.0 where visible), as transformers' models take
    one; positions come from `position_ids` `[B or 1, K]` (branches after a shared prefix), or the slot order."""
    visible = (mask if mask.dtype == torch.bool else mask == 0).to(device)
    batch_size = visible.shape[0]
    positions = position_ids if position_ids is not None else torch.arange(key_length, device=device)[None]
    positions = positions.to(device).expand(batch_size, key_length)
    return AttentionLayout(
        batch_size, query_length, key_length, past_length, device, positions, custom_visible=visible
    )


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
AlibiMask = torch.Tensor | WindowedAlibi | FlexAlibiMask | FlashAlibiMask | None

# --- 2. Position encodings, norm and MLP ---------------------------------------------------


class NoPositionEncoding(nn.Module):
    """No position information beyond the causal mask; the base every position encoding extends."""

    def __init__(self, config: AlibiConfig):
        super().__init__()

    def embed(self, hidden_states: torch.Tensor, positions: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """Token embeddings `[B, Q, hidden]` -> the decoder's input, at `positions` `[B or 1, Q]`; `norm` is the
        embedding LayerNorm (BLOOM's `embedding_layer_norm`) or the identity."""
        return norm(hidden_states)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(cos, sin)` `[B or 1, Q, head_dim]` to rotate queries and keys with, or None."""
        return None

    def score_bias(self, key_length: int, device: torch.device) -> ScoreBias | None:
        """The per-head score bias as a function of distance, or None."""
        return None

    def slopes(self, device: torch.device) -> torch.Tensor | None:
        """`[H]` fp32 slopes when the bias is linear in distance (flash-attn's `alibi_slopes`), else None."""
        return None

    def windows(self, device: torch.device) -> torch.Tensor | None:
        """`[H]` long: how far back each head looks (windowed ALiBi), or None for no limit."""
        return None


class AlibiPositionalBias(NoPositionEncoding):
    """ALiBi: head h adds `-m_h * distance` to its attention scores; no parameters."""

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.num_heads, self.max_bias = config.num_attention_heads, config.alibi_max_bias
        self.config = config  # alibi_window_cutoff is read at each forward, so it can be switched on a loaded model
        self.register_buffer("alibi_slopes", get_alibi_slopes(self.num_heads, self.max_bias), persistent=False)

    def slopes(self, device: torch.device) -> torch.Tensor:
        slopes = self.alibi_slopes
        # `model.to(torch.bfloat16)` casts buffers too, and meta-device loading leaves none: the slopes stay fp32.
        if slopes.dtype != torch.float32 or slopes.device.type == "meta":
            slopes = get_alibi_slopes(self.num_heads, self.max_bias)
        return slopes.to(device)

    def score_bias(self, key_length: int, device: torch.device) -> ScoreBias:
        slopes = self.slopes(device)
        return lambda head, distance: -slopes[head] * distance

    def windows(self, device: torch.device) -> torch.Tensor | None:
        cutoff = self.config.alibi_window_cutoff
        if cutoff is None:
            return None
        return alibi_windows(get_alibi_slopes(self.num_heads, self.max_bias), cutoff).to(device)


class T5RelativePositionalBias(NoPositionEncoding):
    """T5's learned bias per head and log-bucketed distance, shared by all layers (Raffel et al.)."""

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.num_buckets, self.max_distance = config.t5_num_buckets, config.t5_max_distance
        self.relative_attention_bias = nn.Embedding(config.t5_num_buckets, config.num_attention_heads)

    def score_bias(self, key_length: int, device: torch.device) -> ScoreBias:
        # One bias per head and distance: O(H * K) memory, not O(Q * K).
        buckets = t5_relative_position_bucket(
            torch.arange(key_length, device=device), self.num_buckets, self.max_distance
        )
        table = self.relative_attention_bias(buckets).float().t()  # [H, K]
        return lambda head, distance: table[head, distance.clamp(0, key_length - 1)]


class SinusoidalPositionalEmbedding(NoPositionEncoding):
    """Fixed sinusoids added to token embeddings scaled by `sqrt(hidden_size)` (Vaswani et al., fairseq)."""

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.hidden_size = config.hidden_size

    def embed(self, hidden_states: torch.Tensor, positions: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        angles = positions.float()[..., None] * inverse_frequencies(self.hidden_size, 10000.0, positions.device)
        sinusoid = torch.cat([angles.sin(), angles.cos()], dim=-1)
        # The scale keeps the sinusoid (entries in [-1, 1]) from swamping the embeddings; it comes before the
        # norm (which undoes it) and the sinusoid after, as the paper's fairseq baseline with BLOOM's norm.
        return norm(hidden_states * math.sqrt(self.hidden_size)) + sinusoid.to(hidden_states.dtype)


class RotaryEmbedding(NoPositionEncoding):
    """Rotary position embedding of queries and keys, base `rope_theta` (Su et al.; Llama's shape)."""

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.head_dim, self.theta = config.head_dim, config.rope_theta

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * inverse_frequencies(self.head_dim, self.theta, positions.device)
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


POSITION_ENCODINGS: dict[str, type[NoPositionEncoding]] = {
    "alibi": AlibiPositionalBias,
    "sinusoidal": SinusoidalPositionalEmbedding,
    "rotary": RotaryEmbedding,
    "t5": T5RelativePositionalBias,
    "none": NoPositionEncoding,
}


class AlibiMLP(nn.Module):
    """The feed-forward block: up projection, activation, down projection."""

    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


# --- 3. Attention functions ----------------------------------------------------------------


def windowed_block_size(window: int) -> int:
    """Queries per block for a head that sees `window` tokens back: a quarter of the window, within [128, 1024]."""
    return min(1024, max(128, window // 4))


# The blocked path computes a score about 1.8x as slowly as sdpa's causal kernel (a float mask on every block; at
# 16k tokens it did 20% of the dense work in 36% of the time, recipes/results/bench_cpu-long.md), so it runs only
# where the windows cut the work at least in half.
WINDOWED_WORK_LIMIT = 0.5


# How far down the ALiBi bias takes a key before the CPU default path drops it. A key at bias -80 has at most
# e^-80 = 1.8e-35 of the weight of the query's own token (plus whatever its score exceeds that token's by): a
# million such keys move an output by less than fp32 can represent. Kept keys stay above e^-80, 7 nats inside fp32's
# normal range (e^-87.3 = 1.2e-38), so the softmax, its backward and their products make no denormals, which x86
# cores without flush-to-zero handle in slow microcode (a 2.2x slower training step on Intel Xeon). And no bias the
# kernel adds exceeds 80 in magnitude, so the fp32 rounding of a bias is at most 80 * 2^-24 = 4.8e-6 at any length.
ALIBI_UNDERFLOW_CUTOFF = 80.0


def key_only_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """`[1, H, 1, L]` fp32: `m_h * (pos_k - c)`, the bias sdpa's fused CPU kernel takes together with `is_causal`.

    Softmax is invariant to a per-row constant, so `m * pos_k` gives the same attention as `-m * (pos_q - pos_k)`.
    Centring on `c = (L - 1) / 2` halves the largest bias. Exact only in fp32, with no dropout and Q == K, and only on
    SDPA's fused CPU kernel (its math kernel refuses a mask together with `is_causal`); precise only while
    `m * L` is small, which `windowed_alibi_attention` ensures by running here only heads whose window holds the
    sequence.
    """
    keys = torch.arange(length, device=slopes.device, dtype=torch.float32) - (length - 1) / 2
    return slopes[None, :, None, None] * keys[None, None, None, :]


def key_only_exact(device: torch.device, dtype: torch.dtype, dropout: float) -> bool:
    """Whether `key_only_bias` with `is_causal` is exact: fp32 on the CPU flash kernel, no dropout."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and dropout == 0.0
        and torch.backends.cuda.flash_sdp_enabled()  # the flag SDPA's fused CPU kernel obeys
    )


def windowed_work_ratio(windows: list[int], length: int) -> float:
    """The scores the blocked path computes over those of dense causal attention, for a sequence of `length`."""
    blocked = sum(min(w, length - 1) + windowed_block_size(min(w, length - 1)) for w in windows)
    return blocked / (len(windows) * (length + 1) / 2)


def windowed_alibi_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: WindowedAlibi, scaling: float, dropout: float
) -> torch.Tensor:
    """Causal windowed-ALiBi attention `[B, H, L, D]` in blocks, each seeing only the keys its window reaches.

    For head h with window w and block size n, query block i (positions `[i n, (i + 1) n)`) attends to key
    positions `[i n - w, (i + 1) n)`: w + n scores per query instead of the causal triangle's L / 2. The
    bias-and-window pattern `[n, w + n]` is the same for every block, so it is built once per head. Blocks
    whose span starts at or after position 0 go through one sdpa call (blocks as its head dimension, keys cut
    out with `unfold`); the first `ceil(w / n)` blocks, whose span would start before 0, take one call each
    with the pattern's last columns. Nothing is L x L: memory is O(L (w + n) / n) per head.
    """
    batch, heads, length, dim = query.shape
    out = torch.empty_like(query)
    blocked = range(heads)
    if key_only_exact(query.device, query.dtype, dropout):
        # Heads that see the whole sequence: one fused causal call with the key-only bias, as fast as no bias; only
        # while its bias stays small (m * L <= ALIBI_UNDERFLOW_CUTOFF), since its fp32 rounding grows with m * L.
        whole = [
            h for h in range(heads)
            if mask.windows[h] >= length - 1 and mask.slopes[h] * (length - 1) <= ALIBI_UNDERFLOW_CUTOFF
        ]  # fmt: skip
        blocked = [h for h in range(heads) if h not in whole]
        if whole:
            bias_key = ("key-only", tuple(whole), length, query.device)  # built by the first layer, as the patterns
            if bias_key not in mask.patterns:
                slopes = torch.tensor([mask.slopes[h] for h in whole], device=query.device)
                mask.patterns[bias_key] = key_only_bias(slopes, length)
            if not blocked:  # every head (short sequences, e.g. training at L): one call on the tensors as they are
                return F.scaled_dot_product_attention(
                    query, key, value, attn_mask=mask.patterns[bias_key], scale=scaling, is_causal=True
                )
            out[:, whole] = F.scaled_dot_product_attention(
                query[:, whole], key[:, whole], value[:, whole],
                attn_mask=mask.patterns[bias_key], scale=scaling, is_causal=True,
            )  # fmt: skip
    for h in blocked:
        window = min(mask.windows[h], length - 1)
        block = windowed_block_size(window)
        span = window + block  # the keys one block of queries can reach
        pattern_key = (h, window, query.dtype, query.device)
        if pattern_key not in mask.patterns:
            # pattern[i, j]: query i of a block on key j of its span, at distance d = i + window - j; visible iff
            # 0 <= d <= window. (fp32 holds these integer distances exactly; the pattern is the one tensor
            # quadratic in the window.)
            arange = functools.partial(torch.arange, device=query.device, dtype=torch.float32)
            d = arange(block)[:, None] + window - arange(span)
            bias = torch.where((d >= 0) & (d <= window), -mask.slopes[h] * d, float("-inf"))
            mask.patterns[pattern_key] = bias.to(query.dtype)
        pattern = mask.patterns[pattern_key]
        q, k, v = query[:, h], key[:, h], value[:, h]  # [B, L, D]
        lead = min(-(-window // block), -(-length // block))  # blocks whose span starts before position 0
        for i in range(lead):
            start, stop = i * block, min(length, (i + 1) * block)
            out[:, h, start:stop] = F.scaled_dot_product_attention(
                q[:, start:stop], k[:, :stop], v[:, :stop],
                attn_mask=pattern[: stop - start, window - start : window - start + stop],
                dropout_p=dropout, scale=scaling,
            )  # fmt: skip
        first = lead * block
        if first >= length:
            continue
        blocks = -(-(length - first) // block)
        tail = blocks * block - (length - first)  # zero rows that fill the last block (hidden by causality)
        # Keys and values from `first - window` on, cut into overlapping spans: [B, blocks, span, D].
        k = F.pad(k[:, first - window :], (0, 0, 0, tail)).unfold(1, span, block).transpose(-1, -2)
        v = F.pad(v[:, first - window :], (0, 0, 0, tail)).unfold(1, span, block).transpose(-1, -2)
        q = F.pad(q[:, first:], (0, 0, 0, tail)).view(batch, blocks, block, dim)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=pattern, dropout_p=dropout, scale=scaling)
        out[:, h, first:] = attended.reshape(batch, blocks * block, dim)[:, : length - first]
    return out


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | WindowedAlibi | FlexAlibiMask | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`F.scaled_dot_product_attention` with the 4-D mask or `is_causal` alone; windowed ALiBi (and the CPU default)
    in blocks; a flex mask (the fused default, `AlibiModel.fused_by_default`) goes to flex_attention."""
    if isinstance(attention_mask, FlexAlibiMask):
        return flex_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    if isinstance(attention_mask, WindowedAlibi):
        attn_output = windowed_alibi_attention(query, key, value, attention_mask, scaling, dropout)
        return attn_output.transpose(1, 2).contiguous(), None
    # None only when every query sees every key before it: Q == K (causal) or one query (decoding).
    mask, is_causal = attention_mask, attention_mask is None and query.shape[2] > 1
    attn_output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=is_causal
    )
    return attn_output.transpose(1, 2).contiguous(), None


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def flex_compiles(device: torch.device) -> bool:
    """Whether torch.compile can build flex_attention on `device`: inductor's CPU backend, or Triton on a GPU."""
    return device.type == "cpu" or _has_triton()


UNCOMPILED_FLEX = (
    "{what} ran uncompiled: torch.compile did not compile alibi-lm's call (dynamo disabled, e.g. by "
    "TORCHDYNAMO_DISABLE or torch.compiler.disable, or a compile that failed), and torch's unfused implementation "
    "materializes every score, L x L. flex_attention needs torch.compile; use attn_implementation='sdpa' where it "
    "is unavailable."
)


def flex_attention_call(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    score_mod: Callable | None,
    block_mask: BlockMask,
    scale: float,
) -> torch.Tensor:
    """flex_attention, run only compiled (`compiled`): where dynamo gives up, it refuses instead of going L x L."""
    from torch.nn.attention.flex_attention import flex_attention

    if not torch.compiler.is_compiling():
        raise RuntimeError(UNCOMPILED_FLEX.format(what="flex_attention"))
    return flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale)


def block_mask_call(
    mask_mod: Callable, batch: int | None, heads: int | None, query_length: int, key_length: int, device: torch.device
) -> BlockMask:
    """create_block_mask, run only compiled (`compiled`): uncompiled it evaluates `mask_mod` on all Q x K pairs."""
    if not torch.compiler.is_compiling():
        raise RuntimeError(UNCOMPILED_FLEX.format(what="create_block_mask"))
    return create_block_mask(mask_mod, batch, heads, query_length, key_length, device=device)


@functools.cache
def compiled(function: Callable, signature: tuple) -> Callable:
    """`torch.compile(function)` for one call signature (device, dtypes, shapes), with a cache of its own.

    dynamo keeps compiled graphs per code object and gives up on one after 8 (`recompile_limit`), then runs it
    uncompiled for the rest of the process, for every caller: torch's own `flex_attention` is shared with every
    other flex user, and 8 length buckets, a second dtype or a windowed model used to exhaust it, after which flex
    silently materialized L x L scores (26 GiB at 16k tokens on a GPU). Each signature gets a copy of the code
    object, so each is one graph against a budget of 8 that nothing else spends; shapes are bucketed
    (`flex_bucket`), so signatures stay few. Static shapes: dynamic ones hit an inductor C++ codegen error on the
    CPU (torch 2.13: `cur_qSplitSize1 was not declared`, GQA with padding).
    """
    code = function.__code__.replace(co_name=f"{function.__name__}_{len(signature)}_{abs(hash(signature))}")
    return torch.compile(types.FunctionType(code, function.__globals__, code.co_name), dynamic=False)


def flex_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: FlexAlibiMask | torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """flex_attention with the bias `score_mod` and a `BlockMask`; single-token decoding uses sdpa."""
    if not isinstance(attention_mask, FlexAlibiMask):
        # Decoding steps get a [B, H, 1, K] tensor mask: tiny, and no recompile per cache length.
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    if dropout > 0.0:
        raise ValueError(
            "flex_attention does not support attention dropout; set attention_dropout=0.0 to train with it."
        )
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    length = attention_mask.length
    if length is not None:  # the mask is for a bucketed length: pad to it, then cut the output back
        pad = (0, 0, 0, attention_mask.block_mask.shape[-2] - length)
        query, key, value = F.pad(query, pad), F.pad(key, pad), F.pad(value, pad)
    score_mod, block_mask = attention_mask.score_mod, attention_mask.block_mask
    signature = (
        query.device.type, query.dtype, tuple(query.shape), tuple(key.shape), block_mask.shape,
        block_mask.kv_num_blocks.shape, score_mod is None, torch.is_grad_enabled() and query.requires_grad,
    )  # fmt: skip
    flex = compiled(flex_attention_call, signature)
    attn_output = flex(query, key, value, score_mod, block_mask, scaling)
    if length is not None:
        attn_output = attn_output[:, :, :length]
    return attn_output.transpose(1, 2).contiguous(), None


def flash_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: FlashAlibiMask,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """flash-attn 2 with `alibi_slopes` (fp32); padding and packed documents go through the varlen kernel."""
    # Imported by name: a literal `import flash_attn` would make transformers' remote-code loader
    # require the package even for users who never pick this backend.
    flash_attn = importlib.import_module("flash_attn")
    # flash-attn wants [B, L, H, D] and does GQA itself.
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    mask = attention_mask
    if mask.query_valid is None:
        out = flash_attn.flash_attn_func(
            q, k, v, dropout_p=dropout, softmax_scale=scaling, causal=True, alibi_slopes=mask.slopes,
            window_size=(mask.window, 0),
        )  # fmt: skip
        return out, None
    # Bottom-right causal alignment inside each sequence: a document's queries are its last tokens.
    out_unpadded = flash_attn.flash_attn_varlen_func(
        q[mask.query_valid], k[mask.key_valid], v[mask.key_valid],
        mask.cu_seqlens_q, mask.cu_seqlens_k, mask.max_seqlen_q, mask.max_seqlen_k,
        dropout_p=dropout, softmax_scale=scaling, causal=True, alibi_slopes=mask.slopes,
        window_size=(mask.window, 0),
    )  # fmt: skip
    out = q.new_zeros(*q.shape[:2], *out_unpadded.shape[1:])
    out[mask.query_valid] = out_unpadded
    return out, None


# Our versions of the backends whose ALiBi form differs from transformers' generic ones; any other
# name (a kernel registered with `AttentionInterface.register`) comes from transformers' registry.
ALIBI_ATTENTION_FUNCTIONS: dict[str, Callable] = {
    "eager": eager_attention_forward,
    "sdpa": sdpa_attention_forward,
    "flex_attention": flex_attention_forward,
    "flash_attention_2": flash_attention_forward,
}


# --- 4. Attention module -------------------------------------------------------------------


class AlibiAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention; position information arrives in the mask."""

    def __init__(self, config: AlibiConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: AlibiMask = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        # [B, Q, H*D] -> [B, H, Q, D]
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if position_embeddings is not None:
            query_states, key_states = apply_rotary_pos_emb(query_states, key_states, *position_embeddings)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        implementation = self.config._attn_implementation
        attention_interface = ALIBI_ATTENTION_FUNCTIONS.get(implementation) or ALL_ATTENTION_FUNCTIONS.get_interface(
            implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [B, Q, H*D]
        return self.o_proj(attn_output), attn_weights


# --- 5. Decoder layer ----------------------------------------------------------------------


class AlibiDecoderLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block: attention and MLP, each with a residual connection."""

    def __init__(self, config: AlibiConfig, layer_idx: int):
        super().__init__()
        eps, ln_bias = config.layer_norm_eps, config.layer_norm_bias
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps, bias=ln_bias)
        self.self_attn = AlibiAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=eps, bias=ln_bias)
        self.mlp = AlibiMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: AlibiMask = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))


# --- 6. Models -----------------------------------------------------------------------------


class AlibiPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the capabilities transformers reads from class attributes."""

    config_class = AlibiConfig
    config: AlibiConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AlibiDecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # Static-cache decoding compiles with fullgraph=True: no data-dependent branch runs while compiling.
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": AlibiDecoderLayer, "attentions": AlibiAttention}

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """transformers' choice (sdpa when none is requested), remembering whether it was only the default.

        With no `attn_implementation` given, sdpa would build a `[B, H, L, L]` ALiBi mask for every prefill and
        training step; on the devices in `AlibiModel.fused_default_devices` the model then runs flex_attention
        instead (see `AlibiModel.build_attention_mask`). A requested implementation is always obeyed.
        """
        implementation = super().get_correct_attn_implementation(requested_attention, is_init_check)
        if requested_attention is None:
            self.config._alibi_default_attention = implementation == "sdpa"
        elif not is_init_check:  # set_attn_implementation(...): the user's choice
            self.config._alibi_default_attention = False
        # At init with a value: either the user's (the config setter cleared the flag) or the one the outer model
        # resolved a moment ago for this inner one (the flag stands).
        return implementation

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs) -> None:
        """transformers' method; the named implementation is then always obeyed, even sdpa when sdpa was the default."""
        super().set_attn_implementation(attn_implementation, **kwargs)
        self.config._alibi_default_attention = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AlibiPositionalBias):
            init.copy_(module.alibi_slopes, get_alibi_slopes(module.num_heads, module.max_bias))


class AlibiModel(AlibiPreTrainedModel):
    """The bare ALiBi decoder: embeddings, blocks and final norm; builds the shared mask once per forward."""

    # save_pretrained copies this file and configuration_alibi.py beside the weights (Hub remote code).
    _auto_class = "AutoModel"
    # Devices where, with no attn_implementation given, multi-token forwards run flex_attention instead of sdpa
    # with an L x L mask. The CPU keeps sdpa: its key-only fast path needs no mask, and flex compiles slowly there.
    fused_default_devices: tuple[str, ...] = ("cuda",)

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_layer_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.layer_norm_bias)
            if config.embedding_layer_norm
            else nn.Identity()
        )
        self.position_encoding = POSITION_ENCODINGS[config.position_encoding](config)
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(AlibiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.layer_norm_bias)
        self.gradient_checkpointing = False
        self._block_mask_cache: dict[tuple, BlockMask] = {}
        self.post_init()

    def validate_inputs(
        self,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor | None,
        document_ids: torch.Tensor | None,
        cache: Cache | None,
    ) -> None:
        """Raise a `ValueError` that names the bad argument (skipped while compiling: it reads values)."""
        name = "input_ids" if inputs.dtype in (torch.int32, torch.int64) else "inputs_embeds"
        rank = 2 if name == "input_ids" else 3
        if inputs.dim() != rank:
            layout = "[batch, length]" if rank == 2 else "[batch, length, hidden]"
            raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(inputs.shape)}.")
        batch, length = inputs.shape[:2]
        if batch == 0 or length == 0:
            raise ValueError(f"{name} is empty (shape {tuple(inputs.shape)}): pass at least one token per row.")
        if name == "input_ids" and (int(inputs.min()) < 0 or int(inputs.max()) >= self.config.vocab_size):
            raise ValueError(
                f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), got values in "
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

    def build_attention_mask(self, layout: AttentionLayout, dtype: torch.dtype) -> AlibiMask:
        """The one mask every layer shares, in the form the attention backend wants."""
        implementation = self.config._attn_implementation
        device = layout.device
        bias = self.position_encoding.score_bias(layout.key_length, device)
        slopes = self.position_encoding.slopes(device)
        windows = self.position_encoding.windows(device)
        first, count = self.local_heads()
        if count != self.config.num_attention_heads:  # tensor parallel: this rank's heads, with their own slopes
            heads = slice(first, first + count)
            slopes = slopes[heads] if slopes is not None else None
            windows = windows[heads] if windows is not None else None
            if bias is not None:
                every_head = bias
                bias = lambda head, distance: every_head(head + first, distance)  # noqa: E731
        if implementation == "flash_attention_2":
            if (bias is not None and slopes is None) or layout.custom_visible is not None:
                what = "a 4-D attention_mask" if layout.custom_visible is not None else self.config.position_encoding
                raise ValueError(f"flash_attention_2 cannot take {what}; use sdpa, eager or flex_attention.")
            # flash-attn has one window for all heads: the widest, so no head loses a key it would see.
            window = int(windows.max()) if windows is not None else -1
            return (
                FlashAlibiMask(slopes, window) if layout.is_plain else flash_varlen_boundaries(layout, slopes, window)
            )
        # A prepared 4-D mask is dense already: flex would save nothing, so it takes the sdpa path with it.
        if implementation == "flex_attention" and layout.query_length > 1 and layout.custom_visible is None:
            return self.flex_mask(layout, bias, windows)
        if self.fused_by_default(layout, bias):
            return self.flex_mask(layout, bias, windows)  # sdpa_attention_forward hands it to flex_attention
        # Both sdpa-style kernels (flex decodes through sdpa) know `is_causal`; eager needs a tensor.
        if implementation in ("sdpa", "flex_attention") and layout.is_plain and not torch.compiler.is_compiling():
            every_key = layout.query_length == layout.key_length or (
                layout.query_length == 1 and layout.past_length + 1 == layout.key_length
            )
            if bias is None and every_key:
                return None  # plain causal attention: sdpa's is_causal, or nothing to mask at all
            if implementation == "sdpa" and slopes is not None and layout.query_length == layout.key_length:
                # Windowed ALiBi in blocks where that saves work; where the windows hold most of the sequence, dense
                # ALiBi is faster (and the windowed model approximates it to its cutoff's tolerance anyway).
                saves_work = windows is not None and (
                    windowed_work_ratio(windows.tolist(), layout.key_length) <= WINDOWED_WORK_LIMIT
                )
                if self.on_cpu_fast_path(device, dtype):
                    # The CPU default: heads that see the whole sequence run fused with the key-only bias; steeper
                    # heads stop where their bias has silenced a key (no denormals, no large biases).
                    reach = alibi_windows(slopes.cpu(), ALIBI_UNDERFLOW_CUTOFF)
                    if saves_work:
                        reach = torch.minimum(reach, windows.cpu())
                    return WindowedAlibi(slopes.tolist(), reach.tolist())
                if saves_work:
                    return WindowedAlibi(slopes.tolist(), windows.tolist())
        return build_dense_mask(layout, bias, count, dtype, windows)

    def local_heads(self) -> tuple[int, int]:
        """`(first, count)`: the attention heads this process computes.

        All of them, except under tensor parallelism (`from_pretrained(..., tp_plan="auto")`): the plan splits
        q_proj's rows, so each rank holds `count` consecutive heads from `first = rank * count`, and the slopes,
        windows and biases in the mask must be those heads', not the first `count`. FSDP shards the same rows,
        but gathers them whole before each layer runs: its shards are no split of the heads.
        """
        heads = self.config.num_attention_heads
        layer = self.layers[0].self_attn
        mesh = getattr(layer.q_proj.weight, "device_mesh", None)  # a DTensor: TP, FSDP or both
        if mesh is None:
            return 0, heads
        from torch.distributed.fsdp import FSDPModule  # only here: a DTensor means torch.distributed is there

        fsdp = any(isinstance(module, FSDPModule) for module in (self, self.layers[0], layer))
        if fsdp and mesh.ndim == 1:
            return 0, heads
        names = mesh.mesh_dim_names or ()
        dim = names.index("tp") if "tp" in names else 0 if mesh.ndim == 1 else None
        size = mesh.size(dim) if dim is not None else 0
        if size == 0 or heads % size:
            raise ValueError(
                f"Cannot tell which of {heads} heads this rank holds on a {mesh.ndim}-D device mesh named {names}: "
                "tensor parallelism needs a 1-D mesh or a dimension named 'tp', and num_attention_heads divisible "
                "by its size."
            )
        count = heads // size
        return mesh.get_local_rank(dim) * count, count

    def on_cpu_fast_path(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether sdpa's fused CPU kernel takes the key-only bias here (`key_only_bias`): fp32, no dropout."""
        return key_only_exact(device, dtype, self.config.attention_dropout if self.training else 0.0)

    def fused_by_default(self, layout: AttentionLayout, bias: ScoreBias | None) -> bool:
        """Whether this forward runs flex_attention although the backend is sdpa.

        Only where sdpa is transformers' default rather than the user's choice, on a device of
        `fused_default_devices` where flex compiles, for a bias sdpa would need an L x L mask for (every
        multi-token forward: prefill, training, scoring); never with a prepared 4-D mask or attention dropout
        (flex has none). One-token decoding steps keep sdpa with the small `[B, H, 1, K]` mask.
        """
        return (
            self.config._attn_implementation == "sdpa"
            and getattr(self.config, "_alibi_default_attention", False)
            and layout.device.type in self.fused_default_devices
            and layout.query_length > 1
            and layout.custom_visible is None
            and bias is not None
            and not (self.training and self.config.attention_dropout > 0)
            and flex_compiles(layout.device)
        )

    def flex_mask(
        self, layout: AttentionLayout, bias: ScoreBias | None, windows: torch.Tensor | None = None
    ) -> FlexAlibiMask:
        """A `BlockMask` from `layout.visible` (cached per shape when plain) and a `score_mod` adding the bias.

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
        cache_key = (
            *shape,
            int(layout.past_length),
            layout.device,
            self.config.alibi_window_cutoff,
            self.local_heads(),
        )
        block_mask = self._block_mask_cache.get(cache_key) if layout.is_plain else None
        if block_mask is None:

            def mask_mod(b, h, q_idx, kv_idx):  # create_block_mask takes functions, not bound methods
                return layout.visible_within(windows, b, h, q_idx, kv_idx)

            batch = None if layout.is_plain else layout.batch_size
            heads = None if windows is None else len(windows)
            if compile_mask:
                signature = (
                    layout.device.type,
                    batch,
                    heads,
                    *shape,
                    layout.key_valid is None,
                    layout.document_ids is None,
                )
                block_mask = compiled(block_mask_call, signature)(mask_mod, batch, heads, *shape, layout.device)
            else:
                block_mask = create_block_mask(mask_mod, batch, heads, *shape, device=layout.device)
            if layout.is_plain:
                if len(self._block_mask_cache) > 16:
                    self._block_mask_cache.clear()
                self._block_mask_cache[cache_key] = block_mask

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias(h, layout.distance(b, q_idx, kv_idx))

        return FlexAlibiMask(block_mask, score_mod if bias is not None else None, length)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """Run the decoder.

        Args:
            input_ids: `[B, Q]` token ids.
            attention_mask: `[B, past + Q]` (or `[B, Q]`), 1 for tokens and 0 for (left) padding.
                Positions, and so the ALiBi bias, come from its cumulative sum. A prepared 4-D mask
                `[B, 1, Q, past + Q]` (0 or True where visible) takes its positions from `position_ids`.
            position_ids: `[B or 1, Q]`. Only their restarts are read: with no attention_mask and an
                empty cache, a position that does not follow its neighbour starts a new packed document
                (transformers' padding-free format). The bias itself needs no positions.
            cache: a transformers `Cache`; created (dynamic) when `use_cache` and none is given.
            inputs_embeds: `[B, Q, hidden]` instead of `input_ids`.
            use_cache: return the cache (default: `config.use_cache`, outside training).
            document_ids: `[B, past + Q]` ids of packed documents; attention stays inside each
                document. ALiBi is translation-invariant, so positions need no reset.
            kwargs: `cu_seq_lens_k` (flash-attn varlen boundaries) mark packed documents like
                `position_ids` do; the rest reach the attention function.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        inputs = input_ids if input_ids is not None else inputs_embeds
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        empty_cache = cache is None  # no cached tokens: known without reading a value, also while compiling
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        compiling = torch.compiler.is_compiling()
        if not compiling:  # the checks read values, which would break a compiled graph
            self.validate_inputs(inputs, attention_mask, document_ids, cache)
        batch_size, query_length = inputs.shape[:2]
        past_length = cache.get_seq_length() if cache is not None else 0
        key_length = cache.get_mask_sizes(query_length, 0)[0] if cache is not None else query_length
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        device = inputs_embeds.device
        if attention_mask is not None and attention_mask.dim() == 4:
            layout = custom_mask_layout(attention_mask, position_ids, query_length, key_length, past_length, device)
        else:
            # transformers' padding-free packing (DataCollatorWithFlattening, TRL packing=True). Compiled, the
            # documents are found inside the graph, as transformers' `find_packed_sequence_indices` does: no check
            # that reads values, so a compiled packed row gets every document's ids (one document: all zeros).
            fresh = empty_cache if compiling else past_length == 0
            if fresh and attention_mask is None and document_ids is None:
                cu_seq_lens = kwargs.get("cu_seq_lens_k")
                document_ids = packed_document_ids(position_ids, cu_seq_lens, batch_size, query_length)
            if not compiling and past_length > 0 and attention_mask is not None:
                missing = max(0, past_length + query_length - attention_mask.shape[1])
                attention_mask = F.pad(attention_mask, (missing, 0), value=1)  # a mask of the new tokens only
            layout = build_layout(
                attention_mask, document_ids, batch_size, query_length, key_length, past_length, device
            )
        mask = self.build_attention_mask(layout, inputs_embeds.dtype)

        positions = layout.query_positions
        hidden_states = self.position_encoding.embed(inputs_embeds, positions, self.embed_layer_norm)
        position_embeddings = self.position_encoding.rotary(positions, hidden_states.dtype)
        hidden_states = self.embed_dropout(hidden_states)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, attention_mask=mask, position_embeddings=position_embeddings, cache=cache, **kwargs
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class AlibiForCausalLM(AlibiPreTrainedModel, GenerationMixin):
    """The ALiBi decoder with a language-modelling head."""

    _auto_class = "AutoModelForCausalLM"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.model = AlibiModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """Logits `[B, Q, vocab]` (only the last `logits_to_keep` when > 0) and, with `labels`, the shifted LM loss."""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            document_ids=document_ids,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def create_masks_for_generate(
        self,
        config: AlibiConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor | None:
        """Keep the 2-D padding mask for static caches, padded to the cache size.

        transformers would turn it into a 4-D causal mask without the bias; the model builds the
        ALiBi mask itself, and a fixed-size 2-D mask keeps compiled decoding free of recompiles.
        """
        if cache is None:
            return attention_mask
        batch_size, query_length = inputs_embeds.shape[:2]
        if attention_mask is None:
            shape = (batch_size, int(cache.get_seq_length()) + query_length)
            attention_mask = torch.ones(shape, dtype=torch.long, device=inputs_embeds.device)
        return F.pad(attention_mask, (0, cache.get_mask_sizes(query_length, 0)[0] - attention_mask.shape[1]), value=0)


__all__ = ["AlibiForCausalLM", "AlibiModel", "AlibiPreTrainedModel", "get_alibi_slopes"]
