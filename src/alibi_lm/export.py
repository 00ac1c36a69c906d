"""Export an alibi-lm checkpoint as MPT or BLOOM, the ALiBi architectures serving engines run natively.

    alibi-lm export DIR OUT --to mpt|bloom [--max-length N] [--overwrite]
    alibi-lm export DIR OUT.gguf --to gguf                # llama.cpp: the MPT architecture in one GGUF file

vLLM, TGI, llama.cpp and `transformers serve` do not run remote code, but all of them serve MPT and BLOOM, the two
released ALiBi families. `alibi-lm convert` maps those onto `AlibiForCausalLM`; this is the inverse. The exported
folder (safetensors, config, tokenizer, generation config) loads with `AutoModelForCausalLM.from_pretrained(OUT)` and
nothing but transformers, and computes the same logits (to float rounding).

Each target reproduces a subset of `AlibiConfig`:

| field | MPT | BLOOM |
|---|---|---|
| `position_encoding` | `alibi`, `alibi_max_bias` 8 | `alibi`, `alibi_max_bias` 8 |
| `alibi_window_cutoff` | None (dense) | None (dense) |
| attention | multi-head (`num_key_value_heads` = `num_attention_heads`) | multi-head |
| `hidden_act` | `gelu` (exact) | `gelu_pytorch_tanh` / `gelu_new` (tanh) |
| biases (attention, MLP, LayerNorm) | none | all |
| `embedding_layer_norm` | no | yes |
| `intermediate_size` | 4 x hidden | 4 x hidden |
| `tie_word_embeddings` | yes (vLLM's MPT ties the head) | yes (BLOOM always ties) |

A config outside the subset is refused with every field that does not fit. `--to gguf` writes the MPT export as one
GGUF file the way llama.cpp's own converter (`convert_hf_to_gguf.py`, `MPTModel`) does: architecture `mpt`, tensor
names from the `gguf` package's own `TensorNameMap`, `max_alibi_bias` 8, and the byte-level BPE vocabulary as a
`gpt2` tokenizer with pre-tokenizer `gpt-2`. MPT's transformers implementation builds
its ALiBi table up to `max_seq_len`, and serving engines read that field as the context limit, so the export writes
`--max-length` there (default: the config's `max_position_embeddings`, the context clients may use, 16 x the training
length unless set otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM, MptConfig, MptForCausalLM, PreTrainedModel
from transformers.initialization import no_init_weights

from .convert import check_destination, write_folder
from .loading import check_model_folder, load_model
from .model_files import has_tokenizer
from .modeling.configuration_alibi import AlibiConfig
from .modeling.modeling_alibi import AlibiForCausalLM

TARGETS = ("mpt", "bloom", "gguf")
SUBSET_OF = {"mpt": "mpt", "bloom": "bloom", "gguf": "mpt"}  # GGUF carries the MPT architecture
ENGINE_MAX_BIAS = 8.0  # transformers' MptModel and BloomModel both fix ALiBi's largest slope exponent at 8
TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new")


def export_problems(config: AlibiConfig, target: str) -> list[str]:
    """Every field of `config` that `target` cannot reproduce, as 'field=value (target needs ...)'; empty if none."""
    if target not in TARGETS:
        raise ValueError(f"Unknown export target {target!r}; choose one of {', '.join(TARGETS)}.")
    target = SUBSET_OF[target]
    mpt = target == "mpt"
    problems = []

    def need(ok: bool, field: str, wanted: str) -> None:
        if not ok:
            problems.append(f"{field}={getattr(config, field)!r} ({target} needs {wanted})")

    need(config.position_encoding == "alibi", "position_encoding", "'alibi'")
    need(math.isclose(config.alibi_max_bias, ENGINE_MAX_BIAS), "alibi_max_bias", "8.0, which its ALiBi fixes")
    need(config.alibi_window_cutoff is None, "alibi_window_cutoff", "None: its ALiBi sees every key")
    need(
        config.num_key_value_heads == config.num_attention_heads,
        "num_key_value_heads",
        f"multi-head attention, {config.num_attention_heads} key/value heads",
    )
    if mpt:
        need(config.hidden_act == "gelu", "hidden_act", "'gelu' (exact)")
    else:
        need(config.hidden_act in TANH_GELUS, "hidden_act", f"the tanh GELU, one of {TANH_GELUS}")
    for field in ("attention_bias", "mlp_bias", "layer_norm_bias"):
        need(getattr(config, field) is not mpt, field, "False: it has no biases" if mpt else "True: it has biases")
    need(
        config.embedding_layer_norm is not mpt,
        "embedding_layer_norm",
        "False: no embedding LayerNorm" if mpt else "True: an embedding LayerNorm",
    )
    need(
        config.intermediate_size == 4 * config.hidden_size,
        "intermediate_size",
        f"4 x hidden_size = {4 * config.hidden_size}, which its MLP hard-codes",
    )
    need(config.tie_word_embeddings, "tie_word_embeddings", "True: its LM head is the embedding")
    return problems


def check_exportable(config: AlibiConfig, target: str) -> None:
    """Raise a ValueError listing every field of `config` outside `target`'s subset."""
    problems = export_problems(config, target)
    if problems:
        raise ValueError(
            f"This model cannot be exported as {target.upper()}; {len(problems)} field(s) do not fit: "
            + "; ".join(problems)
            + f". Train with a config inside the {SUBSET_OF[target].upper()} subset (see `alibi-lm export --help`)."
        )


