"""Convert BLOOM and MPT checkpoints to alibi-lm's format (`alibi-lm convert SRC DST`).

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

BLOOM (BigScience) and MPT (MosaicML) are the two widely released ALiBi model families. Both are pre-norm decoders
with LayerNorm and a non-gated GELU MLP, which is exactly `AlibiForCausalLM` with the right switches:

| source | BLOOM | MPT |
|---|---|---|
| biases (attention, MLP, LayerNorm) | all | none (`no_bias=True`) |
| embedding LayerNorm | `word_embeddings_layernorm` | none |
| activation | `bloom_gelu` = tanh GELU (`gelu_pytorch_tanh`) | exact GELU (`gelu`) |
| fused QKV output layout | `[num_heads, 3, head_dim]` | `[3, num_heads, head_dim]` |
| slopes | paper's, max bias 8 | paper's, max bias `alibi_bias_max` |

The converted model computes the same logits (to float rounding) and, unlike MPT, runs at any length.
Weight mapping was read from transformers 5.24 `models/bloom/modeling_bloom.py` and `models/mpt/modeling_mpt.py`.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.initialization import no_init_weights
from transformers.utils import has_file

from .integrity import give_plain_mode, share_weights_like_config
from .model_files import TOKENIZER_ENTRY_FILES, prepare_for_hub
from .modeling.configuration_alibi import AlibiConfig
from .modeling.modeling_alibi import AlibiForCausalLM

SUPPORTED_ARCHITECTURES = ("bloom", "mpt")
# Every BigScience BLOOM model was trained at 2048 tokens; their configs do not always say so.
BLOOM_TRAINING_LENGTH = 2048
MPT_LAYER_NORMS = ("low_precision_layernorm", "layernorm")

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "add_subparser",
    "bloom_to_alibi_config",
    "check_convertible",
    "convert_bloom",
    "convert_checkpoint",
    "convert_model",
    "convert_mpt",
    "mpt_to_alibi_config",
]


# ----------------------------------------------------------------------------------------------------------------
# Config checks and mapping
# ----------------------------------------------------------------------------------------------------------------


def _attn_option(config: PretrainedConfig, name: str, default: object = None) -> object:
    """Read MPT's `attn_config.<name>`, which is a dict in Hub files and a sub-config once loaded."""
    attn_config = getattr(config, "attn_config", None) or {}
    if isinstance(attn_config, Mapping):
        return attn_config.get(name, default)
    return getattr(attn_config, name, default)


def _check_mpt(config: PretrainedConfig) -> None:
    """Raise a `ValueError` for each MPT option whose computation `AlibiForCausalLM` does not reproduce."""
    if not _attn_option(config, "alibi", True) or _attn_option(config, "rope", False):
        raise ValueError(
            "This MPT config has attn_config.alibi=False (or rope=True): the model does not use ALiBi "
            "(it uses learned or rotary position embeddings), so there is nothing to convert."
        )
    attn_type = _attn_option(config, "attn_type", "multihead_attention")
    if attn_type != "multihead_attention":
        raise ValueError(f"MPT attn_config.attn_type={attn_type!r} is not supported; only 'multihead_attention' is.")
    head_dim = config.d_model // config.n_heads
    softmax_scale = _attn_option(config, "softmax_scale")
    if softmax_scale is not None and not math.isclose(softmax_scale, head_dim**-0.5, rel_tol=1e-6):
        raise ValueError(
            f"MPT attn_config.softmax_scale={softmax_scale} is not supported: alibi-lm scales attention by "
            f"1/sqrt(head_dim) = {head_dim**-0.5:.6g}."
        )
    for name in ("clip_qkv", "qk_ln", "prefix_lm"):
        if _attn_option(config, name):
            raise ValueError(
                f"MPT attn_config.{name}={_attn_option(config, name)!r} is not supported: alibi-lm's attention "
                f"has no {name}, so the converted model would compute something else."
            )
    window = _attn_option(config, "sliding_window_size", -1)
    if window not in (-1, None):
        raise ValueError(f"MPT attn_config.sliding_window_size={window} is not supported (full attention only).")
    logit_scale = getattr(config, "logit_scale", None)
    if logit_scale is not None and logit_scale != 1:
        raise ValueError(f"MPT logit_scale={logit_scale!r} is not supported: alibi-lm does not scale logits.")
    norm_type = getattr(config, "norm_type", "low_precision_layernorm")
    if norm_type not in MPT_LAYER_NORMS:
        raise ValueError(f"MPT norm_type={norm_type!r} is not supported; only {MPT_LAYER_NORMS} are.")
    ffn_type = (getattr(config, "ffn_config", None) or {}).get("ffn_type", "mptmlp")
    if ffn_type != "mptmlp":
        raise ValueError(f"MPT ffn_config.ffn_type={ffn_type!r} is not supported; only the GELU MLP 'mptmlp' is.")


