# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the ALiBi causal LM.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables
Input Length Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

This file travels with every checkpoint as Hub remote code: it imports only transformers. It is
written for transformers 5.24 (dataclass-style `PreTrainedConfig`, the `cache` forward argument)
and refuses older versions with a message that names the one it needs.
"""

import math
import re

import transformers
from transformers.utils import logging

MIN_TRANSFORMERS_VERSION = "5.24.0"
# Set beside a `sliding_window` that continuous batching lends the config while its manager runs (alibi_paged): a
# window of the run, not of the model, so no save writes it.
RING_MARK = "_continuous_batching_ring"


def release(version: str) -> tuple[int, ...]:
    """A version's major and minor release: (2, 13) for "2.13.0+cpu", (2, 10) for "2.10.0a0+git1234abc"."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def check_transformers_version(found: str = transformers.__version__) -> None:
    """Raise an `ImportError` naming `MIN_TRANSFORMERS_VERSION` when `found` is older."""
    if release(found) < release(MIN_TRANSFORMERS_VERSION):
        raise ImportError(
            f"This ALiBi model's code needs transformers>={MIN_TRANSFORMERS_VERSION}, but transformers {found} is "
            f"installed. Upgrade it with: pip install -U 'transformers>={MIN_TRANSFORMERS_VERSION}'"
        )


# Before the imports below: on an older transformers they fail with a bare ImportError.
check_transformers_version()

from transformers import PreTrainedConfig, TokenizersBackend  # noqa: E402

logger = logging.get_logger(__name__)

POSITION_ENCODINGS = ("alibi", "sinusoidal", "rotary", "t5", "none")
# The context clients may use by default, as a multiple of the training length: the longest length the project's
# own evaluation measures (`alibi-lm demo`, `alibi-lm eval`: 1x to 16x L), where ALiBi's perplexity stays flat.
CONTEXT_MULTIPLE = 16
# Written into a checkpoint's tokenizer_config.json (beside `"tokenizer_class": "TokenizersBackend"`, which transformers
# 5 loads as it is, no prompt): transformers 4, which has no TokenizersBackend, loads the tokenizer through this file
# and stops at its version check with the message the model gives, not "TokenizersBackend does not exist".
TOKENIZER_AUTO_MAP = {"AutoTokenizer": [None, "configuration_alibi.AlibiTokenizerFast"]}
AUTO_MAP = {
    "AutoConfig": "configuration_alibi.AlibiConfig",
    "AutoModel": "modeling_alibi.AlibiModel",
    "AutoModelForCausalLM": "modeling_alibi.AlibiForCausalLM",
    "AutoModelForSequenceClassification": "modeling_alibi.AlibiForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_alibi.AlibiForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_alibi.AlibiForQuestionAnswering",
}


def full_auto_map(existing: dict | None = None, replace: bool = False) -> dict:
    """`existing` with every Auto class named (transformers itself adds only the saved class). Its own entries win (a
    config loaded from the Hub keeps its repo-qualified names) unless `replace`: a folder being written gets ours."""
    existing = dict(existing or {})
    return {**existing, **AUTO_MAP} if replace else {**AUTO_MAP, **existing}


HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish")