def _token_ids(config: AlibiConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}


def mpt_config(config: AlibiConfig, max_length: int) -> MptConfig:
    """The `MptConfig` that computes what `config` does, with room for `max_length` tokens."""
    check_exportable(config, "mpt")
    return MptConfig(
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_layers=config.num_hidden_layers,
        expansion_ratio=4,
        max_seq_len=max_length,
        vocab_size=config.vocab_size,
        resid_pdrop=config.hidden_dropout,
        emb_pdrop=config.embedding_dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        learned_pos_emb=False,
        # No attn_pdrop: transformers 5.24 types it as an int, so a fractional dropout cannot be written (and
        # inference does not use it).
        attn_config={"alibi": True, "alibi_bias_max": 8},
        no_bias=True,
        use_cache=True,
        initializer_range=config.initializer_range,
        tie_word_embeddings=True,
        architectures=[MptForCausalLM.__name__],
        **_token_ids(config),
    )


def bloom_config(config: AlibiConfig) -> BloomConfig:
    """The `BloomConfig` that computes what `config` does (BLOOM builds its ALiBi for any length)."""
    check_exportable(config, "bloom")
    return BloomConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        hidden_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        apply_residual_connection_post_layernorm=False,
        use_cache=True,
        tie_word_embeddings=True,
        architectures=[BloomForCausalLM.__name__],
        **_token_ids(config),
    )


def _mpt_weights(weights: dict[str, torch.Tensor], config: AlibiConfig) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": weights["model.embed_tokens.weight"]}
    for i in range(config.num_hidden_layers):
        src, dst = f"model.layers.{i}", f"transformer.blocks.{i}"
        # MptAttention splits its fused projection with chunk(3): [q | k | v].
        out[f"{dst}.attn.Wqkv.weight"] = torch.cat(
            [weights[f"{src}.self_attn.{name}.weight"] for name in ("q_proj", "k_proj", "v_proj")]
        )
        out[f"{dst}.attn.out_proj.weight"] = weights[f"{src}.self_attn.o_proj.weight"]
        out[f"{dst}.norm_1.weight"] = weights[f"{src}.input_layernorm.weight"]
        out[f"{dst}.norm_2.weight"] = weights[f"{src}.post_attention_layernorm.weight"]
        out[f"{dst}.ffn.up_proj.weight"] = weights[f"{src}.mlp.up_proj.weight"]
        out[f"{dst}.ffn.down_proj.weight"] = weights[f"{src}.mlp.down_proj.weight"]
    out["transformer.norm_f.weight"] = weights["model.norm.weight"]
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied
    return out


