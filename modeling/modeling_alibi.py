# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""ALiBi causal language model for Hugging Face Transformers.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

Each head h adds `-m_h * (i - j)` to the score of query position i on key position j. The bias
lives in the attention mask: `AlibiModel` builds one mask per forward pass (from the padding mask,
the cache offset, the slopes and optional document ids) and every layer shares it. What that mask
is depends on the attention backend:

- eager / sdpa: a 4-D float tensor `[B, H, Q, K]`, computed in fp32 from the relative distance.
  On the CPU, in fp32 with no padding, sdpa gets the key-only form `m_h * pos_k` plus
  `is_causal=True` instead, which runs at the speed of plain causal attention.
- flex_attention: a `score_mod` with the slopes plus a `BlockMask`; no L x L tensor exists.
- flash_attention_2: the slopes, passed as `alibi_slopes` to the flash-attn kernel.

The module layout follows transformers' `models/llama/modeling_llama.py` (v5.24). This file
travels with checkpoints as Hub remote code, so it imports only torch, transformers and
`configuration_alibi`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import logging

from .configuration_alibi import AlibiConfig

logger = logging.get_logger(__name__)

# --------------------------------------------------------------------------------------------
# 1. Small helpers: slopes, positions, masks
# --------------------------------------------------------------------------------------------


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


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embeddings (Vaswani et al. 2017) for `positions` `[B, Q]` -> `[B, Q, dim]`, fp32."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float()[..., None] * inv_freq  # [B, Q, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (Su et al. 2021) on `x` `[B, H, Q, D]` with `cos`/`sin` `[B, Q, D]`."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


@dataclass
class AttentionPositions:
    """Where each query and key sits, derived once per forward from the padding mask and the cache.

    Attributes:
        query_positions: `[B, Q]` long, the position of each query token (left padding skipped).
        key_positions: `[B, K]` long, the position of each key slot.
        key_valid: `[B, K]` bool or None, False for padding slots (None: no padding).
        past_length: number of tokens already in the cache (an int, or a 0-d tensor for static caches).
        document_ids: `[B, K]` long or None, the document of each key slot for packed sequences.
    """

    query_positions: torch.Tensor
    key_positions: torch.Tensor
    key_valid: torch.Tensor | None
    past_length: int | torch.Tensor
    document_ids: torch.Tensor | None = None

    @property
    def query_document_ids(self) -> torch.Tensor | None:
        if self.document_ids is None:
            return None
        q_len = self.query_positions.shape[1]
        return self.document_ids[:, self.document_ids.shape[1] - q_len :]


def build_positions(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    query_length: int,
    key_length: int,
    past_length: int | torch.Tensor,
    device: torch.device,
    document_ids: torch.Tensor | None = None,
) -> AttentionPositions:
    """Positions of queries and keys from a 2-D padding mask `[B, past + Q]` (1 = token, 0 = padding).

    Positions count real tokens only (cumulative sum), so a left-padded row gets the same positions,
    and therefore the same ALiBi bias, as the row without its padding. `key_length` may exceed
    `past + Q` for a static cache; the extra slots are empty and masked by causality.
    """
    slots = torch.arange(key_length, device=device)
    query_slots = torch.arange(query_length, device=device) + past_length
    no_padding = attention_mask is None or (not torch.compiler.is_compiling() and bool(attention_mask.all()))
    if no_padding:
        key_positions = slots[None].expand(batch_size, -1)
        query_positions = query_slots[None].expand(batch_size, -1)
        key_valid = None
    else:
        mask = attention_mask.to(device=device, dtype=torch.long)
        if mask.shape[1] < key_length:  # static cache: slots past the mask are empty
            mask = F.pad(mask, (0, key_length - mask.shape[1]), value=0)
        mask = mask[:, :key_length]
        key_positions = (mask.cumsum(-1) - 1).clamp(min=0)
        query_positions = key_positions.gather(1, query_slots[None].expand(batch_size, -1))
        key_valid = mask.bool()
    if document_ids is not None and document_ids.shape[1] < key_length:
        document_ids = F.pad(document_ids, (0, key_length - document_ids.shape[1]), value=-1)
    return AttentionPositions(query_positions, key_positions, key_valid, past_length, document_ids)