class AlibiConfig(PreTrainedConfig):
    r"""Architecture of an ALiBi decoder-only LM (pre-norm, LayerNorm, GELU MLP by default).

    `train_length` is the sequence length the model was trained at (L): evaluation multiples, the model
    card and the demo read it. `max_position_embeddings` is the context clients may use, the field that
    `generate`, pipelines, lm-eval, TRL, the exporters and serving engines read as the model's limit. It
    defaults to `CONTEXT_MULTIPLE` (16) x `train_length`, the lengths this project measures ALiBi's
    perplexity to stay flat at, so none of them warns or truncates past the training length; set it to
    any other value. It is not a limit of the model itself: ALiBi has no position table and runs at any
    length (the sinusoidal baseline's table is sized to it).

    A `config.json` written before `train_length` existed held the training length in
    `max_position_embeddings`; `from_pretrained` reads it as `train_length`, derives the context from
    it, and says so in one line.

    `position_encoding` selects how the model sees order, so that the paper's baselines run on an
    otherwise identical model:

    - `"alibi"` (default): a per-head linear bias `-m_h * (i - j)` added to the attention scores.
    - `"sinusoidal"`: fixed sinusoidal embeddings added to the token embeddings, which are scaled
      by `sqrt(hidden_size)` first, as in Vaswani et al. and fairseq.
    - `"rotary"`: rotary embeddings on queries and keys (Su et al.), base `rope_theta`.
    - `"t5"`: a learned, bucketed relative bias per head shared by all layers (Raffel et al.).
    - `"none"`: no position information beyond the causal mask.

    `alibi_window_cutoff` (T, default None: dense) makes ALiBi windowed: head h ignores every key
    whose bias `-m_h * d` is below `-T`, i.e. it attends only to the `floor(T / m_h)` tokens before a
    query, and the kernels skip the rest (flex per-head block sparsity, a blocked CPU/sdpa path).
    Those keys weigh at most `exp(-T)` times the nearest one's, scores being equal; T = 20 changed
    logits by ~1e-5 on a trained model. `alibi-lm window` measures what a cutoff drops on your data.

    By default the model has no biases (attention, MLP, LayerNorm) and no embedding LayerNorm: that is
    MPT's architecture, so every default model exports to MPT and GGUF (`alibi-lm export`) and is served
    by vLLM, TGI and llama.cpp, and it measured no worse than with biases (recipes/results/bias-free.md).
    The bias and norm switches exist so that BLOOM and older MPT-style checkpoints convert exactly
    (`alibi-lm convert`).

    Example:

    ```python
    >>> from alibi_lm import AlibiConfig, AlibiForCausalLM
    >>> config = AlibiConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8)
    >>> model = AlibiForCausalLM(config)
    ```
    """

    model_type = "alibi"
    # save_pretrained copies this file beside the weights, so the folder loads as Hub remote code.
    _auto_class = "AutoConfig"
    keys_to_ignore_at_inference = ["cache"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    tie_word_embeddings: bool = True
    use_cache: bool = True
    train_length: int = 512
    max_position_embeddings: int | None = None
    position_encoding: str = "alibi"
    alibi_max_bias: float = 8.0
    alibi_window_cutoff: float | None = None
    rope_theta: float = 10000.0
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    attention_bias: bool = False
    mlp_bias: bool = False
    layer_norm_bias: bool = False
    embedding_layer_norm: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.max_position_embeddings is None and _is_count(self.train_length):
            self.max_position_embeddings = CONTEXT_MULTIPLE * self.train_length
        self._validate()
        super().__post_init__(**kwargs)
        self.auto_map = full_auto_map(getattr(self, "auto_map", None))

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        if "train_length" not in config_dict and "max_position_embeddings" in config_dict:
            # Saved before `train_length`: max_position_embeddings then held the training length.
            config_dict = dict(config_dict)
            length = config_dict.pop("max_position_embeddings")
            config_dict["train_length"] = length
            if _is_count(length):
                logger.warning_once(
                    f"This config.json predates `train_length`: reading its max_position_embeddings={length} as the "
                    f"training length and allowing {CONTEXT_MULTIPLE * length} tokens of context; save the model "
                    "again to write both fields."
                )
        return super().from_dict(config_dict, **kwargs)

    def _remove_keys_not_serialized(self, d: dict) -> None:
        super()._remove_keys_not_serialized(d)
        if d.pop(RING_MARK, False):
            d.pop("sliding_window", None)

    def set_train_length(self, length: int) -> None:
        """Record that the model is (now) trained at `length` tokens.

        A context derived from the old training length moves with it; one set by hand stays, raised to `length`
        if it was shorter.
        """
        derived = self.max_position_embeddings == CONTEXT_MULTIPLE * self.train_length
        self.train_length = length
        self.max_position_embeddings = (
            CONTEXT_MULTIPLE * length if derived else max(self.max_position_embeddings, length)
        )
        self._validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _validate(self) -> None:
        """Raise a `ValueError` that names the first invalid field."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "train_length",
            "max_position_embeddings",
            "t5_num_buckets",
            "t5_max_distance",
        ):
            value = getattr(self, name)
            if not _is_count(value):
                raise ValueError(f"AlibiConfig.{name} must be a positive integer, got {value!r}.")
        for name in ("layer_norm_eps", "initializer_range", "alibi_max_bias", "rope_theta"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"AlibiConfig.{name} must be a positive, finite number, got {value!r}.")
        for name in ("hidden_dropout", "attention_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"AlibiConfig.{name} must be in [0, 1), got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"AlibiConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"AlibiConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"AlibiConfig.position_encoding must be one of {POSITION_ENCODINGS}, got {self.position_encoding!r}."
            )
        if self.position_encoding == "rotary" and self.head_dim % 2 != 0:
            raise ValueError(f"AlibiConfig.position_encoding='rotary' needs an even head_dim, got {self.head_dim}.")
        if self.position_encoding == "sinusoidal" and self.hidden_size % 2 != 0:
            raise ValueError(
                f"AlibiConfig.position_encoding='sinusoidal' needs an even hidden_size, got {self.hidden_size}."
            )
        cutoff = self.alibi_window_cutoff
        if cutoff is not None:
            if (
                isinstance(cutoff, bool)
                or not isinstance(cutoff, (int, float))
                or not math.isfinite(cutoff)
                or cutoff <= 0
            ):
                raise ValueError(f"AlibiConfig.alibi_window_cutoff must be None or a positive number, got {cutoff!r}.")
            if self.position_encoding != "alibi":
                raise ValueError(
                    "AlibiConfig.alibi_window_cutoff windows ALiBi's bias; it needs position_encoding='alibi', "
                    f"got {self.position_encoding!r}."
                )
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"AlibiConfig.hidden_act must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}.")


class AlibiTokenizerFast(TokenizersBackend):
    """transformers' `TokenizersBackend` (a `tokenizer.json`), named by `TOKENIZER_AUTO_MAP` for remote-code loading."""


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


__all__ = ["AlibiConfig", "AlibiTokenizerFast"]