def _bloom_weights(weights: dict[str, torch.Tensor], config: AlibiConfig) -> dict[str, torch.Tensor]:
    heads, head_dim, hidden = config.num_attention_heads, config.head_dim, config.hidden_size
    out = {
        "transformer.word_embeddings.weight": weights["model.embed_tokens.weight"],
        "transformer.word_embeddings_layernorm.weight": weights["model.embed_layer_norm.weight"],
        "transformer.word_embeddings_layernorm.bias": weights["model.embed_layer_norm.bias"],
        "transformer.ln_f.weight": weights["model.norm.weight"],
        "transformer.ln_f.bias": weights["model.norm.bias"],
    }
    renames = {
        "self_attn.o_proj": "self_attention.dense",
        "input_layernorm": "input_layernorm",
        "post_attention_layernorm": "post_attention_layernorm",
        "mlp.up_proj": "mlp.dense_h_to_4h",
        "mlp.down_proj": "mlp.dense_4h_to_h",
    }
    for i in range(config.num_hidden_layers):
        src, dst = f"model.layers.{i}", f"transformer.h.{i}"
        # BloomAttention views its fused output as [num_heads, 3, head_dim]: q, k and v interleave per head.
        projections = [f"{src}.self_attn.{name}_proj" for name in ("q", "k", "v")]
        qkv = [weights[f"{name}.weight"].view(heads, head_dim, hidden) for name in projections]
        out[f"{dst}.self_attention.query_key_value.weight"] = torch.stack(qkv, 1).reshape(3 * hidden, hidden)
        qkv = [weights[f"{name}.bias"].view(heads, head_dim) for name in projections]
        out[f"{dst}.self_attention.query_key_value.bias"] = torch.stack(qkv, 1).reshape(3 * hidden)
        for ours, theirs in renames.items():
            for kind in ("weight", "bias"):
                out[f"{dst}.{theirs}.{kind}"] = weights[f"{src}.{ours}.{kind}"]
    out["lm_head.weight"] = out["transformer.word_embeddings.weight"]  # tied
    return out


def export_model(model: AlibiForCausalLM, target: str, max_length: int | None = None) -> PreTrainedModel:
    """The `MptForCausalLM` or `BloomForCausalLM` that computes what `model` does, in its dtype.

    Raises:
        ValueError: the model's config is outside the target's subset (every misfit is listed).
    """
    config = model.config
    weights = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if target == "mpt":
        length = max_length or config.max_position_embeddings
        target_config, mapped, cls = mpt_config(config, length), _mpt_weights(weights, config), MptForCausalLM
    elif target == "bloom":
        target_config, mapped, cls = bloom_config(config), _bloom_weights(weights, config), BloomForCausalLM
    elif target == "gguf":
        raise ValueError("A GGUF file is not a transformers model: write it with write_gguf (or --to gguf).")
    else:
        raise ValueError(f"Unknown export target {target!r}; choose one of {', '.join(TARGETS)}.")
    with no_init_weights():
        exported = cls(target_config)
    exported.load_state_dict(mapped, strict=True)
    exported.tie_weights()
    exported.generation_config = model.generation_config
    return exported.to(model.dtype).eval()


