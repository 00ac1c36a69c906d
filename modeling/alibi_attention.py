# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""The attention kernels, one per backend, each taking the mask form `alibi_masks.create_alibi_mask` builds for it.

What `integrations/sdpa_attention.py`, `flex_attention.py` and `flash_attention.py` are to Llama: `AlibiAttention`
computes queries, keys and values and calls the kernel `ALL_ATTENTION_FUNCTIONS` (our instance of transformers' registry) holds for
`config._attn_implementation`.
sdpa takes a 4-D tensor, or `WindowedAlibi` (blocked, for windowed ALiBi and the CPU default); flex_attention a
`BlockMask` and `score_mod`; flash_attention_2 the slopes; alibi_triton (`alibi_triton.py`) slopes and layout tensors.
Hub remote code like the rest of the model.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.nn import functional as F
from torch.nn.attention.flex_attention import BlockMask
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface
from transformers.models.llama.modeling_llama import eager_attention_forward, repeat_kv
from transformers.utils import logging

from .alibi_blocked import (
    PackedDocuments,
    PatternCache,
    StaticContinuation,
    WindowedAlibi,
    after_left_padding,
    rows_left_padded,
)
from .alibi_blocked_attention import blocked_attention
from .alibi_compile import UNCOMPILED_FLEX, compiled
from .alibi_layout import build_layout
from .alibi_masks import ALIBI_FUSED, ALIBI_TRITON, FlashAlibiMask, FlexAlibiMask, alibi_bias, build_dense_mask
from .alibi_paged import PagedRequests
from .alibi_triton import TritonAlibiMask, alibi_flash_attention

logger = logging.get_logger(__name__)


def warn_without_weights(kwargs: dict, backend: str) -> None:
    """The warning transformers' sdpa and flash kernels give where `output_attentions=True` asks a kernel that returns
    no attention weights (the model's outputs then hold none), with the setting that gives them."""
    if kwargs.get("output_attentions", False):
        logger.warning_once(
            f"`{backend}` attention returns no attention weights, so `output_attentions=True` gives none: load the "
            'model with attn_implementation="eager" (or call model.set_attn_implementation("eager")) to get them.'
        )


def windowed_alibi_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: WindowedAlibi, scaling: float, dropout: float
) -> torch.Tensor:
    """Causal windowed-ALiBi attention `[B, H, L, D]` (`blocked_attention`), traced where the length is fixed.

    Where a compiled forward has a dynamic length (torch.compile's second length, or `dynamic=True`), the plan runs
    as one opaque op (`dynamic_blocked_attention`) instead: its choices (which heads run whole, how many first blocks,
    the cached patterns' keys) each guard on the length, so a traced plan would be specialized to one length after
    all, and a sweep of lengths would recompile per length until dynamo's limit of 8 and then run the whole model
    uncompiled. With dropout (whose mask the op's recomputing backward could not redraw) it runs outside the graph.
    """
    length = query.shape[2]
    if isinstance(length, torch.SymInt) or not statically_known_true(length <= sys.maxsize):  # a symbol, unguarded
        starts = mask.documents.starts if mask.documents is not None else None
        plan = (starts, mask.slopes, mask.windows, mask.silenced, scaling)
        if dropout:
            return uncompiled_blocked_attention(query, key, value, *plan, dropout)
        return dynamic_blocked_attention(query, key, value, *plan).transpose(1, 2)
    return blocked_attention(query, key, value, mask, scaling, dropout)


# The op's name carries this module's import name, as `alibi_triton`'s do: a process may hold several copies of this
# file (the package's and each Hub repo's remote code), and a second definition under one name replaces the first.
_OP = "alibi_lm::" + re.sub(r"\W", "_", __name__)
# The op's patterns, which no model can hand it: shared by every model in the process (keyed by slope, window, dtype
# and device, as a model's own), bounded as a model's own.
OP_PATTERNS = PatternCache()
# The ops' schemas are written out: torch before 2.7 infers none from `list[float]` or a string annotation.
_PLAN = "float[] slopes, SymInt[] windows, bool[] silenced, float scaling"


