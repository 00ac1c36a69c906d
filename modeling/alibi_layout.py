# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""Where each query and key slot sits in a forward (`AttentionLayout`): its positions, padding, packed documents and
cached tokens, read once per forward from the inputs (`build_layout`, `custom_mask_layout` for a prepared 4-D mask,
`packed_document_ids` for padding-free packing), and the one visibility rule every mask form follows; and the cache
that forgets the keys no head reads (`forget_old_keys`), whose dropped tokens a layout counts (`key_offset`), or, for
compiled static decoding, whose positions are relative (`StaticWindowLayer`).

`alibi_masks.create_alibi_mask` turns a layout into each backend's mask. Hub remote code like the rest of the model;
imports only torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

import torch
from torch.nn import functional as F
from transformers.cache_utils import (
    Cache,
    DynamicCache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    StaticCache,
    StaticLayer,
)
from transformers.generation import GenerationMixin
from transformers.generation.configuration_utils import ALL_STATIC_CACHE_IMPLEMENTATIONS
from transformers.masking_utils import find_packed_sequence_indices


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
        document_ids: `[B, K]` long, the packed document of each slot (numbered by runs of equal given ids, from 1;
            -1 for slots added past them); None for one per row.
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


def build_layout(
    attention_mask: torch.Tensor | None,
    document_ids: torch.Tensor | None,
    batch_size: int,
    query_length: int,
    key_length: int,
    past_length: int | torch.Tensor,
    device: torch.device,
    key_offset: int = 0,
) -> AttentionLayout:
    """The `AttentionLayout` of a forward pass.

    Args:
        attention_mask: `[B, <= key_offset + K]` 0/1 padding mask over cached + new tokens, or None.
        document_ids: `[B, <= key_offset + K]` packed-document ids over cached + new tokens, or None.
        key_offset: tokens a sliding cache has dropped (windowed ALiBi): key slot k holds token `key_offset + k`.

    Positions count real tokens inside each document (a cumulative sum), so a left-padded row, or a
    document packed after others, gets the positions, and so the ALiBi bias, it would have alone.
    Slots past the given masks (a static cache's empty tail) are padding of document -1. With a `key_offset`,
    positions are counted over every token and only the kept slots' are kept, so the bias is the same.
    """
    valid = None
    full = key_offset + key_length
    if attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
        valid = attention_mask.to(device=device, dtype=torch.bool)
        valid = F.pad(valid, (0, full - valid.shape[1]), value=False)
    if document_ids is not None:
        document_ids = F.pad(document_ids.to(device), (0, full - document_ids.shape[1]), value=-1)
    if valid is None and document_ids is None:
        return AttentionLayout(batch_size, query_length, key_length, past_length - key_offset, device)

    real = valid.long() if valid is not None else torch.ones(batch_size, full, dtype=torch.long, device=device)
    count = real.cumsum(-1)  # [B, K] real tokens up to and including each slot
    if document_ids is not None:
        # Restart the count at each document: subtract the tokens before the latest document start.
        # Against the left neighbour by `roll`, not by slices of L - 1 (torch.export would guard on L - 1 != 1).
        starts = (document_ids != document_ids.roll(1, -1)) | (
            torch.arange(document_ids.shape[1], device=document_ids.device) == 0
        )
        count = count - torch.where(starts, count - real, 0).cummax(-1).values
        # A document is a run of equal ids: an id that comes back after another is a new document, as its positions
        # (restarted above) and flash-attn's varlen sequences already say.
        document_ids = starts.cumsum(-1)
    positions = (count - 1).clamp(min=0)[:, key_offset:]
    valid = valid[:, key_offset:] if valid is not None else None
    document_ids = document_ids[:, key_offset:] if document_ids is not None else None
    return AttentionLayout(
        batch_size, query_length, key_length, past_length - key_offset, device, positions, valid, document_ids
    )


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


def forget_old_keys(cache: Cache | None, keys_to_keep: Callable[[], int | None]) -> None:
    """Keep a `DynamicCache` to the last `keys_to_keep()` keys (None: all of them), at the start of a forward.

    Once its keys outnumber them, its layers become transformers' sliding layers (`sliding_layer`), recording past
    states so that assisted decoding can still roll back rejected tokens; at the start of each later forward they are
    cut back to the keys kept (`crop(0)`). Shorter generations keep transformers' own layers. A cache of another
    class (static, a subclass) or with layers of transformers' own choosing is left as it is.
    """
    if type(cache) is not DynamicCache or not cache.layers:
        return
    if all(isinstance(layer, DynamicSlidingWindowLayer) and layer.record_past for layer in cache.layers):
        for layer in cache.layers:
            if layer.get_seq_length() >= layer.sliding_window:
                layer.crop(0)  # back to the last sliding_window - 1 keys
        return
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return
    kept = keys_to_keep()
    if kept is None or kept < 1 or cache.get_seq_length() <= kept:  # a window of 0 keys keeps them all
        return
    cache.layers = [sliding_layer(layer, kept) for layer in cache.layers]
    cache.layer_class_to_replicate = None
    cache.activate_past_recording()