def check_convertible(config: PretrainedConfig) -> str:
    """Return the source architecture ("bloom" or "mpt"), or raise a `ValueError` saying why it cannot convert.

    Runs on the config alone, so a bad checkpoint fails before any weight is read.
    """
    model_type = getattr(config, "model_type", None)
    if model_type == AlibiConfig.model_type:
        raise ValueError("This checkpoint is already in alibi-lm's format (model_type 'alibi'); nothing to convert.")
    if getattr(config, "alibi", None) is False:
        raise ValueError(
            f"This {model_type} config has alibi=False: the model does not use ALiBi, so there is nothing to convert."
        )
    if model_type == "bloom":
        if config.apply_residual_connection_post_layernorm:
            raise ValueError(
                "BLOOM apply_residual_connection_post_layernorm=True is not supported: it adds the LayerNorm "
                "output to the residual stream, while alibi-lm's block adds the LayerNorm input."
            )
        return "bloom"
    if model_type == "mpt":
        _check_mpt(config)
        return "mpt"
    raise ValueError(
        f"Unsupported architecture {model_type!r}: alibi-lm converts {', '.join(SUPPORTED_ARCHITECTURES)} "
        "checkpoints (the released ALiBi families whose computation it reproduces exactly)."
    )


def _token_ids(config: PretrainedConfig) -> dict:
    return {name: getattr(config, name, None) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}


def bloom_to_alibi_config(config: PretrainedConfig) -> AlibiConfig:
    """Map a `BloomConfig` onto the `AlibiConfig` that computes the same function."""
    check_convertible(config)
    training_length = getattr(config, "seq_length", None) or getattr(config, "n_positions", None)
    return AlibiConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=4 * config.hidden_size,  # BloomMLP hard-codes 4 * hidden_size
        hidden_act="gelu_pytorch_tanh",  # bloom_gelu is the tanh approximation
        layer_norm_eps=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        hidden_dropout=float(config.hidden_dropout),
        attention_dropout=float(config.attention_dropout),
        tie_word_embeddings=config.tie_word_embeddings,
        train_length=training_length or BLOOM_TRAINING_LENGTH,
        position_encoding="alibi",
        alibi_max_bias=8.0,
        attention_bias=True,
        mlp_bias=True,
        layer_norm_bias=True,
        embedding_layer_norm=True,
        **_token_ids(config),
    )


def mpt_to_alibi_config(config: PretrainedConfig, intermediate_size: int | None = None) -> AlibiConfig:
    """Map an `MptConfig` onto the `AlibiConfig` that computes the same function.

    `intermediate_size` defaults to `expansion_ratio * d_model`; `convert_mpt` passes the weights' actual size,
    because transformers' `MptMLP` ignores `expansion_ratio` and always builds 4 * d_model.
    """
    check_convertible(config)
    has_bias = not config.no_bias
    return AlibiConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=intermediate_size or int(config.expansion_ratio * config.d_model),
        hidden_act="gelu",  # MptMLP uses exact GELU
        layer_norm_eps=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        hidden_dropout=float(config.resid_pdrop),
        attention_dropout=float(_attn_option(config, "attn_pdrop", 0.0)),
        embedding_dropout=float(config.emb_pdrop),
        tie_word_embeddings=config.tie_word_embeddings,
        train_length=config.max_seq_len,
        position_encoding="alibi",
        # MosaicML's code honours alibi_bias_max; transformers' MptModel always uses 8 (the value of every
        # released MPT). We follow the checkpoint's own setting.
        alibi_max_bias=float(_attn_option(config, "alibi_bias_max", 8)),
        attention_bias=has_bias,
        mlp_bias=has_bias,
        layer_norm_bias=has_bias,
        embedding_layer_norm=False,
        **_token_ids(config),
    )