def plan_from_numbers(
    starts: torch.Tensor | None, slopes: list[float], windows: list[int], silenced: list[bool]
) -> WindowedAlibi:
    """The plan's `WindowedAlibi` where only its numbers (and documents' starts) arrive, as an op's arguments, on the
    shared `OP_PATTERNS`."""
    documents = PackedDocuments(starts) if starts is not None else None
    return WindowedAlibi(slopes, windows, OP_PATTERNS.for_forward(), silenced, documents=documents)


@torch.library.custom_op(
    f"{_OP}_blocked",
    mutates_args=(),
    schema=f"(Tensor query, Tensor key, Tensor value, Tensor? starts, {_PLAN}) -> Tensor",
)
def dynamic_blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    starts: torch.Tensor | None,
    slopes: list[float],
    windows: list[int],
    silenced: list[bool],
    scaling: float,
) -> torch.Tensor:
    """`blocked_attention` as one op for compiled forwards of dynamic length: `[B, L, H, D]` (contiguous).

    Opaque to the compiler, so nothing in it guards on the length. Its backward (`dynamic_blocked_attention_backward`)
    runs the plan again.
    """
    return (
        blocked_attention(query, key, value, plan_from_numbers(starts, slopes, windows, silenced), scaling, 0.0)
        .transpose(1, 2)
        .contiguous()
    )


@dynamic_blocked_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *plan) -> torch.Tensor:
    batch, heads, length = query.shape[:3]
    return query.new_empty(batch, length, heads, value.shape[-1])