def sliding_layer(layer: DynamicLayer, kept: int) -> DynamicSlidingWindowLayer:
    """`layer`'s last `kept` keys as transformers' sliding layer of window `kept + 1`: the state it would hold had it
    been one from the start (recording past states, after its `crop(0)`)."""
    sliding = DynamicSlidingWindowLayer(sliding_window=kept + 1)
    sliding.lazy_initialization(layer.keys, layer.values)
    sliding.keys, sliding.values = layer.keys[:, :, -kept:], layer.values[:, :, -kept:]
    sliding.cumulative_length = layer.get_seq_length()
    return sliding


class StaticWindowLayer(StaticLayer):
    """A static cache layer of `window` slots that forgets, for a compiled forward: it never counts in a Python int.

    transformers' `StaticSlidingWindowLayer` counts its tokens in a Python int that the forward updates and reads
    (its mask offset): a compiled forward gets a new graph at every step (`dynamic=False`, or fullgraph failing at the
    limit), or takes the int as an input, and CUDA graphs (generate's default `mode="reduce-overhead"`) record again
    for each of its values. This layer counts in tensors and holds at most `window` tokens. A single new token
    (decoding) is written after the tokens held, once the slots shift left by one if all are taken (the oldest, which
    no head reads, drops out), with the same tensor operations at every step: one graph, no int in it.

    Its positions are relative: the next token is at `next_position()`, the tokens held sit just before it, as if
    nothing came earlier. For ALiBi, whose scores depend only on distances, that is exact; the 2-D padding mask gives
    the columns of the tokens held (`window_mask`). `get_seq_length()` counts every token seen, as transformers'
    layers do. Several tokens at once (a prompt) read the count as a Python number, so they run uncompiled.
    """

    is_croppable = False

    def __init__(self, max_cache_len: int, **kwargs):
        super().__init__(max_cache_len=max_cache_len)
        self.seen = torch.tensor(0, dtype=torch.long)  # every token, for generate; `cumulative_length`: those held

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.seen = self.seen.to(self.device)
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self.seen)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = key_states.shape[-2]
        if length == 1:
            full = self.cumulative_length >= self.max_cache_len
            if torch.compiler.is_compiling():
                # slot j takes slot j + 1's token when full: a shift left by one, or by none, with no branch
                source = torch.arange(self.max_cache_len, device=self.device) + full
                source = source.clamp(max=self.max_cache_len - 1)
                self.keys.copy_(self.keys.index_select(2, source))
                self.values.copy_(self.values.index_select(2, source))
            elif bool(full):  # uncompiled, a branch and a roll: with the gather, a step took 1.4x as long (CPU)
                self.keys.copy_(self.keys.roll(-1, dims=2))
                self.values.copy_(self.values.roll(-1, dims=2))
            self.cumulative_length.sub_(full.to(self.cumulative_length.dtype))
            self.keys.index_copy_(2, self.cumulative_length.view(1), key_states)
            self.values.index_copy_(2, self.cumulative_length.view(1), value_states)
            self.cumulative_length.add_(1)
            self.seen.add_(1)
            return self.keys, self.values
        if torch.compiler.is_compiling():
            raise NotImplementedError(
                f"A compiled forward of {length} tokens into a StaticWindowLayer: several tokens at once read how "
                "many it holds, which a graph cannot; run them uncompiled (generate compiles only single-token steps "
                "with this cache)."
            )
        past, held = self.past_length(), int(self.cumulative_length)
        self.seen.add_(length)
        if past + length <= self.max_cache_len:
            return super().update(key_states, value_states)
        keys = torch.cat((self.keys[:, :, held - past : held], key_states), dim=-2)
        values = torch.cat((self.values[:, :, held - past : held], value_states), dim=-2)
        self.keys.copy_(keys[:, :, -self.max_cache_len :])
        self.values.copy_(values[:, :, -self.max_cache_len :])
        self.cumulative_length.fill_(self.max_cache_len)
        return keys, values

    def past_length(self) -> int:
        """How many tokens the next forward sees before its own, as a Python number (uncompiled)."""
        return min(int(self.cumulative_length), self.max_cache_len - 1) if self.is_initialized else 0

    def next_position(self) -> torch.Tensor | int:
        """The next token's relative position, a tensor: the tokens held, less the oldest when all slots are taken."""
        if not self.is_initialized:
            return 0
        return self.cumulative_length - (self.cumulative_length >= self.max_cache_len).to(self.cumulative_length.dtype)

    def get_seq_length(self) -> torch.Tensor | int:
        return self.seen if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if query_length == 1 or torch.compiler.is_compiling():
            return self.max_cache_len, 0
        return max(self.max_cache_len, self.past_length() + query_length), 0

    def window_mask(self, attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
        """The columns of a 2-D padding mask over every token (generate's) that this forward's keys hold, padded to
        its key length: the last `past + query_length`. Read from the mask's length, not the count (no sync). Given
        the window's mask, it gives a copy of it."""
        past = min(attention_mask.shape[1] - query_length, self.max_cache_len - 1)
        columns = attention_mask[:, attention_mask.shape[1] - query_length - past :]
        # a new tensor, not a view of the growing mask: a compiled forward guards on its strides
        mask = attention_mask.new_zeros((attention_mask.shape[0], self.get_mask_sizes(query_length)[0]))
        mask[:, : columns.shape[1]] = columns
        return mask

    def reset(self) -> None:
        super().reset()
        self.seen.zero_()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("A StaticWindowLayer has forgotten its oldest tokens: it cannot be cropped.")


def window_layer(cache: Cache | None) -> StaticWindowLayer | None:
    """The cache's `StaticWindowLayer` (every layer is one, or none), whose positions are relative; or None."""
    layer = cache.layers[0] if cache is not None and cache.layers else None
    return layer if isinstance(layer, StaticWindowLayer) else None


def cached_positions(
    cache: Cache | None, attention_mask: torch.Tensor | dict | None, query_length: int
) -> tuple[torch.Tensor | dict | None, torch.Tensor | int]:
    """A forward's 2-D padding mask and the next token's position for `cache`: the tokens it has seen, or for a
    `StaticWindowLayer`, whose positions are relative (all ALiBi needs), the mask's columns of the tokens it holds."""
    window = window_layer(cache)
    if window is None:
        return attention_mask, cache.get_seq_length() if cache is not None else 0
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        attention_mask = window.window_mask(attention_mask, query_length)
    return attention_mask, window.next_position()


class GenerationForgets:
    """`generate`'s caches kept to what some head still reads: a mixin before GenerationMixin.

    At each step, outside the forward (a compiled forward cannot change the cache's layers), a `DynamicCache` is cut
    to those keys (`prepare_inputs_for_generation`, `AlibiModel.forget_what_no_head_sees`). For
    `cache_implementation="static"`, where no head reads a key older than `keys_to_keep` (windowed ALiBi; dense
    ALiBi on the CPU past e^-40) and the generation may run longer, the static cache holds `keys_to_keep + 1` tokens
    per layer instead of `max_length`. Uncompiled, in transformers' sliding layers (the config carries
    `sliding_window` only while the cache is built). Where generate compiles the forward (on accelerators, or with
    `compile_config._compile_all_devices`), in `StaticWindowLayer`s: transformers' give the forward their count as a
    Python int, a new graph or a new CUDA graph at every step. A compiled prompt in chunks keeps the whole cache.
    """

    _generate_compiles = False

    @wraps(GenerationMixin.prepare_inputs_for_generation, assigned=())  # generate reads its signature
    def prepare_inputs_for_generation(self, *args, **kwargs) -> dict:
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        self.model.forget_what_no_head_sees(inputs.get("cache", inputs.get("past_key_values")))
        return inputs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # Asked only where a static cache is built (transformers' rule switches tokenizers' parallelism off where it
        # compiles), by transformers' own rule (device, compile_config, quantizer, offloading), of a stand-in static
        # cache: uncompiled, transformers' sliding layers decode faster (1.1x on the CPU).
        self._generate_compiles = generation_config.cache_implementation in ALL_STATIC_CACHE_IMPLEMENTATIONS and (
            self._valid_auto_compile_criteria(
                {**model_kwargs, "cache": StaticCache(config=self.config, max_cache_len=1)}, generation_config
            )
        )
        try:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        finally:
            self._generate_compiles = False

    def _prepare_static_cache(self, cache_implementation, batch_size, max_cache_len, prefill_chunk_size, model_kwargs):
        config, kept = self.config, self.base_model.keys_to_keep()
        length = max(max_cache_len, getattr(self, "_previous_max_cache_length", -1))
        forgets = kept is not None and 0 < kept < length - 1 and getattr(config, "sliding_window", None) is None
        # Compiled: this file's layers, one graph for every step (a compiled prompt in chunks keeps the whole cache).
        windows = forgets and self._generate_compiles and "offloaded" not in cache_implementation
        windows = windows and prefill_chunk_size is None
        lend = forgets and not self._generate_compiles
        if lend:
            config.sliding_window = kept + 1
        try:
            cache = super()._prepare_static_cache(
                cache_implementation, batch_size, max_cache_len, prefill_chunk_size, model_kwargs
            )
        finally:
            if lend:
                del config.sliding_window
        if windows:
            cache.layers = [StaticWindowLayer(max_cache_len=kept + 1) for _ in cache.layers]
        return cache
