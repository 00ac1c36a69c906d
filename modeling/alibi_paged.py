# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""The ALiBi bias for transformers' continuous batching (`generate_batch`, `init_continuous_batching`).

Continuous batching runs every request of a step in one flattened row: the queries of all requests side by side, and
the keys each request reads from the paged cache, request after request. It hands the model the request boundaries
(`cu_seq_lens_q`, `cu_seq_lens_k`), each query's position (`position_ids`) and, for sdpa, a block-diagonal causal mask
`[1, 1, Q, K]` of 0 and the dtype's minimum (`continuous_batching.utils.build_attention_mask`, transformers 5.25).
ALiBi needs one more thing, each key's position: a request's keys are its last tokens up to and including its last
query (the paged cache reads them in order), so the key in slot `k` of request `r` sits
`cu_seq_lens_k[r + 1] - 1 - k` places before that query. From these, `paged_alibi_mask` adds the per-head bias to
the given mask, reading no value on the host (CUDA graphs capture it).
That mask is `[1, H, Q, K]`: H times the one the manager sizes its cache for, and every query pays for every key of
the step. Where the blocked plan is the default (the CPU, `blocked_by_default`), and wherever that mask would be large
(`by_request`), a step runs request by request instead (`PagedRequests`): each request's queries on its own keys, with
the mask `generate` builds for a prompt continued after its cache (the key-only bias, blocked heads, the small
decoding mask; flash's `is_causal` for a fresh prompt on a GPU), so a step costs what its requests cost alone.
It travels with checkpoints as Hub remote code beside `modeling_alibi.py`, so it imports only torch and transformers.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.generation import ContinuousBatchingConfig

from .alibi_blocked import blocked_by_default
from .alibi_layout import AttentionLayout
from .alibi_masks import AlibiMask, ScoreBias
from .configuration_alibi import RING_MARK


def is_paged_cache(cache: object) -> bool:
    """Is `cache` continuous batching's paged cache? (Checked by name: importing it pulls in the whole manager.)"""
    return type(cache).__name__ == "PagedAttentionCache"


def paged_key_positions(
    query_positions: torch.Tensor, cu_seq_lens_q: torch.Tensor, cu_seq_lens_k: torch.Tensor, key_length: int
) -> torch.Tensor:
    """`[K]` position of each key slot of a flattened continuous batch.

    Args:
        query_positions: `[Q]` long, each query's position within its request.
        cu_seq_lens_q: `[R + 1]` query boundaries of the R requests (trailing repeats: padding requests).
        cu_seq_lens_k: `[R + 1]` key boundaries.
        key_length: K, the key slots (past the last boundary: padding, hidden by the given mask).
    """
    ends_q, ends_k = cu_seq_lens_q[1:].long(), cu_seq_lens_k[1:].long()
    slots = torch.arange(key_length, device=query_positions.device)
    request = torch.searchsorted(ends_k, slots, right=True).clamp(max=ends_k.numel() - 1)  # [K]
    last_query = query_positions[(ends_q - 1).clamp(0, query_positions.numel() - 1)]  # [R]
    return last_query[request] - (ends_k[request] - 1 - slots)


def paged_alibi_mask(
    mask: torch.Tensor,
    position_ids: torch.Tensor,
    cu_seq_lens_q: torch.Tensor,
    cu_seq_lens_k: torch.Tensor,
    bias: ScoreBias | None,
    heads: tuple[int, int],
    windows: torch.Tensor | None,
) -> torch.Tensor:
    """The additive mask `[1, H, Q, K]` for one step of continuous batching: `mask`'s hidden pairs stay hidden, the
    visible ones get the bias of their distance, and keys beyond a head's `windows[h]` are hidden (windowed ALiBi).

    Args:
        mask: `[1, 1, Q, K]` continuous batching's mask (0 where visible), in the model's dtype.
        position_ids: `[1, Q]` each query's position within its request.
        cu_seq_lens_q, cu_seq_lens_k: `[R + 1]` the requests' query and key boundaries.
        bias: the position encoding's `score_bias` (a function of head and distance), or None.
        heads: `(first, count)`, the heads this process computes.
        windows: `[H]` how far back each head looks, or None.
    """
    query_positions = position_ids[0].long()
    key_positions = paged_key_positions(query_positions, cu_seq_lens_q, cu_seq_lens_k, mask.shape[-1])
    distance = query_positions[:, None] - key_positions[None, :]  # [Q, K]
    first, count = heads
    head = torch.arange(first, first + count, device=mask.device)[:, None, None]  # [H, 1, 1]
    visible = (mask[0] == 0) & (distance >= 0)  # [1, Q, K]
    if windows is not None:
        visible = visible & (distance <= windows[head])
    hidden = torch.finfo(mask.dtype).min
    if bias is None:
        return torch.where(visible, 0.0, hidden).to(mask.dtype)[None]
    return torch.where(visible, bias(head, distance.clamp(min=0)).to(mask.dtype), hidden)[None]


# Past this size the one mask of a step gives way to running it request by request, also off the CPU: the manager
# sizes its cache for a `[1, 1, Q, K]` mask, and H times that can leave a full cache without the memory to run.
ONE_MASK_BYTES = 256 * 2**20


def by_request(mask: torch.Tensor, heads: int) -> bool:
    """Run a step request by request? Where the blocked plan is the default (the CPU), and elsewhere when the one mask
    would pass ONE_MASK_BYTES; never while compiling (the manager's `default_compile_level`, compile configs) or
    capturing a CUDA graph: it reads the boundaries on the host, and the one mask is a graph's plain tensor work."""
    if torch.compiler.is_compiling():
        return False
    if blocked_by_default(mask.device, mask.dtype):
        return True
    if mask.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return heads * mask.shape[-2] * mask.shape[-1] * mask.element_size() > ONE_MASK_BYTES


@dataclass
class PagedRequests:
    """A continuous-batching step run request by request: each request's `(q0, q1, k0, k1)` slots in the flattened
    row, and its own mask, for one query row `[1, q1 - q0]` after `k1 - k0 - (q1 - q0)` cached tokens."""

    spans: list[tuple[int, int, int, int]]
    masks: list[AlibiMask]


def request_spans(
    position_ids: torch.Tensor, cu_seq_lens_q: torch.Tensor, cu_seq_lens_k: torch.Tensor
) -> list[tuple[int, int, int, int]] | None:
    """`(q0, q1, k0, k1)` of each request with queries, read on the host. A request's keys are its last `k1 - k0`
    tokens, up to its last query: all of them, or the last ones of a sliding cache (`manager_on_sdpa`), which to
    ALiBi's bias (a function of distance) are the same layout. None where a request holds more keys than tokens."""
    cu_q, cu_k = cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist()
    positions = position_ids[0].tolist()
    spans = [(q0, q1, k0, k1) for q0, q1, k0, k1 in zip(cu_q, cu_q[1:], cu_k, cu_k[1:]) if q1 > q0]
    if any(q1 > len(positions) or not 0 <= (k1 - k0) - (q1 - q0) <= positions[q0] for q0, q1, k0, k1 in spans):
        return None
    return spans


def read_sliding_cache_by_index(cache) -> None:
    """On the CPU, have the sliding allocator of continuous batching's paged cache (`manager_on_sdpa`) merge a step's
    new keys into the ones it read with `index_copy_`, not `masked_scatter_`: the same rows in the same order, but
    `masked_scatter_` takes about 8x as long as the read itself there (transformers 5.25), a fifth of a whole
    generate_batch on the bench's model. Set once per cache, on that allocator only; other devices, compiled steps
    and allocators without the attributes read keep transformers' own update."""
    allocator = getattr(cache, "cache_allocators", {}).get("sliding_attention")
    if allocator is None or "update" in vars(allocator) or not hasattr(allocator, "_kv_token_views"):
        return
    update = allocator.update

    def update_by_index(key_states, value_states, layer_idx, read_index, write_index):
        if key_states.device.type != "cpu" or torch.compiler.is_compiling() or read_index.numel() == 0:
            return update(key_states, value_states, layer_idx, read_index, write_index)
        k_cache, v_cache = allocator._kv_token_views[layer_idx]
        new = (read_index == allocator.sentinel_index).nonzero().squeeze(1)  # the new tokens' slots, in order
        # As masked_scatter_, the first rows of the step's keys (the rest: padding of a static-shaped step).
        keys = k_cache.index_select(0, read_index).index_copy_(0, new, key_states[: new.numel()])
        values = v_cache.index_select(0, read_index).index_copy_(0, new, value_states[: new.numel()])
        k_cache.index_copy_(0, write_index, key_states)  # after the read: a new token may take an old one's slot
        v_cache.index_copy_(0, write_index, value_states)
        return keys, values

    allocator.update = update_by_index


def one_layer_type(value):
    """`value`, or the one entry of a dict keyed by layer type: every layer of an alibi-lm model is of one type
    (full attention, or sliding while the manager forgets old keys, `manager_on_sdpa`)."""
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError(f"alibi-lm layers are all of one attention type; continuous batching gave {sorted(value)}.")
    return next(iter(value.values()))


def continuous_batch_mask(
    encoding,
    heads: tuple[int, int],
    attention_mask: torch.Tensor | dict | None,
    position_ids: torch.Tensor,
    kwargs: dict,
    build: Callable[[AttentionLayout], AlibiMask],
) -> torch.Tensor | PagedRequests:
    """The mask for what continuous batching hands the model's forward: its sdpa mask (a tensor, or one per layer
    type), `position_ids` `[1, Q]` and, in `kwargs`, `cu_seq_lens_q` and `cu_seq_lens_k` (one per layer type).
    `PagedRequests` where `by_request` says so and every request's keys start at its first token, else
    `paged_alibi_mask`.

    Args:
        encoding: the model's position encoding (`score_bias` and `windows` of every head).
        heads: `(first, count)`, the heads this process computes.
        build: the model's mask for an `AttentionLayout` (`AlibiModel.build_attention_mask`).
    """
    attention_mask = one_layer_type(attention_mask)
    if attention_mask is None:
        raise ValueError(
            "Continuous batching must give alibi-lm models its sdpa mask (attn_implementation='sdpa'), to which the "
            "ALiBi bias is added: start it with model.generate_batch or model.init_continuous_batching."
        )
    cu_seq_lens_k = one_layer_type(kwargs["cu_seq_lens_k"])
    device = attention_mask.device
    if by_request(attention_mask, heads[1]):
        spans = request_spans(position_ids, kwargs["cu_seq_lens_q"], cu_seq_lens_k)
        if spans is not None:
            masks = [
                build(AttentionLayout(1, q1 - q0, k1 - k0, k1 - k0 - (q1 - q0), device)) for q0, q1, k0, k1 in spans
            ]
            return PagedRequests(spans, masks)
    return paged_alibi_mask(
        attention_mask,
        position_ids,
        kwargs["cu_seq_lens_q"],
        cu_seq_lens_k,
        encoding.score_bias(attention_mask.shape[-1], device),
        heads,
        encoding.windows(device),
    )


def ring_pays(kept: int | None, windowed: bool, workload_hints, max_length: int | None) -> bool:
    """Does a ring of the last `kept + 1` keys per request beat transformers' full pages? The ring bounds a request's
    memory, but transformers' sliding allocator shares no blocks, so requests lose their shared prefix's cache (16
    requests after a 768-token prefix took 2.2x as long: `recipes/experiments/continuous_batching.py
    --shared-prefix 768`, AMD EPYC). With the requests' sizes known (`generate_batch`'s `workload_hints`; new tokens
    up to `max_length` where they give none): the ring where one may outgrow `kept + 1` tokens. Unknown (a manager
    started by hand): the ring for windowed models, whose windows bound their memory as Mistral's sliding window does
    in transformers, and full pages for dense ALiBi, whose CPU reach (10,240 tokens at a slope of 1/256) few pass."""
    if kept is None:
        return False
    prompt = getattr(workload_hints, "max_prompt_length", 0)
    if not prompt:
        return windowed
    return prompt + (getattr(workload_hints, "max_generated_length", 0) or max_length or 0) > kept + 1


def manager_on_sdpa(model, start: Callable, generation_config, continuous_batching_config, workload_hints):
    """`start(generation_config, continuous_batching_config, workload_hints)` (transformers'
    `init_continuous_batching`) with `model` on sdpa, and back on its own attention when the manager stops.

    The manager takes only sdpa, its own eager or a flash kernel, and none of their paged forms but sdpa's mask takes
    a bias: `auto_switch_to_flash` is turned off, on a copy of the config given.
    Where no head reads keys older than `keys_to_keep` (windowed ALiBi; dense ALiBi on the CPU past e^-40) and a
    request may outgrow them (`forgets`), the config carries `sliding_window = keys_to_keep + 1` while the manager
    runs: its paged cache then holds at most that many tokens per request (transformers' sliding allocator, a ring
    of pages), and a request may run longer than the whole cache. The manager reads the config at every step; the
    attribute goes when it stops, and is never saved meanwhile (`RING_MARK`).
    """
    if continuous_batching_config is None:  # transformers' deprecated place for it, else the defaults
        given = getattr(generation_config or model.generation_config, "continuous_batching_config", None)
        continuous_batching_config = given if isinstance(given, ContinuousBatchingConfig) else None
    continuous_batching_config = copy.deepcopy(continuous_batching_config or ContinuousBatchingConfig())
    continuous_batching_config.auto_switch_to_flash = False
    config, original = model.config, model.config._attn_implementation
    if original != "sdpa":
        model.set_attn_implementation("sdpa")
    kept = model.base_model.keys_to_keep()
    windowed = model.base_model.widest_window() is not None
    max_length = (generation_config or model.generation_config).max_length
    forgets = getattr(config, "sliding_window", None) is None and ring_pays(kept, windowed, workload_hints, max_length)
    if forgets:
        config.sliding_window = kept + 1
        setattr(config, RING_MARK, True)

    def restore() -> None:
        for name in ("sliding_window", RING_MARK) if forgets else ():
            if hasattr(config, name):
                delattr(config, name)
        if original != "sdpa":
            model.set_attn_implementation(original)

    try:
        manager = start(generation_config, continuous_batching_config, workload_hints)
    except BaseException:
        restore()
        raise
    stop = manager.stop

    def stop_and_restore(*args, **kwargs):
        stop(*args, **kwargs)
        thread = getattr(manager, "_generation_thread", None)  # still running after a stop(block=False)
        if thread is None or not thread.is_alive():
            restore()
        else:  # its last steps still read the config
            threading.Thread(target=lambda: (thread.join(), restore()), daemon=True).start()

    manager.stop = stop_and_restore
    return manager