def _gpt2_vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a byte-level BPE tokenizer, as llama.cpp's `gpt2` vocabulary holds them.

    Ids the tokenizer does not use, up to the model's `vocab_size`, become `[PAD<id>]` tokens of type UNUSED, as
    llama.cpp's converter writes them.

    Raises:
        ValueError: the tokenizer is not a byte-level BPE (GPT-2 style) tokenizer.
    """
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    pre = spec.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" or any(
        step.get("type") == "ByteLevel" for step in pre.get("pretokenizers", [])
    )
    if spec.get("model", {}).get("type") != "BPE" or not byte_level:
        raise ValueError(
            "GGUF export writes llama.cpp's 'gpt2' vocabulary, which needs a byte-level BPE tokenizer (the kind "
            f"alibi-lm trains); this one is {spec.get('model', {}).get('type', type(tokenizer).__name__)}."
        )
    special = set(tokenizer.all_special_ids)
    tokens, types = [], []
    for token_id in range(vocab_size):
        token = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token_id in special else gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"].get("merges", [])]
    return tokens, types, merges


def write_gguf(model: AlibiForCausalLM, tokenizer: Any, path: str | Path, max_length: int | None = None) -> Path:
    """Write `model` (inside the MPT subset) and its byte-level BPE tokenizer as one llama.cpp GGUF file, fp32.

    The metadata and tensor names follow llama.cpp's `convert_hf_to_gguf.py` (`MPTModel`); the file is written beside
    `path` and renamed when whole. Returns `path`.
    """
    return _write_mpt_gguf(export_model(model, "mpt", max_length), tokenizer, Path(path))


def _write_mpt_gguf(mpt: MptForCausalLM, tokenizer: Any, path: Path) -> Path:
    import gguf

    config = mpt.config
    tokens, types, merges = _gpt2_vocab(tokenizer, config.vocab_size)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MPT]
    partial = path.with_name(f".{path.name}.partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(4 * config.d_model)
    writer.add_head_count(config.n_heads)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_max_alibi_bias(ENGINE_MAX_BIAS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MPT, config.n_layers)
    for name, tensor in mpt.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: llama.cpp's MPT uses token_embd as the output when there is no output.weight
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise AssertionError(f"gguf has no MPT name for {name}")
        writer.add_tensor(gguf_name, tensor.detach().float().contiguous().numpy())
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(partial, path)
    return path


def export_checkpoint(
    src: str | Path, dst: str | Path, target: str, *, max_length: int | None = None, overwrite: bool = False
) -> PreTrainedModel:
    """Export the alibi-lm folder `src` as a `target` folder at `dst` (weights, config, tokenizer), atomically.

    The config is checked before any weight is read; `dst` is written beside itself and renamed at the end.

    Raises:
        FileExistsError: `dst` exists and `overwrite` is False.
        ValueError: the config is outside the target's subset, or `max_length` is below the training length.
    """
    src, dst = Path(src), Path(dst).expanduser()
    check_destination(dst, overwrite)
    if src.is_dir():
        check_model_folder(src)  # before config.json is read: nothing from outside the folder, nothing tampered
    config = AlibiConfig.from_pretrained(src)
    check_exportable(config, target)
    if max_length is not None and max_length < config.train_length:
        raise ValueError(
            f"--max-length {max_length} is below the training length {config.train_length}; ALiBi runs "
            "past it, so give at least that."
        )
    model = load_model(src)  # names truncated or corrupt weights
    if not isinstance(model, AlibiForCausalLM):
        raise ValueError(f"{src} holds a {type(model).__name__}, not an AlibiForCausalLM.")
    tokenizer = AutoTokenizer.from_pretrained(src) if has_tokenizer(src) else None
    if target == "gguf":
        if tokenizer is None:
            raise FileNotFoundError(f"{src} has no tokenizer; a GGUF file carries its vocabulary.")
        dst.parent.mkdir(parents=True, exist_ok=True)
        mpt = export_model(model, "mpt", max_length)
        _write_mpt_gguf(mpt, tokenizer, dst)
        return mpt
    exported = export_model(model, target, max_length)

    if tokenizer is not None:
        # The export carries no remote code for the checkpoint's tokenizer auto_map to point at.
        tokenizer._auto_map = None
        tokenizer.init_kwargs.pop("auto_map", None)

    def write(folder: Path) -> None:
        exported.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    write_folder(dst, write, overwrite=overwrite)
    return exported


# ----------------------------------------------------------------------------------------------------------------
# CLI


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `alibi-lm export`."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint as MPT or BLOOM, which vLLM, TGI, llama.cpp and `transformers serve` run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:4]),
    )
    parser.add_argument("src", metavar="DIR", type=Path, help="an alibi-lm checkpoint folder")
    parser.add_argument("dst", metavar="OUT", type=Path, help="the folder to write")
    parser.add_argument("--to", dest="target", required=True, choices=TARGETS, help="the architecture to write")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="MPT's max_seq_len: the longest sequence engines will accept (default: the config's "
        "max_position_embeddings, 16 x the training length unless set otherwise)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = export_checkpoint(args.src, args.dst, args.target, max_length=args.max_length, overwrite=args.overwrite)
    config = model.config
    limit = f", max_seq_len {config.max_seq_len}" if args.target in ("mpt", "gguf") else ""
    if args.target == "gguf":
        print(f"Exported {args.src} -> {args.dst}: GGUF, llama.cpp architecture mpt{limit}.")
    else:
        print(f"Exported {args.src} -> {args.dst} as {type(model).__name__}{limit}; load it with transformers alone.")
    return 0


__all__ = [
    "TARGETS",
    "bloom_config",
    "check_exportable",
    "export_checkpoint",
    "export_model",
    "export_problems",
    "mpt_config",
    "write_gguf",
]