# ----------------------------------------------------------------------------------------------------------------
# Weight mapping
# ----------------------------------------------------------------------------------------------------------------


class _SourceWeights:
    """A source state dict that raises a clear error for a missing key and remembers which keys were used."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], architecture: str) -> None:
        # Accept both the causal-LM ("transformer.h.0...") and the base-model ("h.0...") key layouts.
        self.tensors = {key.removeprefix("transformer."): value for key, value in state_dict.items()}
        self.architecture = architecture
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise ValueError(f"The {self.architecture} checkpoint has no weight {key!r}.")
        self.used.add(key)
        return self.tensors[key]

    def check_all_used(self) -> None:
        """Refuse weights we did not map: they belong to a feature the converted model would silently drop."""
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise ValueError(
                f"The {self.architecture} checkpoint has weights alibi-lm does not know how to map: {unused[:5]}"
                + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            )


def _split_model(
    model_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor], config: PretrainedConfig | None
) -> tuple[Mapping[str, torch.Tensor], PretrainedConfig, object | None]:
    """Return (state dict, config, generation config) from a model or a state dict plus its config."""
    if isinstance(model_or_state_dict, torch.nn.Module):
        model = model_or_state_dict
        return model.state_dict(), config or model.config, getattr(model, "generation_config", None)
    if config is None:
        raise ValueError("Converting a state dict needs its config: pass config=BloomConfig(...) or MptConfig(...).")
    return model_or_state_dict, config, None


def _map_common(source: _SourceWeights, config: AlibiConfig, embed_key: str, norm_key: str) -> dict:
    """Embeddings, final norm and LM head, named the same way by both sources."""
    weights = {"model.embed_tokens.weight": source.take(f"{embed_key}.weight")}
    weights.update(_map_layer_norm(source, norm_key, "model.norm", config.layer_norm_bias))
    if config.tie_word_embeddings:
        # Tied: the source's lm_head (if listed at all) is the embedding itself.
        if "lm_head.weight" in source:
            source.take("lm_head.weight")
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    else:
        weights["lm_head.weight"] = source.take("lm_head.weight")
    return weights


def _map_layer_norm(source: _SourceWeights, src: str, dst: str, bias: bool) -> dict:
    weights = {f"{dst}.weight": source.take(f"{src}.weight")}
    if bias:
        weights[f"{dst}.bias"] = source.take(f"{src}.bias")
    return weights


def _map_linear(source: _SourceWeights, src: str, dst: str, bias: bool) -> dict:
    return _map_layer_norm(source, src, dst, bias)  # same two tensors, same names


def _build(
    config: AlibiConfig, weights: dict[str, torch.Tensor], generation_config: object | None
) -> AlibiForCausalLM:
    """Instantiate `AlibiForCausalLM` without random init and load `weights` into it, in the source dtype."""
    dtype = weights["model.embed_tokens.weight"].dtype
    with no_init_weights():
        model = AlibiForCausalLM(config)
    model.load_state_dict(weights, strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    if generation_config is not None:
        model.generation_config = copy.deepcopy(generation_config)
        # MPT ships use_cache=False; our cache is exact, so generation uses it.
        model.generation_config.use_cache = config.use_cache
    return model.to(dtype).eval()


def convert_bloom(
    model_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor], config: PretrainedConfig | None = None
) -> AlibiForCausalLM:
    """Convert a `BloomForCausalLM` (or its state dict plus `BloomConfig`) into an equivalent `AlibiForCausalLM`."""
    state_dict, source_config, generation_config = _split_model(model_or_state_dict, config)
    alibi_config = bloom_to_alibi_config(source_config)
    source = _SourceWeights(state_dict, "bloom")
    heads, head_dim, hidden = alibi_config.num_attention_heads, alibi_config.head_dim, alibi_config.hidden_size
    weights = _map_common(source, alibi_config, "word_embeddings", "ln_f")
    weights.update(_map_layer_norm(source, "word_embeddings_layernorm", "model.embed_layer_norm", True))
    for i in range(alibi_config.num_hidden_layers):
        src, dst = f"h.{i}", f"model.layers.{i}"
        # BloomAttention._reshape views the fused output as [num_heads, 3, head_dim]: q, k, v interleave per head.
        qkv_weight = source.take(f"{src}.self_attention.query_key_value.weight").view(heads, 3, head_dim, hidden)
        qkv_bias = source.take(f"{src}.self_attention.query_key_value.bias").view(heads, 3, head_dim)
        for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
            weights[f"{dst}.self_attn.{name}.weight"] = qkv_weight[:, index].reshape(hidden, hidden)
            weights[f"{dst}.self_attn.{name}.bias"] = qkv_bias[:, index].reshape(hidden)
        weights.update(_map_linear(source, f"{src}.self_attention.dense", f"{dst}.self_attn.o_proj", True))
        weights.update(_map_layer_norm(source, f"{src}.input_layernorm", f"{dst}.input_layernorm", True))
        weights.update(
            _map_layer_norm(source, f"{src}.post_attention_layernorm", f"{dst}.post_attention_layernorm", True)
        )
        weights.update(_map_linear(source, f"{src}.mlp.dense_h_to_4h", f"{dst}.mlp.up_proj", True))
        weights.update(_map_linear(source, f"{src}.mlp.dense_4h_to_h", f"{dst}.mlp.down_proj", True))
    source.check_all_used()
    return _build(alibi_config, weights, generation_config)


def convert_mpt(
    model_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor], config: PretrainedConfig | None = None
) -> AlibiForCausalLM:
    """Convert an `MptForCausalLM` (or its state dict plus `MptConfig`) into an equivalent `AlibiForCausalLM`."""
    state_dict, source_config, generation_config = _split_model(model_or_state_dict, config)
    check_convertible(source_config)
    source = _SourceWeights(state_dict, "mpt")
    has_bias = "blocks.0.attn.Wqkv.bias" in source
    if has_bias == bool(source_config.no_bias):
        raise ValueError(
            f"MPT config says no_bias={source_config.no_bias} but the weights "
            f"{'have' if has_bias else 'have no'} biases. transformers' MptForCausalLM never loads MPT biases, so "
            "for a no_bias=False checkpoint pass its original state dict to convert_mpt."
        )
    intermediate_size = source.take("blocks.0.ffn.up_proj.weight").shape[0]
    alibi_config = mpt_to_alibi_config(source_config, intermediate_size=intermediate_size)
    weights = _map_common(source, alibi_config, "wte", "norm_f")
    for i in range(alibi_config.num_hidden_layers):
        src, dst = f"blocks.{i}", f"model.layers.{i}"
        # MptAttention splits the fused output with chunk(3): [q | k | v], each [num_heads * head_dim].
        for name, tensor in zip(("q_proj", "k_proj", "v_proj"), source.take(f"{src}.attn.Wqkv.weight").chunk(3)):
            weights[f"{dst}.self_attn.{name}.weight"] = tensor
        if has_bias:
            for name, tensor in zip(("q_proj", "k_proj", "v_proj"), source.take(f"{src}.attn.Wqkv.bias").chunk(3)):
                weights[f"{dst}.self_attn.{name}.bias"] = tensor
        weights.update(_map_linear(source, f"{src}.attn.out_proj", f"{dst}.self_attn.o_proj", has_bias))
        weights.update(_map_layer_norm(source, f"{src}.norm_1", f"{dst}.input_layernorm", has_bias))
        weights.update(_map_layer_norm(source, f"{src}.norm_2", f"{dst}.post_attention_layernorm", has_bias))
        weights.update(_map_linear(source, f"{src}.ffn.up_proj", f"{dst}.mlp.up_proj", has_bias))
        weights.update(_map_linear(source, f"{src}.ffn.down_proj", f"{dst}.mlp.down_proj", has_bias))
    source.check_all_used()
    return _build(alibi_config, weights, generation_config)


CONVERTERS = {"bloom": convert_bloom, "mpt": convert_mpt}


def convert_model(model: torch.nn.Module) -> AlibiForCausalLM:
    """Convert a loaded BLOOM or MPT causal LM, choosing the converter from `model.config.model_type`."""
    return CONVERTERS[check_convertible(model.config)](model)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint folders
# ----------------------------------------------------------------------------------------------------------------


def _check_source(src: str) -> None:
    """Fail early on a local path that is not a checkpoint folder; anything else is left to the Hub client."""
    path = Path(src).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{src} is not a checkpoint folder: it has no config.json.")
    elif path.is_absolute() or src.startswith((".", "~")) or src.count("/") > 1:
        raise FileNotFoundError(f"Source checkpoint {src} does not exist (and is not a Hub repo id 'user/name').")


def _has_tokenizer(src: str) -> bool:
    # transformers' public check: a local folder's listing, or the Hub cache and a HEAD request (False offline).
    return any(has_file(src, name) for name in TOKENIZER_ENTRY_FILES)


def check_destination(dst: Path, overwrite: bool) -> None:
    """Raise FileExistsError if `dst` exists and `overwrite` is False."""
    if dst.exists() and not overwrite:
        raise FileExistsError(f"Destination {dst} already exists; pass overwrite=True (--overwrite) to replace it.")


def write_folder(dst: Path, write: Callable[[Path], None], overwrite: bool = False) -> None:
    """Call `write(folder)` on a temporary folder beside `dst`, then rename it to `dst`.

    An error (or a kill) never leaves a half-written `dst`: with `overwrite`, `dst` is always either the whole old
    folder or the whole new one.

    Raises:
        FileExistsError: `dst` exists and `overwrite` is False.
    """
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        give_plain_mode(staging)  # mkdtemp made it private (0700)
        write(staging)
        share_weights_like_config(staging)
        if dst.exists():
            # Two renames, so dst is always either the whole old folder or the whole new one.
            retired = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, retired / dst.name)
            try:
                os.replace(staging, dst)
            except BaseException:
                os.replace(retired / dst.name, dst)
                raise
            finally:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False, dtype: str = "auto"
) -> AlibiForCausalLM:
    """Convert the BLOOM or MPT checkpoint at `src` (folder or Hub repo id) to an alibi-lm Hub folder at `dst`.

    The config is checked before any weight is read. Everything is written to a temporary folder beside `dst`
    and renamed at the end, so an error never leaves a half-written `dst`. The tokenizer is copied if `src` has one.
    Returns the converted model.
    """
    src, dst = str(src), Path(dst).expanduser()
    check_destination(dst, overwrite)
    _check_source(src)
    source_config = AutoConfig.from_pretrained(src)
    check_convertible(source_config)
    source_model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    model = convert_model(source_model)
    del source_model
    tokenizer = AutoTokenizer.from_pretrained(src) if _has_tokenizer(src) else None

    def write(folder: Path) -> None:
        # Hub format: safetensors, config.json with an auto_map naming all three Auto classes, modeling files.
        prepare_for_hub(model, tokenizer).save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    write_folder(dst, write, overwrite=overwrite)
    return model


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Entry point of `alibi-lm convert`."""
    try:
        model = convert_checkpoint(args.src, args.dst, overwrite=args.overwrite, dtype=args.dtype)
    except (ValueError, OSError) as err:  # OSError covers a missing SRC, an existing DST and Hub lookups
        print(f"alibi-lm convert: error: {err}", file=sys.stderr)
        return 2
    config = model.config
    print(
        f"Converted {args.src} -> {args.dst}: {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
        f"hidden {config.hidden_size}, trained at {config.train_length} tokens, context "
        f"{config.max_position_embeddings} (max_position_embeddings)."
    )
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a BLOOM or MPT checkpoint (folder or Hub repo id) to alibi-lm's format",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("src", metavar="SRC", help="BLOOM or MPT checkpoint: a local folder or a Hub repo id")
    parser.add_argument("dst", metavar="DST", help="output folder (Hub format: safetensors, config, modeling code)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="weights dtype (default: the source checkpoint's)",
    )
    parser.set_defaults(func=run)