@torch.library.custom_op(
    f"{_OP}_blocked_backward",
    mutates_args=(),
    schema=f"(Tensor grad, Tensor query, Tensor key, Tensor value, Tensor? starts, {_PLAN}) -> (Tensor, Tensor, Tensor)",
)
def dynamic_blocked_attention_backward(
    grad: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    starts: torch.Tensor | None,
    slopes: list[float],
    windows: list[int],
    silenced: list[bool],
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK and dV of `dynamic_blocked_attention` for its output gradient `grad` `[B, L, H, D]`: the plan run
    again under autograd (an op too, since the compiler traces a custom op's backward)."""
    mask = plan_from_numbers(starts, slopes, windows, silenced)
    _, pullback = torch.func.vjp(lambda *qkv: blocked_attention(*qkv, mask, scaling, 0.0), query, key, value)
    # Each gradient laid out as its input, as the fake states (and the compiled graph assumes).
    return tuple(torch.empty_like(t).copy_(g) for t, g in zip((query, key, value), pullback(grad.transpose(1, 2))))


@dynamic_blocked_attention_backward.register_fake
def _(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *plan) -> tuple:
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _save_inputs(ctx, inputs: tuple, output: torch.Tensor) -> None:
    query, key, value, starts, *plan = inputs
    ctx.save_for_backward(query, key, value, starts)
    ctx.plan = plan


def _gradients(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    gradients = dynamic_blocked_attention_backward(grad, *ctx.saved_tensors, *ctx.plan)
    return *gradients, None, None, None, None, None


dynamic_blocked_attention.register_autograd(_gradients, setup_context=_save_inputs)


@torch.library.custom_op(
    f"{_OP}_continued",
    mutates_args=(),
    schema="(Tensor query, Tensor key, Tensor value, Tensor cached, Tensor? key_valid, "
    f"{_PLAN}, SymInt[] model_windows) -> Tensor",
)
def continued_blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cached: torch.Tensor,
    key_valid: torch.Tensor | None,
    slopes: list[float],
    windows: list[int],
    silenced: list[bool],
    scaling: float,
    model_windows: list[int],
) -> torch.Tensor:
    """`StaticContinuation`'s attention `[B, Q, H, D]` (contiguous): the queries after `cached` tokens of a static
    cache's `K` slots, read here, outside the compiled graph, as `continued` reads them eagerly. Plain or left-padded
    rows run the plan after the cache (`WindowedAlibi.past`, `after_left_padding`); rows padded otherwise take the
    `[B, H, Q, K]` mask the eager model builds for them (`model_windows`: windowed ALiBi's, empty for dense). Without
    gradients only (`compiled_continuation`)."""
    past, queries = int(cached), query.shape[2]
    filled = past + queries  # the slots after them are the cache's empty ones
    key, value = key[:, :, :filled], value[:, :, :filled]
    valid = None if key_valid is None else key_valid[:, :filled]
    padded = valid is not None and not bool(valid.all())
    if padded and not rows_left_padded(valid):
        layout = build_layout(valid, None, query.shape[0], queries, filled, past, query.device)
        rates = torch.tensor(slopes, device=query.device)
        reach = torch.tensor(model_windows, device=query.device) if model_windows else None
        mask = build_dense_mask(
            layout, lambda head, distance: alibi_bias(rates[head], distance), len(slopes), query.dtype, reach
        )
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
        return attended.transpose(1, 2).contiguous()
    plan = plan_from_numbers(None, slopes, windows, silenced)
    plan.past = past
    if padded:
        plan.documents = after_left_padding(valid, past, queries)
    return blocked_attention(query, key, value, plan, scaling, 0.0).transpose(1, 2).contiguous()


@continued_blocked_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *plan) -> torch.Tensor:
    batch, heads, queries = query.shape[:3]
    return query.new_empty(batch, queries, heads, value.shape[-1])


@torch.compiler.disable
def uncompiled_blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    starts: torch.Tensor | None,
    slopes: list[float],
    windows: list[int],
    silenced: list[bool],
    scaling: float,
    dropout: float,
) -> torch.Tensor:
    """`blocked_attention` outside the compiled graph (with dropout), on the op's patterns."""
    mask = plan_from_numbers(starts, slopes, windows, silenced)
    return blocked_attention(query, key, value, mask, scaling, dropout)


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | WindowedAlibi | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`F.scaled_dot_product_attention` with the 4-D mask or `is_causal` alone; windowed ALiBi (and the CPU default)
    in blocks; a continuous-batching step request by request."""
    warn_without_weights(kwargs, "sdpa")
    if isinstance(attention_mask, PagedRequests):
        return paged_requests_attention(module, query, key, value, attention_mask, scaling, dropout)
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    if isinstance(attention_mask, StaticContinuation):
        plan = attention_mask.plan
        attn_output = continued_blocked_attention(
            query, key, value, attention_mask.cached, attention_mask.key_valid, plan.slopes, plan.windows,
            plan.silenced, scaling, attention_mask.model_windows or [],
        )  # fmt: skip
        return attn_output, None
    if isinstance(attention_mask, WindowedAlibi):
        # Keys past the queries are a static cache's empty slots (`own_slots`): the plan is for the filled ones.
        filled = attention_mask.past + query.shape[2]
        key, value = key[:, :, :filled], value[:, :, :filled]
        compaction = attention_mask.compaction
        if compaction is None:
            attn_output = windowed_alibi_attention(query, key, value, attention_mask, scaling, dropout)
            return attn_output.transpose(1, 2).contiguous(), None
        # A padded batch: the plan runs on each row's tokens gathered ahead of its padding, then they go back.
        # gather, not take_along_dim, whose broadcasting specializes a compiled graph to one length (torch 2.13).
        batch, heads, length, dim = query.shape
        order = compaction.order[:, None, :, None].expand(batch, heads, length, dim)
        gathered = (torch.gather(t, 2, order) for t in (query, key, value))
        attn_output = windowed_alibi_attention(*gathered, attention_mask, scaling, dropout).transpose(1, 2)
        restore = compaction.restore[:, :, None, None].expand(batch, length, heads, dim)
        attn_output = torch.gather(attn_output, 1, restore)  # [B, L, H, D]
        return torch.where(compaction.padding[:, :, None, None], value.transpose(1, 2), attn_output), None
    # None only when every query sees every key before it: Q == K (causal) or one query (decoding).
    # The length first, as transformers' `sdpa_attention_forward` (5.25) does: with a dynamic length (a compiled
    # forward) `and` then tests the SymBool (a guard on L > 1) and yields a bool; last, it would be the SymBool itself,
    # which sdpa refuses, breaking the graph at every layer.
    mask, is_causal = attention_mask, query.shape[2] > 1 and attention_mask is None
    attn_output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=is_causal
    )
    return attn_output.transpose(1, 2).contiguous(), None


def paged_requests_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    step: PagedRequests,
    scaling: float,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, None]:
    """Each request's queries `[1, H, q1 - q0, D]` on its own keys, with its own mask; slots past the last request
    (padding) stay zero."""
    batch, heads, length, _ = query.shape
    attn_output = query.new_zeros(batch, length, heads, value.shape[-1])  # [1, Q, H, D]
    for (q0, q1, k0, k1), mask in zip(step.spans, step.masks):
        span = (query[:, :, q0:q1], key[:, :, k0:k1], value[:, :, k0:k1])
        attn_output[:, q0:q1] = sdpa_attention_forward(module, *span, mask, scaling, dropout)[0]
    return attn_output, None


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
    warn_without_weights(kwargs, "flex_attention")
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
    warn_without_weights(kwargs, "flash_attention_2")
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


def triton_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: TritonAlibiMask | torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The Triton flash kernel with the bias per tile (`alibi_triton`); single-token decoding uses sdpa."""
    warn_without_weights(kwargs, ALIBI_TRITON)
    if not isinstance(attention_mask, TritonAlibiMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    if dropout > 0.0:
        raise ValueError(f"{ALIBI_TRITON} has no attention dropout; set attention_dropout=0.0 to train with it.")
    attn_output = alibi_flash_attention(query, key, value, attention_mask, scaling)  # grouped KV heads as they are
    return attn_output.transpose(1, 2).contiguous(), None


def alibi_fused_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | WindowedAlibi | FlexAlibiMask | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The default (`ALIBI_FUSED`): flex_attention where `create_alibi_mask` built a flex mask (multi-token forwards on
    a GPU), sdpa with whatever else it built (the key-only bias and blocked heads on the CPU, the small decoding
    mask)."""
    warn_without_weights(kwargs, ALIBI_FUSED)
    if isinstance(attention_mask, FlexAlibiMask):
        return flex_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout)


# Our kernels for the backends whose ALiBi form differs from transformers' generic ones, and the fused default.
ALIBI_KERNELS: dict[str, Callable] = {
    "eager": eager_attention_forward,
    "sdpa": sdpa_attention_forward,
    "flex_attention": flex_attention_forward,
    "flash_attention_2": flash_attention_forward,
    ALIBI_FUSED: alibi_fused_attention_forward,
    ALIBI_TRITON: triton_attention_forward,
}
# transformers' public registries: the fused default becomes a name `attn_implementation` accepts (and that
# transformers' mask helpers can look up, should one be asked for this config: sdpa's mask), and a local interface
# holds our kernels on top of the global ones, as transformers documents for a model that overrides a backend. Any
# other registered name (a kernel a user registers with `AttentionInterface.register`) comes from the global registry.
for _name in (ALIBI_FUSED, ALIBI_TRITON):
    AttentionInterface.register(_name, ALIBI_KERNELS[_name])
    AttentionMaskInterface.register(_name, sdpa_mask)
ALL_ATTENTION_FUNCTIONS = AttentionInterface()  # transformers' name, our instance (its documented idiom)
for _name, _kernel in ALIBI_KERNELS.items():
    ALL_ATTENTION_FUNCTIONS[_name] = _kernel
# Registered by transformers but bias-free: refused by `AlibiPreTrainedModel.get_correct_attn_implementation`.
UNSUPPORTED_ATTENTION = ("flash_attention_3", "flash_attention_4", "paged|eager")
