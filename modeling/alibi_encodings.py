# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""The position encodings an AlibiModel can use: ALiBi and the paper's baselines, one module each.

ALiBi (Press, Smith & Lewis, ICLR 2022) adds its bias to the attention scores (through the mask, `alibi_masks`); the
baselines of its Table 1 run in the same model: sinusoidal (Vaswani et al. 2017) and rotary (Su et al. 2021)
embeddings, T5's relative bias buckets (Raffel et al. 2020), and none. Each module answers what the model asks of it
(`NoPositionEncoding`): what to add to the token embeddings, to the queries and keys, and to the scores.
`POSITION_ENCODING_CLASSES` maps `AlibiConfig.position_encoding` to its module. Hub remote code beside
`modeling_alibi.py`; imports only torch and the sibling files.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .alibi_blocked import alibi_window_values
from .alibi_masks import ScoreBias, alibi_bias, alibi_slope_values, get_alibi_slopes
from .configuration_alibi import AlibiConfig


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

    def slope_values(self) -> list[float] | None:
        """`slopes` as Python floats (what a compiled forward can branch on and loop over), or None."""
        return None

    def window_values(self) -> list[int] | None:
        """`windows` as Python ints, or None for no limit."""
        return None


class AlibiPositionalBias(NoPositionEncoding):
    """ALiBi: head h adds `-m_h * distance` to its attention scores; no parameters."""

    def __init__(self, config: AlibiConfig):
        super().__init__(config)
        self.num_heads, self.max_bias = config.num_attention_heads, config.alibi_max_bias
        self.config = config  # alibi_window_cutoff is read at each forward, so it can be switched on a loaded model
        self.register_buffer("alibi_slopes", get_alibi_slopes(self.num_heads, self.max_bias), persistent=False)
        self._slope_values = alibi_slope_values(self.num_heads, self.max_bias)  # the buffer's values, as floats

    def slopes(self, device: torch.device) -> torch.Tensor:
        slopes = self.alibi_slopes
        # `model.to(torch.bfloat16)` casts buffers too, and meta-device loading leaves none: the slopes stay fp32.
        if slopes.dtype != torch.float32 or slopes.device.type == "meta":
            slopes = get_alibi_slopes(self.num_heads, self.max_bias)
        return slopes.to(device)

    def score_bias(self, key_length: int, device: torch.device) -> ScoreBias:
        slopes = self.slopes(device)
        return lambda head, distance: alibi_bias(slopes[head], distance)

    def windows(self, device: torch.device) -> torch.Tensor | None:
        values = self.window_values()
        return None if values is None else torch.tensor(values, dtype=torch.long, device=device)

    def slope_values(self) -> list[float]:
        return self._slope_values

    def window_values(self) -> list[int] | None:
        cutoff = self.config.alibi_window_cutoff
        return None if cutoff is None else alibi_window_values(self._slope_values, cutoff)


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


# The class of each name in `configuration_alibi.POSITION_ENCODINGS` (the list of names itself lives there).
POSITION_ENCODING_CLASSES: dict[str, type[NoPositionEncoding]] = {
    "alibi": AlibiPositionalBias,
    "sinusoidal": SinusoidalPositionalEmbedding,
    "rotary": RotaryEmbedding,
    "t5": T5RelativePositionalBias,
    "none": NoPositionEncoding,
}
