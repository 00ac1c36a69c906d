# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""ALiBi causal language model for Hugging Face Transformers: from the config to the layers, in Llama's shape.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

Head h adds `-m_h * (i - j)` to the score of query position i on key position j. The bias lives in the attention
mask, built once per forward and shared by every layer (`alibi_masks.create_alibi_mask`, as Llama calls
`masking_utils.create_causal_mask`); the attention kernels that take each form of it are in `alibi_attention` (as
Llama's are in `integrations/`). This file holds what Llama's does: MLP, attention, decoder layer, the pretrained base
with its attention choice, the model and the LM head; the position encodings (ALiBi and the paper's baselines) are
in `alibi_encodings`.

Every file of this folder travels with checkpoints as Hub remote code: transformers copies the relative imports with
this file, so they import only torch, transformers and each other (Triton only if present; `configuration_alibi`
first: it checks the transformers version).
"""

# isort: off
from .configuration_alibi import AlibiConfig

# isort: on

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention.flex_attention import BlockMask
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import ContinuousBatchingConfig, GenerationConfig, GenerationMixin
from transformers.modeling_layers import (
    GenericForQuestionAnswering,
    GenericForSequenceClassification,
    GenericForTokenClassification,
    GradientCheckpointingLayer,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel, slice_logits_to_keep
from transformers.models.llama.modeling_llama import (  # the same math: softmax(QK^T * scale + mask) V, RoPE, GQA
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from .alibi_attention import ALIBI_KERNELS, ALL_ATTENTION_FUNCTIONS, UNSUPPORTED_ATTENTION
from .alibi_blocked import ALIBI_UNDERFLOW_CUTOFF, PatternCache, alibi_window_values, blocked_by_default
from .alibi_encodings import POSITION_ENCODING_CLASSES, AlibiPositionalBias
from .alibi_inputs import validate_inputs
from .alibi_layout import (
    AttentionLayout,
    GenerationForgets,
    build_layout,
    cached_positions,
    custom_mask_layout,
    forget_old_keys,
    packed_document_ids,
    window_layer,
)
from .alibi_masks import ALIBI_FUSED, AlibiMask, Fused, create_alibi_mask, get_alibi_slopes
from .alibi_paged import continuous_batch_mask, is_paged_cache, manager_on_sdpa, read_sliding_cache_by_index

# --- 2. MLP --------------------------------------------------------------------------------


class AlibiMLP(nn.Module):
    """The feed-forward block: up projection, activation, down projection."""

    def __init__(self, config: AlibiConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


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
        if cache is not None:  # `kwargs`: continuous batching's paged cache reads its indices there (and edits them)
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        # Our kernels on top of transformers' registry (alibi_attention.ALL_ATTENTION_FUNCTIONS, a local instance).
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
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


def refuse_bias_free_attention(name: str | None) -> None:
    """A clear error for an attention implementation transformers knows but whose kernel adds no ALiBi bias."""
    if name in UNSUPPORTED_ATTENTION:
        raise ValueError(
            f"attn_implementation={name!r} would run transformers' generic kernel, which adds no ALiBi bias; use one "
            f"of {sorted(ALIBI_KERNELS)}."
        )


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

    def __init__(self, config: AlibiConfig, *inputs, **kwargs):
        refuse_bias_free_attention(config._attn_implementation)  # before transformers looks for the kernel
        super().__init__(config, *inputs, **kwargs)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """`ALIBI_FUSED` when none is requested; a requested implementation is the one that runs."""
        if requested_attention is None:
            return ALIBI_FUSED
        refuse_bias_free_attention(requested_attention)
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs) -> None:
        """transformers' method, refusing first the kernels that would drop the bias."""
        names = attn_implementation.values() if isinstance(attn_implementation, dict) else [attn_implementation]
        for name in names:
            refuse_bias_free_attention(name)
        super().set_attn_implementation(attn_implementation, **kwargs)

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
        self.position_encoding = POSITION_ENCODING_CLASSES[config.position_encoding](config)
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(AlibiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.layer_norm_bias)
        self.gradient_checkpointing = False
        self._block_mask_cache: dict[tuple, BlockMask] = {}
        self._pattern_cache = PatternCache()
        self._keys_kept: dict[tuple, int | None] = {}  # `keys_to_keep` by what it reads (it runs every forward)
        self.post_init()

    def build_attention_mask(self, layout: AttentionLayout, dtype: torch.dtype) -> AlibiMask:
        """The one mask every layer shares, in the form the attention backend wants (`create_alibi_mask`)."""
        dropout = self.config.attention_dropout if self.training else 0.0
        fused = Fused(self.fused_default_devices, dropout)
        return create_alibi_mask(
            self.config,
            layout,
            self.position_encoding,
            dtype,
            self.local_heads(),
            fused,
            self._block_mask_cache,
            # a compiled forward never takes the blocked path, nor lets dynamo guard on what the cache holds
            None if torch.compiler.is_compiling() else self._pattern_cache.for_forward(),
        )

    def widest_window(self) -> int | None:
        """With windowed ALiBi, how far back the widest head sees (`floor(T / m_h)` tokens); None when dense."""
        windows = self.position_encoding.windows(torch.device("cpu"))
        return int(windows.max()) if windows is not None else None

    def keys_to_keep(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> int | None:
        """How many past keys some head can still read (the widest head's reach), or None for every key.

        With windowed ALiBi, each head's window. Where the CPU default runs (sdpa or the default kernel on the CPU in
        fp32, bf16 or fp16: `blocked_by_default`), also dense ALiBi's: that path drops every key whose bias has
        silenced it (past e^-40, `ALIBI_UNDERFLOW_CUTOFF`, at most 4.2e-18 of the weight of the query's own token),
        so no head there reads a key older than `floor(40 / m)` for its slope m: 10,240 tokens for the mildest of
        ALiBi's default slopes (1/256). `device` and `dtype` default to the embeddings'.
        """
        if device is None or dtype is None:
            weight = self.embed_tokens.weight
            device, dtype = device or weight.device, dtype or weight.dtype
        implementation = self.config._attn_implementation
        key = (self.config.alibi_window_cutoff, implementation, device, dtype)
        if key not in self._keys_kept:
            encoding = self.position_encoding
            reach, slopes = encoding.window_values(), encoding.slope_values()
            if slopes is not None and implementation in ("sdpa", ALIBI_FUSED) and blocked_by_default(device, dtype):
                silenced = alibi_window_values(slopes, ALIBI_UNDERFLOW_CUTOFF)
                reach = silenced if reach is None else [min(w, s) for w, s in zip(reach, silenced)]
            self._keys_kept[key] = max(reach) if reach is not None else None
        return self._keys_kept[key]

    def forget_what_no_head_sees(
        self, cache: Cache | None, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Keep a `DynamicCache` to the keys some head can still read (`keys_to_keep`), by `forget_old_keys`: older
        ones are never read again. Positions and padding are still counted over every token (`build_layout`'s
        `key_offset`), so the logits and greedy tokens are those of a full cache."""
        forget_old_keys(cache, lambda: self.keys_to_keep(device, dtype))

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
        if is_paged_cache(cache):
            return self.forward_continuous_batch(input_ids, inputs_embeds, attention_mask, position_ids, cache, kwargs)
        inputs = input_ids if input_ids is not None else inputs_embeds
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        empty_cache = cache is None  # no cached tokens: known without reading a value, also while compiling
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self.forget_what_no_head_sees(cache, inputs.device)  # the dtype read only where it is needed
        if not compiling:  # the checks read values, which would break a compiled graph
            validate_inputs(self.config.vocab_size, inputs, attention_mask, document_ids, cache)
        batch_size, query_length = inputs.shape[:2]
        attention_mask, past_length = cached_positions(cache, attention_mask, query_length)
        # A sliding cache (`forget_what_no_head_sees`) holds only the last keys: `key_offset` dropped.
        key_length, key_offset = cache.get_mask_sizes(query_length, 0) if cache is not None else (query_length, 0)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        device = inputs_embeds.device
        if attention_mask is not None and attention_mask.dim() == 4:
            if key_offset:  # a sliding cache: the columns (and positions) of the keys it still holds
                attention_mask = attention_mask[..., key_offset:]
                if position_ids is not None and position_ids.shape[-1] == key_offset + key_length:
                    position_ids = position_ids[..., key_offset:]
            past = past_length - key_offset
            layout = custom_mask_layout(attention_mask, position_ids, query_length, key_length, past, device)
        else:
            # transformers' padding-free packing (DataCollatorWithFlattening, TRL packing=True). Compiled, the
            # documents are found inside the graph, as transformers' `find_packed_sequence_indices` does: no check
            # that reads values, so a compiled packed row gets every document's ids (one document: all zeros).
            fresh = empty_cache if compiling else past_length == 0
            if fresh and attention_mask is None and document_ids is None:
                cu_seq_lens = kwargs.get("cu_seq_lens_k")
                document_ids = packed_document_ids(position_ids, cu_seq_lens, batch_size, query_length)
            # Compiled, only a past length known to Python (a sliding static cache's: generate gives it a mask of
            # the window) can pad: a static cache's is a tensor, and its mask covers every slot.
            if (not compiling or isinstance(past_length, int)) and past_length > 0 and attention_mask is not None:
                missing = max(0, past_length + query_length - attention_mask.shape[1])
                attention_mask = F.pad(attention_mask, (missing, 0), value=1)  # a mask of the new tokens only
            layout = build_layout(
                attention_mask, document_ids, batch_size, query_length, key_length, past_length, device, key_offset
            )
        mask = self.build_attention_mask(layout, inputs_embeds.dtype)
        hidden_states = self.decode(inputs_embeds, mask, layout.query_positions, cache, kwargs)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)

    def decode(
        self, inputs_embeds: torch.Tensor, mask: AlibiMask, positions: torch.Tensor, cache: Cache | None, kwargs: dict
    ) -> torch.Tensor:
        """Embeddings `[B, Q, hidden]` through the position encoding, every layer and the final norm; `positions`
        `[B or 1, Q]` are the queries' (sinusoidal and rotary baselines)."""
        hidden_states = self.position_encoding.embed(inputs_embeds, positions, self.embed_layer_norm)
        position_embeddings = self.position_encoding.rotary(positions, hidden_states.dtype)
        hidden_states = self.embed_dropout(hidden_states)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, attention_mask=mask, position_embeddings=position_embeddings, cache=cache, **kwargs
            )
        return self.norm(hidden_states)

    def forward_continuous_batch(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | dict | None,
        position_ids: torch.Tensor,
        cache: Cache,
        kwargs: dict,
    ) -> BaseModelOutputWithPast:
        """One step of transformers' continuous batching: every request's new tokens in one row `[1, Q]`, their keys
        read from the paged cache, and the bias built per request from its boundaries (`alibi_paged`)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        read_sliding_cache_by_index(cache)
        build = partial(self.build_attention_mask, dtype=inputs_embeds.dtype)
        mask = continuous_batch_mask(
            self.position_encoding, self.local_heads(), attention_mask, position_ids, kwargs, build
        )
        hidden_states = self.decode(inputs_embeds, mask, position_ids.long(), cache, kwargs)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states)


class AlibiForCausalLM(AlibiPreTrainedModel, GenerationForgets, GenerationMixin):
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

    def init_continuous_batching(
        self,
        generation_config: GenerationConfig | None = None,
        continuous_batching_config: ContinuousBatchingConfig | None = None,
        workload_hints=None,
    ):
        """transformers' continuous batching manager (also behind `generate_batch`), with the model on sdpa while it
        runs (`alibi_paged.manager_on_sdpa`) and the ALiBi bias per request (`alibi_paged.continuous_batch_mask`)."""
        start = super().init_continuous_batching
        return manager_on_sdpa(self, start, generation_config, continuous_batching_config, workload_hints)

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
        if window_layer(cache) is not None:
            return window_layer(cache).window_mask(attention_mask, query_length)
        return F.pad(attention_mask, (0, cache.get_mask_sizes(query_length, 0)[0] - attention_mask.shape[1]), value=0)


# transformers' generic heads, as Llama's, MPT's and Bloom's: each builds its decoder with `AutoModel.from_config`, which
# remote code cannot resolve (its AutoModel mapping has no ALiBi), so each builds `AlibiModel` itself; the rest of
# each `__init__` is theirs (transformers 5.25, `modeling_layers.py`).


class AlibiForSequenceClassification(GenericForSequenceClassification, AlibiPreTrainedModel):
    """The ALiBi decoder with a linear head on each row's last token (the last one not `config.pad_token_id`)."""

    _auto_class = "AutoModelForSequenceClassification"

    def __init__(self, config: AlibiConfig):
        AlibiPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = AlibiModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()


class AlibiForTokenClassification(GenericForTokenClassification, AlibiPreTrainedModel):
    """The ALiBi decoder with a linear head on every token, after dropout (`classifier_dropout` if the config has it,
    else `hidden_dropout`)."""

    _auto_class = "AutoModelForTokenClassification"

    def __init__(self, config: AlibiConfig):
        AlibiPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = AlibiModel(config)
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout if dropout is None else dropout)
        self.score = nn.Linear(
            config.hidden_size, config.num_labels, bias=getattr(config, "token_classification_bias", True)
        )
        self.post_init()


class AlibiForQuestionAnswering(GenericForQuestionAnswering, AlibiPreTrainedModel):
    """The ALiBi decoder with span start and end logits on every token (extractive question answering)."""

    _auto_class = "AutoModelForQuestionAnswering"

    def __init__(self, config: AlibiConfig):
        AlibiPreTrainedModel.__init__(self, config)
        self.model = AlibiModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()


__all__ = [
    "AlibiForCausalLM",
    "AlibiForQuestionAnswering",
    "AlibiForSequenceClassification",
    "AlibiForTokenClassification",
    "AlibiModel",
    "AlibiPreTrainedModel",
    "get_alibi_slopes",
]