def build_allowed(positions: AttentionPositions, query_length: int, key_length: int) -> torch.Tensor:
    """Boolean `[B, 1, Q, K]`: causal in slot order, no padding keys, same document.

    Every query may always see its own slot, so a padding row is never fully masked and its
    softmax stays finite (its output is ignored anyway).
    """
    device = positions.key_positions.device
    query_slots = torch.arange(query_length, device=device) + positions.past_length
    key_slots = torch.arange(key_length, device=device)
    allowed = key_slots[None, :] <= query_slots[:, None]  # [Q, K]
    allowed = allowed[None, None]  # [1, 1, Q, K]
    if positions.key_valid is not None:
        allowed = allowed & positions.key_valid[:, None, None, :]
    if positions.document_ids is not None:
        doc_k = positions.document_ids[:, :key_length]
        doc_q = doc_k.gather(1, query_slots[None].expand(doc_k.shape[0], -1).clamp(max=key_length - 1))
        allowed = allowed & (doc_q[:, None, :, None] == doc_k[:, None, None, :])
    diagonal = key_slots[None, :] == query_slots[:, None]
    return allowed | diagonal[None, None]


def build_alibi_mask(
    slopes: torch.Tensor | None,
    positions: AttentionPositions,
    query_length: int,
    key_length: int,
    dtype: torch.dtype,
    relative_bias: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The additive attention mask `[B, H, Q, K]` (or `[B, 1, Q, K]` with no bias) in `dtype`.

    Allowed pairs hold `-m_h * (pos_q - pos_k)`; masked pairs hold the dtype's minimum. The bias is
    computed in fp32 from the relative distance and only then cast: adding `m * pos_k` in bf16
    loses whole units at long lengths.

    Args:
        slopes: `[H]` fp32 ALiBi slopes, or None for no linear bias.
        positions: from `build_positions`.
        query_length, key_length: Q and K.
        dtype: the attention compute dtype.
        relative_bias: optional callable mapping the distance `[B, Q, K]` to a bias `[B, H, Q, K]`
            (the T5 baseline's learned buckets).
    """
    allowed = build_allowed(positions, query_length, key_length)
    distance = positions.query_positions[:, :, None] - positions.key_positions[:, None, :]  # [B, Q, K]
    bias = torch.zeros((), device=distance.device, dtype=torch.float32)
    if slopes is not None:
        bias = -slopes.to(distance.device, torch.float32)[None, :, None, None] * distance[:, None].float()
    if relative_bias is not None:
        bias = bias + relative_bias(distance)
    return (
        torch.where(allowed, bias, torch.finfo(torch.float32).min)
        .to(dtype)
        .masked_fill(~allowed, torch.finfo(dtype).min)
    )


_flush_denormal_enabled = False


def _flush_denormals_for_cpu_training() -> None:
    """Turn on flush-to-zero for denormal floats, once, when ALiBi trains on the CPU.

    Far-away keys get attention probabilities of 1e-38 and below. The CPU SDPA backward
    recomputes them as denormals, which x86 handles ~100x slower: a training step at L=2048
    took 1.7x as long as without a bias. Flushing them to zero changes no result that matters
    (they are below fp32's normal range) and brings the step back to the no-bias speed.
    """
    global _flush_denormal_enabled
    if not _flush_denormal_enabled:
        _flush_denormal_enabled = True
        if torch.set_flush_denormal(True):
            logger.info("alibi-lm: enabled torch.set_flush_denormal(True) for CPU training speed.")


@dataclass
class KeyOnlyAlibiBias:
    """The CPU fast path's mask: `m_h * (pos_k - c)` as `[1, H, 1, K]`, used with `is_causal=True`.

    Softmax is invariant to a per-row constant, so `m * pos_k` gives the same attention as
    `-m * (pos_q - pos_k)`. Centring on `c = (K - 1) / 2` halves the fp32 rounding of large
    biases. Exact only in fp32, with no padding, no documents, no dropout and Q == K.
    """

    bias: torch.Tensor


@dataclass
class FlexAlibiMask:
    """The flex_attention mask: a `BlockMask` plus what the `score_mod` needs (no L x L tensor)."""

    block_mask: object
    score_mod: Callable


@dataclass
class FlashAlibiMask:
    """The flash_attention_2 mask: fp32 slopes and the 2-D padding mask (or None)."""

    slopes: torch.Tensor
    padding_mask: torch.Tensor | None


# --------------------------------------------------------------------------------------------
# 2. Norm and MLP
# --------------------------------------------------------------------------------------------


class AlibiMLP(nn.Module):
    """The feed-forward block: up projection, activation, down projection."""

    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


# --------------------------------------------------------------------------------------------
# 3. Attention functions
# --------------------------------------------------------------------------------------------


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """`[B, H_kv, L, D]` -> `[B, H_kv * n_rep, L, D]` (grouped-query attention)."""
    batch, num_key_value_heads, length, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, length, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, length, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QK^T * scaling + mask) V, the reference every other backend is tested against."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | KeyOnlyAlibiBias | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`F.scaled_dot_product_attention` with the 4-D ALiBi mask, or the key-only bias plus `is_causal`."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    if isinstance(attention_mask, KeyOnlyAlibiBias):
        attn_output = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask.bias, dropout_p=dropout, scale=scaling, is_causal=True
        )
    elif attention_mask is None:
        # No bias and no padding (position_encoding "none", "rotary" or "sinusoidal" with Q == K).
        attn_output = F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scaling, is_causal=query.shape[2] > 1
        )
    else:
        # Always a 4-D mask: a 3-D one sends SDPA to the slow math kernel.
        attn_output = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
        )
    return attn_output.transpose(1, 2).contiguous(), None


_compiled_flex_attention: Callable | None = None


def _flex_attention() -> Callable:
    """One compiled flex_attention for the process: a new compile per call site would recompile per shape."""
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention

        # Static shapes: each new (Q, K) compiles once. Automatic dynamic shapes hit an inductor C++
        # codegen error on the CPU (torch 2.13), and training and evaluation use few fixed shapes.
        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention


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
    """flex_attention with the ALiBi `score_mod` and a `BlockMask`; single-token decoding uses sdpa."""
    if not isinstance(attention_mask, FlexAlibiMask):
        # Decoding steps get a [B, H, 1, K] tensor mask: tiny, and no recompile per cache length.
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    if dropout > 0.0:
        raise ValueError(
            "flex_attention does not support attention dropout; set attention_dropout=0.0 to train with it."
        )
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_output = _flex_attention()(
        query, key, value, score_mod=attention_mask.score_mod, block_mask=attention_mask.block_mask, scale=scaling
    )
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
    """flash-attn 2 with `alibi_slopes` (fp32); padded batches go through the varlen kernel."""
    # Imported by name: a literal `import flash_attn` would make transformers' remote-code loader
    # require the package even for users who never pick this backend.
    flash_attn = importlib.import_module("flash_attn")
    flash_attn_func, flash_attn_varlen_func = flash_attn.flash_attn_func, flash_attn.flash_attn_varlen_func

    # flash-attn wants [B, L, H, D] and does GQA itself.
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    slopes = attention_mask.slopes.to(q.device, torch.float32)
    padding = attention_mask.padding_mask
    if padding is None or bool(padding.all()):
        out = flash_attn_func(q, k, v, dropout_p=dropout, softmax_scale=scaling, causal=True, alibi_slopes=slopes)
        return out, None
    batch, q_len = q.shape[:2]
    k_len = k.shape[1]
    padding = padding[:, -k_len:].bool()
    q_valid = padding[:, -q_len:]
    seqlens_k = padding.sum(-1, dtype=torch.int32)
    seqlens_q = q_valid.sum(-1, dtype=torch.int32)
    cu_k = F.pad(seqlens_k.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = F.pad(seqlens_q.cumsum(0, dtype=torch.int32), (1, 0))
    out_unpadded = flash_attn_varlen_func(
        q[q_valid], k[padding], v[padding], cu_q, cu_k, int(seqlens_q.max()), int(seqlens_k.max()),
        dropout_p=dropout, softmax_scale=scaling, causal=True, alibi_slopes=slopes,
    )  # fmt: skip
    out = q.new_zeros(batch, q_len, *out_unpadded.shape[1:])
    out[q_valid] = out_unpadded
    return out, None


# Our versions of the backends whose ALiBi form differs from transformers' generic ones; any other
# name (a kernel registered with `AttentionInterface.register`) comes from transformers' registry.
ALIBI_ATTENTION_FUNCTIONS: dict[str, Callable] = {
    "eager": eager_attention_forward,
    "sdpa": sdpa_attention_forward,
    "flex_attention": flex_attention_forward,
    "flash_attention_2": flash_attention_forward,
}


# --------------------------------------------------------------------------------------------
# 4. Attention module
# --------------------------------------------------------------------------------------------


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
        attention_mask: object | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        # [B, Q, H*D] -> [B, H, Q, D]
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if rotary is not None:
            cos, sin = rotary
            query_states = apply_rotary(query_states, cos, sin)
            key_states = apply_rotary(key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        implementation = self.config._attn_implementation or "sdpa"
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


# --------------------------------------------------------------------------------------------
# 5. Decoder layer
# --------------------------------------------------------------------------------------------


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
        attention_mask: object | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            self.input_layernorm(hidden_states), attention_mask=attention_mask, rotary=rotary, cache=cache, **kwargs
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))
        return hidden_states


# --------------------------------------------------------------------------------------------
# 6. Models
# --------------------------------------------------------------------------------------------


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
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AlibiModel):
            config = module.config
            init.copy_(module.alibi_slopes, get_alibi_slopes(config.num_attention_heads, config.alibi_max_bias))


class AlibiModel(AlibiPreTrainedModel):
    """The bare ALiBi decoder: embeddings, blocks and final norm; builds the shared mask once per forward."""

    # save_pretrained copies this file and configuration_alibi.py beside the weights (Hub remote code).
    _auto_class = "AutoModel"

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        if config.embedding_layer_norm:
            self.embed_layer_norm = nn.LayerNorm(
                config.hidden_size, eps=config.layer_norm_eps, bias=config.layer_norm_bias
            )
        if config.position_encoding == "t5":
            self.relative_attention_bias = nn.Embedding(config.t5_num_buckets, config.num_attention_heads)
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(AlibiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.layer_norm_bias)
        self.register_buffer(
            "alibi_slopes", get_alibi_slopes(config.num_attention_heads, config.alibi_max_bias), persistent=False
        )
        self.gradient_checkpointing = False
        self._block_mask_cache: dict[tuple, object] = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def slopes(self, device: torch.device) -> torch.Tensor | None:
        """The fp32 slopes on `device`, or None when the model does not use ALiBi."""
        if self.config.position_encoding != "alibi":
            return None
        slopes = self.alibi_slopes
        # `model.to(torch.bfloat16)` casts buffers too; the slopes must stay fp32.
        if slopes.dtype != torch.float32 or slopes.device.type == "meta":
            slopes = get_alibi_slopes(self.config.num_attention_heads, self.config.alibi_max_bias)
        return slopes.to(device)

    def _t5_bias(self, distance: torch.Tensor) -> torch.Tensor:
        """Learned bucketed bias `[B, H, Q, K]` (fp32) for `distance = pos_q - pos_k` `[B, Q, K]`."""
        buckets = t5_relative_position_bucket(distance, self.config.t5_num_buckets, self.config.t5_max_distance)
        return self.relative_attention_bias(buckets).float().permute(0, 3, 1, 2)

    def _validate_inputs(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        document_ids: torch.Tensor | None,
        past_length: int | torch.Tensor,
        key_length: int,
    ) -> None:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if torch.compiler.is_compiling():
            return
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be 2-D [batch, length], got shape {tuple(input_ids.shape)}.")
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
                raise ValueError(
                    f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), got values in "
                    f"[{int(input_ids.min())}, {int(input_ids.max())}]. Is the tokenizer's vocabulary larger "
                    "than the model's?"
                )
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if attention_mask is not None:
            expected = (batch, int(past_length) + length)
            # Also accepted: the new tokens only, or the whole static cache (see create_masks_for_generate).
            accepted = (expected, (batch, length), (batch, key_length))
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) not in accepted:
                raise ValueError(
                    f"attention_mask must be 2-D with shape {expected} (batch, cached + new tokens), "
                    f"got {tuple(attention_mask.shape)}."
                )
        if document_ids is not None and (document_ids.dim() != 2 or document_ids.shape[0] != batch):
            raise ValueError(f"document_ids must be 2-D [batch, length], got shape {tuple(document_ids.shape)}.")

    def build_attention_mask(
        self,
        attention_mask: torch.Tensor | None,
        query_length: int,
        key_length: int,
        past_length: int | torch.Tensor,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        document_ids: torch.Tensor | None = None,
    ) -> tuple[object, AttentionPositions]:
        """The one mask every layer shares, in the form the attention backend wants."""
        positions = build_positions(
            attention_mask, batch_size, query_length, key_length, past_length, device, document_ids
        )
        slopes = self.slopes(device)
        if slopes is not None and device.type == "cpu" and torch.is_grad_enabled():
            _flush_denormals_for_cpu_training()
        implementation = self.config._attn_implementation or "sdpa"
        no_padding = positions.key_valid is None and positions.document_ids is None
        if implementation == "flash_attention_2":
            if document_ids is not None:
                raise ValueError("document_ids are not supported with flash_attention_2; use sdpa or flex_attention.")
            if self.config.position_encoding not in ("alibi", "none", "rotary", "sinusoidal"):
                raise ValueError("position_encoding='t5' needs a bias tensor; use sdpa, eager or flex_attention.")
            if slopes is None:
                slopes = torch.zeros(self.config.num_attention_heads, device=device)
            return FlashAlibiMask(slopes, attention_mask), positions
        if implementation == "flex_attention" and query_length > 1:
            return self._flex_mask(positions, query_length, key_length, slopes, batch_size, device), positions
        dropout = self.config.attention_dropout if self.training else 0.0
        if (
            implementation == "sdpa"
            and device.type == "cpu"
            and dtype == torch.float32
            and dropout == 0.0
            and no_padding
            and query_length == key_length
            and self.config.position_encoding != "t5"
        ):
            if slopes is None:
                return None, positions  # plain causal: sdpa's is_causal path
            keys = torch.arange(key_length, device=device, dtype=torch.float32) - (key_length - 1) / 2
            return KeyOnlyAlibiBias(slopes[None, :, None, None] * keys[None, None, None, :]), positions
        relative_bias = self._t5_bias if self.config.position_encoding == "t5" else None
        mask = build_alibi_mask(slopes, positions, query_length, key_length, dtype, relative_bias)
        return mask, positions

    def _flex_mask(
        self,
        positions: AttentionPositions,
        query_length: int,
        key_length: int,
        slopes: torch.Tensor | None,
        batch_size: int,
        device: torch.device,
    ) -> FlexAlibiMask:
        from torch.nn.attention.flex_attention import create_block_mask

        past = positions.past_length
        plain = positions.key_valid is None and positions.document_ids is None
        # Uncompiled, create_block_mask evaluates mask_mod on the whole Q x K grid; compiled it does
        # not, but compiling costs seconds per shape, so only long sequences pay for it.
        compile_mask = query_length * key_length >= 2048 * 2048
        if plain:
            # Depends only on the shape: build once per (Q, K, past) and reuse across steps.
            cache_key = (query_length, key_length, int(past), device)
            block_mask = self._block_mask_cache.get(cache_key)
            if block_mask is None:

                def causal(b, h, q_idx, kv_idx):
                    return kv_idx <= q_idx + past

                block_mask = create_block_mask(
                    causal, None, None, query_length, key_length, device=device, _compile=compile_mask
                )
                if len(self._block_mask_cache) > 16:
                    self._block_mask_cache.clear()
                self._block_mask_cache[cache_key] = block_mask
        else:
            allowed_valid = positions.key_valid
            docs = positions.document_ids
            query_docs = positions.query_document_ids

            def mask_mod(b, h, q_idx, kv_idx):
                keep = (kv_idx <= q_idx + past) | (kv_idx == q_idx + past)
                if allowed_valid is not None:
                    keep = keep & (allowed_valid[b, kv_idx] | (kv_idx == q_idx + past))
                if docs is not None:
                    keep = keep & ((docs[b, kv_idx] == query_docs[b, q_idx]) | (kv_idx == q_idx + past))
                return keep

            block_mask = create_block_mask(
                mask_mod, batch_size, None, query_length, key_length, device=device, _compile=compile_mask
            )

        q_pos, k_pos = positions.query_positions, positions.key_positions
        t5_table = None
        if self.config.position_encoding == "t5":
            # One bias per head and distance: O(H * K) memory, not O(Q * K).
            distances = torch.arange(key_length + query_length, device=device)
            buckets = t5_relative_position_bucket(distances, self.config.t5_num_buckets, self.config.t5_max_distance)
            t5_table = self.relative_attention_bias(buckets).float().t().contiguous()  # [H, D]

        if plain:

            def score_mod(score, b, h, q_idx, kv_idx):
                distance = q_idx + past - kv_idx
                if slopes is not None:
                    score = score - slopes[h] * distance
                if t5_table is not None:
                    score = score + t5_table[h, distance.clamp(min=0)]
                return score

        else:

            def score_mod(score, b, h, q_idx, kv_idx):
                distance = q_pos[b, q_idx] - k_pos[b, kv_idx]
                if slopes is not None:
                    score = score - slopes[h] * distance
                if t5_table is not None:
                    score = score + t5_table[h, distance.clamp(min=0)]
                return score

        return FlexAlibiMask(block_mask, score_mod)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run the decoder.

        Args:
            input_ids: `[B, Q]` token ids.
            attention_mask: `[B, past + Q]`, 1 for tokens and 0 for (left) padding. Positions, and so
                the ALiBi bias, come from its cumulative sum.
            position_ids: accepted for API compatibility and ignored: positions come from the mask.
            cache: a transformers `Cache`; created (dynamic) when `use_cache` and none is given.
            inputs_embeds: `[B, Q, hidden]` instead of `input_ids`.
            document_ids: `[B, Q]` (or `[B, past + Q]`) ids of packed documents; attention stays
                inside each document. ALiBi is translation-invariant, so positions need no reset.
        """
        kwargs.pop("past_key_values", None)
        kwargs.pop("cache_position", None)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        query_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        key_length = cache.get_mask_sizes(query_length, 0)[0] if cache is not None else query_length
        self._validate_inputs(input_ids, inputs_embeds, attention_mask, document_ids, past_length, key_length)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch_size = inputs_embeds.shape[0]
        device = inputs_embeds.device
        if (
            attention_mask is not None
            and attention_mask.shape[1] == query_length
            and not torch.compiler.is_compiling()
        ):
            if int(past_length) > 0:  # a mask for the new tokens only: the cached ones are real tokens
                attention_mask = F.pad(attention_mask, (int(past_length), 0), value=1)
        if document_ids is not None and document_ids.shape[1] == query_length and not torch.compiler.is_compiling():
            if int(past_length) > 0:
                raise ValueError("document_ids with a cache must cover the cached tokens too: [B, past + Q].")

        mask, positions = self.build_attention_mask(
            attention_mask,
            query_length,
            key_length,
            past_length,
            batch_size,
            inputs_embeds.dtype,
            device,
            document_ids,
        )

        hidden_states = inputs_embeds
        if self.config.position_encoding == "sinusoidal":
            # Vaswani et al. (3.4) and fairseq scale token embeddings by sqrt(d) so that the fixed
            # sinusoid (entries in [-1, 1]) does not swamp them; LayerNorm below is scale-invariant.
            hidden_states = hidden_states * math.sqrt(self.config.hidden_size)
        if self.config.embedding_layer_norm:
            hidden_states = self.embed_layer_norm(hidden_states)
        rotary = None
        if self.config.position_encoding == "sinusoidal":
            pe = sinusoidal_embedding(positions.query_positions, self.config.hidden_size)
            hidden_states = hidden_states + pe.to(hidden_states.dtype)
        elif self.config.position_encoding == "rotary":
            inv_freq = 1.0 / (
                self.config.rope_theta
                ** (
                    torch.arange(0, self.config.head_dim, 2, device=device, dtype=torch.float32) / self.config.head_dim
                )
            )
            angles = positions.query_positions.float()[..., None] * inv_freq  # [B, Q, D/2]
            angles = torch.cat([angles, angles], dim=-1)
            rotary = (angles.cos().to(hidden_states.dtype), angles.sin().to(hidden_states.dtype))
        hidden_states = self.embed_dropout(hidden_states)

        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, rotary=rotary, cache=cache, **kwargs)
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

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

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
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits `[B, Q, vocab]` (only the last `logits_to_keep` when > 0) and, with `labels`, the shifted LM loss."""
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            document_ids=document_ids,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)

    def create_masks_for_generate(
        self,
        config: AlibiConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        **kwargs,
    ) -> torch.Tensor | None:
        """Keep the 2-D padding mask for static caches, padded to the cache size.

        transformers would turn it into a 4-D causal mask without the bias; the model builds the
        ALiBi mask itself, and a fixed-size 2-D mask keeps compiled decoding free of recompiles.
        """
        batch_size, query_length = inputs_embeds.shape[:2]
        if cache is None:
            return attention_mask
        key_length = cache.get_mask_sizes(query_length, 0)[0]
        if attention_mask is None:
            past = cache.get_seq_length()
            attention_mask = torch.ones(
                batch_size, int(past) + query_length, dtype=torch.long, device=inputs_embeds.device
            )
        return F.pad(attention_mask, (0, key_length - attention_mask.shape[1]), value=0)

    def _get_stopping_criteria(self, *args, **kwargs):
        # transformers warns once generation passes config.max_position_embeddings. For ALiBi that
        # is the training length, not a limit, so the warning would only mislead.
        criteria = super()._get_stopping_criteria(*args, **kwargs)
        for criterion in criteria:
            if hasattr(criterion, "max_position_embeddings"):
                criterion.max_position_embeddings = None
        return criteria


__all__ = ["AlibiForCausalLM", "AlibiModel", "AlibiPreTrainedModel", "get_alibi_slopes"]
