# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""The blocked sdpa path's rules: its mask form, its block sizes and when it runs, the CPU default's cutoff, and the
plan itself (`blocked_plan`, `packed_plan` for packed documents), and where it cannot serve an ALiBi forward, why
(`quadratic_mask_reason`, the warning's words).

`WindowedAlibi` is what `create_alibi_mask` (`alibi_masks.py`) builds with `blocked_plan` and hands the sdpa kernel for
windowed ALiBi and for the CPU default, and `windowed_alibi_attention` (`alibi_attention.py`) computes from it; both
read the rules here. It
travels with checkpoints as Hub remote code beside `alibi_masks.py` and imports only torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class WindowedAlibi:
    """The blocked sdpa path's "mask": each head's slope and window, nothing L x L.

    Head h sees the `windows[h]` tokens before each query and itself. `windowed_alibi_attention` cuts the queries
    into blocks and gives each block only the keys its window reaches, so a head's cost is linear in L; heads whose
    window holds the whole sequence share one fused causal call. Causal layouts with Q == K and no cache: plain,
    padded (`compaction`), packed (`documents`) or both; and queries after cached tokens (`past`), plain or left-padded
    (`after_left_padding`). It serves windowed ALiBi (`alibi_window_cutoff`) and the CPU default path, whose windows
    end where the bias has silenced a key (`ALIBI_UNDERFLOW_CUTOFF`).
    """

    slopes: list[float]
    windows: list[int]
    # Each head's bias-and-window pattern (and the key-only bias), keyed by slope, window, dtype and device: built by
    # the first layer and reused by the others, and by later forwards when the model passes its cache (`PatternCache`).
    patterns: dict[tuple, torch.Tensor] = field(default_factory=dict)
    # Heads whose window is only where their bias has silenced a key (`ALIBI_UNDERFLOW_CUTOFF`): they may also run
    # unwindowed, on the key-only bias, where that is faster and exact (`runs_key_only`).
    silenced: list[bool] = field(default_factory=list)
    # A padded batch's rows with their tokens gathered ahead of their padding (`Compaction`); None: the batch as it is.
    compaction: Compaction | None = None
    # Packed documents (every head then runs in blocks, each block's keys cut at its queries' documents); None: one
    # document per row.
    documents: PackedDocuments | None = None
    # Tokens cached before the queries (a continued prompt: `continued`); 0: Q == K.
    past: int = 0


@dataclass
class PackedDocuments:
    """Where each query's document begins, and each head's masks cut there: while training, built by the first layer
    for one forward (each layer's backward keeps its masks, so the layers share one set; the next batch packs other
    documents); without gradients built where used, so that one head's masks are alive at a time."""

    starts: torch.Tensor  # [B, Q] long: the key slot where each query's document begins
    masks: dict[tuple, torch.Tensor] = field(default_factory=dict)
    # [B] long: where every query's document begins, where that is one slot per row before the queries (a left-padded
    # batch's tokens after cached ones): heads may then take the key-only call, its keys before it hidden. None: each
    # query its own.
    first: torch.Tensor | None = None

    def cut(self, key: tuple, pattern: torch.Tensor, first_key: torch.Tensor) -> torch.Tensor:
        """`pattern` `[n, S]` with -inf on each query's keys before `first_key` `[..., n]` (its document's start, as
        an index into the S keys): `[..., n, S]`, built once per forward for each `key`."""
        found = self.masks.get(key)
        if found is None:
            keys = torch.arange(pattern.shape[-1], device=pattern.device)
            found = pattern.masked_fill(keys < first_key[..., None], float("-inf"))
            if torch.is_grad_enabled():
                self.masks[key] = found
        return found


@dataclass
class Compaction:
    """How a padded batch (no cache, Q == K) runs as a plain one: each row's tokens first, in order, then its padding.

    The tokens keep their positions (a token's position counts the tokens before it) and see what they saw, since
    the padding now comes after them. Each padding slot attends to itself alone (its output is its value), as a
    left-padding slot does under the visibility rule (`AttentionLayout.visible`); gathered after the tokens it would
    otherwise see tokens that follow it.
    """

    order: torch.Tensor  # [B, L] long: the plan's slot i holds the batch's slot order[b, i]
    restore: torch.Tensor  # [B, L] long: the inverse, where each slot of the batch's went
    padding: torch.Tensor  # [B, L] bool: the batch's padding slots

    @classmethod
    def of(cls, key_valid: torch.Tensor) -> Compaction:
        order = torch.sort((~key_valid).to(torch.uint8), dim=-1, stable=True).indices
        return cls(order, order.argsort(dim=-1), ~key_valid)

    def documents(self, document_ids: torch.Tensor) -> torch.Tensor:
        """Packed documents' ids `[B, L]` in the plan's slots: each document's tokens, in order and now side by side
        (a token's position counts its document's tokens before it, so slot distances stay the distances), then each
        padding slot a document of its own (ids from `build_layout` are positive)."""
        slots = torch.arange(document_ids.shape[1], device=document_ids.device)
        return torch.where(self.padding.gather(1, self.order), -1 - slots, document_ids.gather(1, self.order))


# What a model keeps of the blocked path's patterns between forwards (and the op compiled models of dynamic length run,
# `dynamic_blocked_attention`): building them took 2.7 ms of a 1,024-token prefill of the demo's model that otherwise
# takes 19 (Intel Xeon, 2 threads; four blocked heads), about the time its two layers spend in attention. Patterns are
# small (`[n, w + n]` per head, 0.5 MiB at window 640) and depend on the slope and window only, so training and
# scoring at one length find them every step; past this many bytes the cache starts over, so a sweep of lengths or a
# 64k-token prefill (46 MiB for its widest blocked head) keeps at most one forward's worth.
PATTERN_CACHE_BYTES = 16 * 2**20


class PatternCache(dict):
    """`WindowedAlibi.patterns` across forwards, bounded by PATTERN_CACHE_BYTES (`for_forward`)."""

    def for_forward(self) -> PatternCache:
        if sum(t.numel() * t.element_size() for t in list(self.values())) > PATTERN_CACHE_BYTES:  # list: atomic
            self.clear()
        return self


def windowed_block_size(window: int) -> int:
    """Queries per block for a head that sees `window` tokens back: a quarter of the window, within [128, 1024]."""
    return min(1024, max(128, window // 4))


# The blocked path computes a score about 1.8x as slowly as sdpa's causal kernel (a float mask on every block; at
# 16k tokens it did 20% of the dense work in 36% of the time, recipes/results/bench_cpu-long.md), so it runs only
# where the windows cut the work at least in half.
WINDOWED_WORK_LIMIT = 0.5
# Where the windows hold most of the sequence, the CPU fast path runs windowed ALiBi as dense (faster there) only for
# cutoffs of at least this: a key past a window then weighs under e^-16 = 1.1e-7 of the nearest key with an equal
# score (T = 20 moved logits by less than 1e-5 on the demo model). A smaller cutoff is a window that matters (a
# model trained with it, or transformers' `sliding_window` set small), and is applied exactly on every path.
DENSE_SHORTCUT_CUTOFF = 16.0
_windowed_work_limit = WINDOWED_WORK_LIMIT  # what `create_alibi_mask` applies; `blocked_windows_everywhere` lifts it


def windowed_work_limit() -> float:
    """The largest `windowed_work_ratio` at which `create_alibi_mask` runs windows blocked (WINDOWED_WORK_LIMIT, or
    no limit within `blocked_windows_everywhere`)."""
    return _windowed_work_limit


@contextlib.contextmanager
def blocked_windows_everywhere() -> Iterator[None]:
    """Within it, windowed ALiBi runs the blocked kernel at every length, also where dense ALiBi would be faster (to
    measure the windowed model exactly as it computes, as `alibi-lm window` does)."""
    global _windowed_work_limit
    saved, _windowed_work_limit = _windowed_work_limit, math.inf
    try:
        yield
    finally:
        _windowed_work_limit = saved


# How far down the ALiBi bias takes a key before the CPU default path drops it: at most e^-40 = 4.2e-18 of the weight
# of the query's own token (a million such keys move an output by 4e-12 of it; fp32 resolves 6e-8). Kept weights, and
# the backward's products of one with a gradient down to 1e-20, stay in fp32's normal range (above 1.2e-38): no
# denormals, which x86 cores without flush-to-zero take slow microcode for. 80 kept weights normal but not those
# products: an Intel Xeon's training step at 2,048 tokens ran at 0.71x the no-bias model's (40: 0.89x-0.98x); AMD
# EPYC does not notice. No bias the kernel adds exceeds 40, so its fp32 rounding is at most 40 * 2^-24 = 2.4e-6.
ALIBI_UNDERFLOW_CUTOFF = 40.0


# SDPA's fused CPU kernel, called as the aten op: from torch 2.14, `F.scaled_dot_product_attention` refuses a mask
# together with `is_causal` on every backend, while the kernel behind it still takes both (exact, forward and backward).
FUSED_CPU_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def blocked_by_default(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether dense ALiBi runs the blocked plan (the CPU default: steep heads cut where their bias has silenced a key)
    rather than an L x L mask: on the CPU, in fp32, bf16 or fp16. Its heads that see the whole sequence take the
    key-only bias's one fused call where that is exact (`key_only_exact`), and run in blocks too elsewhere: with
    attention dropout (which sends every sdpa call to the math kernel) an L x L mask made the math kernel write out
    every score, the silenced ones as denormals: a training step with dropout 0.1 ran at 0.69x the no-bias model's
    (cpu-small, 2,048 tokens, Intel Xeon)."""
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16)


def key_only_exact(device: torch.device, dtype: torch.dtype, dropout: float) -> bool:
    """Whether `key_only_attention` is exact: on the CPU flash kernel, no dropout. The bias stays fp32 also for
    16-bit queries and keys (the kernel adds an fp32 mask to its fp32 scores): in bf16, `m * pos_k` near 20 would
    round by 0.06 on the keys that matter most."""
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16, torch.float16)
        and dropout == 0.0
        and FUSED_CPU_ATTENTION is not None
        and fused_cpu_kernel_enabled()
    )


@torch.compiler.assume_constant_result
def fused_cpu_kernel_enabled() -> bool:
    return torch.backends.cuda.flash_sdp_enabled()  # the flag SDPA's fused CPU kernel obeys


# 16-bit dtypes whose CPU matrix products take no denormal penalty: bf16 where the CPU has bf16 dot-product
# instructions, AMX tiles or AVX512-BF16 (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later), which
# treat denormal inputs as zero. There the key-only bias runs on heads that blocks would not save half the work of
# (measured on an Intel Xeon with AMX, bf16, 2,048 tokens: a head with window 640 took 15.7 ms in blocks, 12.6 ms
# key-only, 10.6 ms with no bias; on an AMD EPYC with AVX512-BF16 and no AMX the bf16 training step of the bench's
# cpu-small model took 1.09 s key-only, 1.19 s in blocks, 1.09 s with no bias; with neither, oneDNN and ATen held to
# AVX2 on the Intel machine, the same key-only call took twice the causal one, and blocks win).
BF16_DENORMAL_FREE_CHECKS = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # in torch.cpu


def denormal_free_dtypes() -> tuple[torch.dtype, ...]:
    """The 16-bit dtypes whose products this CPU computes with no denormal penalty (see above)."""
    return (
        (torch.bfloat16,)
        if any(getattr(torch.cpu, check, lambda: False)() for check in BF16_DENORMAL_FREE_CHECKS)
        else ()
    )


DENORMAL_FREE_DTYPES = denormal_free_dtypes()
# How large the key-only bias may grow there: its fp32 rounding stays under m * L * 2^-24 <= 2.4e-4, below the
# resolution of bf16 (3.9e-3).
KEY_ONLY_16BIT_REACH = 4096.0


def runs_key_only(mask: WindowedAlibi, head: int, length: int, dtype: torch.dtype) -> bool:
    """Whether `head` runs as part of the one fused causal call with the key-only bias (on the CPU flash kernel):
    where its window holds the sequence and its bias stays small (no denormals, fp32 rounding under 2.4e-6); and, where
    the kernel takes no denormal penalty, also a head whose window only drops silenced keys, where blocks would not
    halve its work."""
    reach = mask.slopes[head] * (length - 1)
    if mask.windows[head] >= length - 1 and reach <= ALIBI_UNDERFLOW_CUTOFF:
        return True
    return (
        dtype in DENORMAL_FREE_DTYPES
        and bool(mask.silenced) and mask.silenced[head]
        and reach <= KEY_ONLY_16BIT_REACH
        and windowed_work_ratio([mask.windows[head]], length) > WINDOWED_WORK_LIMIT
    )  # fmt: skip


def windowed_work_ratio(windows: list[int], length: int) -> float:
    """The scores the blocked path computes over those of dense causal attention, for a sequence of `length`."""
    blocked = sum(min(w, length - 1) + windowed_block_size(min(w, length - 1)) for w in windows)
    return blocked / (len(windows) * (length + 1) / 2)


def alibi_window_values(slopes: list[float], cutoff: float) -> list[int]:
    """`alibi_windows` over Python floats (the fp32 slopes as doubles: the same division, the same ints)."""
    return [math.floor(cutoff / slope) for slope in slopes]


def is_exporting() -> bool:
    """Whether torch.export traces this call: torch's flag itself. torch 2.9 and 2.10 answer True to
    `torch.compiler.is_exporting()` inside every torch.compile (pytorch#176347), which sent a compiled continuation
    after a static cache to the `[B, H, Q, K]` mask. On torch 2.6, which has neither, False (a windowed model's
    length-guarded choice stays there, which export refuses)."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if flag is None:
        return getattr(torch.compiler, "is_exporting", lambda: False)()
    return bool(flag)


def blocked_plan(
    config,
    length: int,
    slope_values: list[float],
    window_values: list[int] | None,
    dtype: torch.dtype,
    patterns: dict[tuple, torch.Tensor] | None,
    device: torch.device,
    exact_windows: bool = False,
) -> WindowedAlibi | None:
    """The blocked sdpa plan for a causal layout of `length` with Q == K and no cache (plain, padded once compacted,
    or packed once `packed_plan` has cut it), or None where dense ALiBi runs. `exact_windows`: a windowed model takes
    its windows at every length (where `length` is not the length the plan will run at: `StaticContinuation`)."""
    # Windowed ALiBi in blocks where that saves work; where the windows hold most of the sequence, dense ALiBi is
    # faster (and the windowed model approximates it to its cutoff's tolerance anyway).
    # torch.export with a dynamic length cannot keep a choice that guards on the length: it takes the exact windows,
    # right at every length (the dense shortcut only approximates them where they hold most of the sequence).
    exporting = isinstance(length, torch.SymInt) and is_exporting()
    saves_work = window_values is not None and (
        exporting or exact_windows or windowed_work_ratio(window_values, length) <= windowed_work_limit()
    )
    exact = saves_work or (window_values is not None and config.alibi_window_cutoff < DENSE_SHORTCUT_CUTOFF)
    patterns = {} if patterns is None else patterns
    if blocked_by_default(device, dtype):
        # The CPU default: heads that see the whole sequence run fused with the key-only bias (where that is exact);
        # steeper heads stop where their bias has silenced a key (no denormals, no large biases).
        silenced = alibi_window_values(slope_values, ALIBI_UNDERFLOW_CUTOFF)
        reach = [min(r, w) for r, w in zip(silenced, window_values)] if exact else silenced
        return WindowedAlibi(slope_values, reach, patterns, [r == s for r, s in zip(reach, silenced)])
    if saves_work:
        return WindowedAlibi(slope_values, window_values, patterns)
    return None


# Where documents are read (not compiling), the heads whose window outreaches every document run with a window of the
# longest document's reach, rounded up to a multiple of this: batches of different documents then share a few
# patterns, not one each.
DOCUMENT_REACH_STEP = 128


def document_starts(document_ids: torch.Tensor) -> torch.Tensor:
    """`[B, L]` long: the slot where each slot's document begins (a document is a run of equal ids)."""
    slots = torch.arange(document_ids.shape[1], device=document_ids.device)
    # Against the left neighbour by `roll`, not by slices of L - 1 (torch.export would guard on L - 1 != 1).
    begins = (document_ids != document_ids.roll(1, -1)) | (slots == 0)
    return torch.where(begins, slots, 0).cummax(-1).values


def packed_plan(plan: WindowedAlibi, document_ids: torch.Tensor) -> WindowedAlibi:
    """`plan` for packed documents: each block's keys cut at its queries' documents' starts (`PackedDocuments`),
    and, where the ids can be read, no head's window longer than the longest document (its reach)."""
    starts = document_starts(document_ids)
    plan.documents = PackedDocuments(starts)
    if not torch.compiler.is_compiling():
        length = document_ids.shape[1]
        farthest = int((torch.arange(length, device=document_ids.device) - starts).max())
        reach = min(length - 1, -(-max(farthest, 1) // DOCUMENT_REACH_STEP) * DOCUMENT_REACH_STEP)
        plan.windows = [min(window, reach) for window in plan.windows]
    return plan


class Layout(Protocol):
    """What the rules below read of an `AttentionLayout` (`alibi_layout.py`; `alibi_masks.py` imports this module): which
    layouts the blocked plan serves."""

    query_length: int
    key_length: int
    past_length: int | torch.Tensor
    key_positions: torch.Tensor | None
    key_valid: torch.Tensor | None
    document_ids: torch.Tensor | None
    custom_visible: torch.Tensor | None

    @property
    def is_plain(self) -> bool: ...


def fresh_square(layout: Layout) -> bool:
    """Whether `layout` has no cached tokens and no prepared 4-D mask, and Q == K (training, scoring, a prefill)."""
    return (
        layout.custom_visible is None
        and layout.query_length == layout.key_length
        and isinstance(layout.past_length, int)
        and layout.past_length == 0
    )


def cached_tokens(layout: Layout) -> int | None:
    """The tokens cached before the queries, as an int; None while compiling with a static cache (the count is a
    tensor, which a graph cannot read)."""
    past = layout.past_length
    if isinstance(past, torch.Tensor):
        return None if torch.compiler.is_compiling() else int(past)
    return past


def continued(layout: Layout) -> int:
    """The tokens cached before a continued prompt (several queries over plain or left-padded slots: a chat's next
    turn, a chunked prefill, of one prompt or a batch; with gradients too), where the blocked plan can run after them
    (eager); 0 otherwise."""
    if layout.query_length == 1 or torch.compiler.is_compiling():
        return 0
    past = cached_tokens(layout) or 0
    if past and (layout.is_plain or left_padded(layout, past + layout.query_length)):
        return past
    return 0


def left_padded(layout: Layout, filled: int) -> bool:
    """Whether each row of `layout` is padding and then tokens over its first `filled` key slots (generate's batches:
    a token's position is then its slot less the row's padding), with no documents and no prepared 4-D mask. Reads
    the mask's values: eager only."""
    if layout.key_valid is None or layout.document_ids is not None or layout.custom_visible is not None:
        return False
    return rows_left_padded(layout.key_valid[:, :filled])


def rows_left_padded(valid: torch.Tensor) -> bool:
    """Whether each row of `valid` `[B, K]` is padding and then tokens."""
    return bool((valid[:, 1:] >= valid[:, :-1]).all())


def after_left_padding(key_valid: torch.Tensor, past: int, queries: int) -> PackedDocuments:
    """The queries after `past` cached slots of a left-padded batch (`left_padded`) as documents: each token's document
    begins at its row's first token, each padding slot's at itself (it sees itself alone, as the visibility rule
    says)."""
    valid = key_valid[:, : past + queries]
    first = (~valid).sum(-1, keepdim=True)  # [B, 1] the row's padding: its first token's slot
    slots = torch.arange(past, past + queries, device=valid.device)
    documents = PackedDocuments(torch.where(valid[:, past:], first, slots))
    # Every query a token, every row with a cached token (the kernel gives a row with no visible key a log-sum-exp of
    # 0, not -inf, which the key-only call's join of cached and own keys would count).
    if bool(valid[:, past:].all()) and bool((first < past).all()):
        documents.first = first[:, 0]
    return documents


@dataclass
class StaticContinuation:
    """Queries after a static cache's tokens in a compiled forward (`compiled_continuation`): the graph cannot read how
    many tokens are cached (a tensor), so the plan runs in one op per layer that reads it
    (`continued_blocked_attention`), as `continued` runs it eagerly: plain or left-padded rows, and the `[B, H, Q, K]`
    mask only where the rows are padded otherwise."""

    plan: WindowedAlibi  # the slopes, windows and silenced heads; its `past` is read at run time
    cached: torch.Tensor  # 0-d: the tokens cached before the queries (a copy: the cache counts on in place)
    key_valid: torch.Tensor | None  # [B, K] the attention_mask over the cache's slots, or None
    model_windows: list[int] | None = None  # windowed ALiBi's windows, for that mask


def compiled_continuation(layout: Layout) -> bool:
    """Whether `layout` is several queries after a static cache's tokens in a compiled forward without gradients (a
    chunked prefill's later chunks, a next turn; the first forward into a fresh cache counts 0 as an int), with no
    documents or prepared mask: the case `StaticContinuation` serves. Not under torch.export, whose programs keep
    the mask's aten ops there (a runtime such as ExecuTorch has no kernel for this package's op)."""
    return (
        torch.compiler.is_compiling()
        and not is_exporting()
        and isinstance(layout.past_length, torch.Tensor)
        and layout.query_length > 1
        and layout.document_ids is None
        and layout.custom_visible is None
        and not torch.is_grad_enabled()
    )


def own_slots(layout: Layout) -> Layout:
    """`layout` with its keys cut to the queries' own slots where nothing was cached before them (a static cache's
    first forward, whose later slots are empty); `layout` itself otherwise, and while compiling with a static cache
    (its count of cached tokens is a tensor, which a graph cannot read)."""
    length = layout.query_length
    if layout.custom_visible is not None or length == 1 or length >= layout.key_length:
        return layout  # (a decoding step has its own small mask)
    if cached_tokens(layout) != 0:
        return layout

    def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[:, :length]

    return dataclasses.replace(
        layout, key_length=length, past_length=0, key_positions=cut(layout.key_positions),
        key_valid=cut(layout.key_valid), document_ids=cut(layout.document_ids),
    )  # fmt: skip


def compactable(layout: Layout) -> bool:
    """Whether `layout` has padding (a 2-D attention_mask) that the plan gathers away (`Compaction`): no cached tokens,
    Q == K; packed documents or not."""
    return layout.key_valid is not None and fresh_square(layout)


def packed(layout: Layout) -> bool:
    """Whether `layout` has packed documents that the plan cuts its blocks at (`packed_plan`): no cached tokens,
    Q == K; padded (then compacted first) or not."""
    return layout.document_ids is not None and fresh_square(layout)


# One forward's [B, H, Q, K] ALiBi mask of at least this many bytes gets the warning `quadratic_mask_reason` words
# (2,048 tokens with 16 heads in bf16 take 128 MiB; it quadruples with each doubling of the length).
QUADRATIC_WARNING_BYTES = 64 * 2**20


def quadratic_mask_reason(layout: Layout, named: str, fused_devices: tuple[str, ...], dropout: float) -> str | None:
    """Why ALiBi takes a `[B, H, Q, K]` mask in this forward where no fused path serves it, and what avoids that; None
    where the user chose that mask (eager, a prepared 4-D mask) or was told already (torch.compile unavailable)."""
    device = layout.device.type
    if named == "eager" or layout.custom_visible is not None:
        return None
    if device in fused_devices:
        if named == "sdpa":
            return (
                f"attn_implementation='sdpa' takes the bias as a mask on {device}; leave attn_implementation unset: "
                "the default runs flex_attention there, with no mask tensor"
            )
        if dropout:
            return (
                f"flex_attention, the default's kernel on {device}, has no attention dropout (attention_dropout="
                f"{dropout}): set attention_dropout=0.0, or install flash-attn and pass "
                "attn_implementation='flash_attention_2' (its alibi_slopes take dropout)"
            )
        return None
    if device != "cpu":
        return (
            f"alibi-lm's fused paths are flex_attention on {', '.join(fused_devices)} and blocked sdpa on the CPU; "
            f"on {device} the bias is a mask"
        )
    if cached_tokens(layout):
        return (
            "the attention_mask pads these queries other than on the left after cached tokens; the blocked plan "
            "continues left-padded batches (tokenizer.padding_side='left', as generate expects)"
        )
    return f"no blocked form serves {layout.query_length} queries over {layout.key_length} keys here"
