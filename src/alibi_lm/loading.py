"""Load, validate and name a model folder: the one way every command reads a checkpoint.

`load_model` is what train, demo, export, generate, evaluation and serve call; `check_model_folder` is what they,
`alibi-lm verify` and `push` run first: weights readable (safetensors headers, `SHA256SUMS` where the folder has
one, links that stay inside the folder), an ALiBi config, and every tensor the config implies present in the weights
with its shape (`check_config_matches_weights`). Errors name the file and what is wrong with it.

    alibi-lm verify FOLDER [FOLDER ...] [--require-checksums]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .integrity import (
    CHECKSUMS_FILE,
    IntegrityError,
    check_links_stay_inside,
    inside,
    non_finite_tensors,
    read_checksums,
    verify_checksums,
)
from .model_files import TRAINER_FILES
from .modeling import modeling_alibi


def find_weights(folder: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, checked to exist and to be readable.

    Raises:
        FileNotFoundError: the folder, or the weights (a single file or every shard of an index), are missing.
        ValueError: a safetensors file is truncated or corrupt.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not inside(folder, name).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are not in {folder}: {', '.join(missing)}")
        files = [folder / name for name in shards]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        legacy = [p.name for p in folder.glob("*.bin") if p.name not in TRAINER_FILES]
        hint = f" (found {', '.join(legacy)}: re-save with save_pretrained to get safetensors)" if legacy else ""
        raise FileNotFoundError(
            f"no weights in {folder}: expected model.safetensors or model.safetensors.index.json{hint}"
        )
    for file in files:
        check_safetensors(file)
    return files


def check_safetensors(file: str | Path) -> None:
    """Raise a ValueError naming `file` if its safetensors header or length is wrong (a truncated download or copy)."""
    try:
        # safe_open validates the header and that the file is as long as the header says, without reading tensors.
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as err:
        size = Path(file).stat().st_size
        raise ValueError(f"{file} ({size} bytes) is not a valid safetensors file, probably truncated: {err}") from err


def check_model_folder(folder: str | Path) -> list[Path]:
    """Everything a loader must know before it reads a local model folder; returns its weights files.

    No file leads out of the folder (`check_links_stay_inside`, and `find_weights` for an index's shards); every
    safetensors header is whole; the weights, config, tokenizer and code match `SHA256SUMS` when there is one (a
    flipped bit or an edited config is named here, not generated from); and config.json implies the tensors the
    weights hold (a layer dropped or added at random is not a model). Load, export, fine-tuning and verify all call it.

    Raises:
        OutsideFolderError, FileNotFoundError, ValueError (IntegrityError among them): naming the file.
    """
    folder = Path(folder)
    check_links_stay_inside(folder)  # transformers would read what a link points at
    weights = find_weights(folder)
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)
    verify_checksums(folder)
    if (folder / "config.json").is_file():
        check_config_matches_weights(folder)
    return weights


def load_model(name_or_path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` that names the bad file when a checkpoint is truncated or corrupt, and
    refuses a head's folder (a fine-tuned classifier) by name.

    Raw `from_pretrained` raises `SafetensorError: Error while deserializing header: ...` without saying which
    file, and loads a file with a flipped bit inside a tensor without complaint. A local folder's safetensors
    headers are checked first, and its weights against `SHA256SUMS` when it has one (`alibi_lm.integrity`); an
    error from a downloaded file is re-raised with the repo name. `import alibi_lm` (this package) has registered the Auto classes, so no remote code runs.
    """
    if Path(name_or_path).is_dir():
        check_model_folder(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except SafetensorError as err:
        raise ValueError(
            f"the weights of {name_or_path} are not valid safetensors, probably truncated: {err}; "
            "download them again with force_download=True"
        ) from err
    saved = model_class(model.config.architectures)
    if saved not in (modeling_alibi.AlibiForCausalLM, modeling_alibi.AlibiModel):
        # transformers would load the decoder, drop the head with a warning and tie an LM head to the embeddings.
        raise ValueError(
            f"{name_or_path} holds {saved.__name__}, a fine-tuned head, not a language model: load it with "
            f"{saved._auto_class}.from_pretrained; perplexity, generation and export need a causal LM folder."
        )
    return model


def model_class(architectures: Sequence[str] | None) -> type[PreTrainedModel]:
    """The class config.json names in `architectures`: the LM, the bare decoder or a head (a fine-tuned classifier's
    folder holds `score.weight` and no `lm_head`); the LM when it names none of ours."""
    named = (architectures or ["AlibiForCausalLM"])[0]
    if named in modeling_alibi.__all__ and named.startswith("Alibi"):
        return getattr(modeling_alibi, named)
    return modeling_alibi.AlibiForCausalLM


def check_config_matches_weights(folder: str | Path) -> None:
    """Raise a ValueError unless the weights hold every tensor the folder's config.json implies, with its shape.

    A config edited after saving (another vocabulary size, one layer more) makes a repo that loads wrong: transformers
    initialises a missing tensor at random with only a warning, and refuses a shape mismatch with an error that does
    not name the config. The model is built from config.json on the meta device (no memory, no initialisation) and
    each tensor of its state dict, persistent buffers included, is compared with the safetensors headers. Tensors tied
    to each other (lm_head to embed_tokens) are one tensor, stored once under any of its names.

    Raises:
        FileNotFoundError: no config.json, or no weights (`find_weights`).
        ValueError: a tensor's shape differs from what config.json implies (the first one is named with the config
            fields its shape is made of), or tensors are missing from the weights or are not in the model.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    stored: dict[str, tuple[list[int], str]] = {}  # tensor name -> (shape, file name)
    for file in find_weights(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                stored[name] = (list(f.get_slice(name).get_shape()), file.name)
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = model_class(config.architectures)(config)
    # keep_vars returns the tensors themselves, so names of one shared tensor (tied weights) group by identity.
    tied: dict[int, list[str]] = {}
    expected: dict[str, list[int]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        tied.setdefault(id(tensor), []).append(name)
        expected[name] = list(tensor.shape)
    differ = [name for name, shape in expected.items() if name in stored and stored[name][0] != shape]
    missing = [names[0] for names in tied.values() if not any(name in stored for name in names)]
    unexpected = [name for name in stored if name not in expected]
    problems = []
    if differ:
        name = differ[0]
        shape, file = stored[name]
        fields = _shape_fields(config, expected[name])
        more = f" ({len(differ) - 1} more tensors differ: {_first(differ[1:])})" if len(differ) > 1 else ""
        problems.append(f"{name} has shape {shape} in {file} but config.json{fields} expects {expected[name]}{more}")
    if missing:
        problems.append(f"config.json implies tensors the weights do not hold: {_first(missing)}")
    if unexpected:
        problems.append(f"the weights hold tensors the model of config.json does not have: {_first(unexpected)}")
    if problems:
        raise ValueError(f"{folder}: config.json does not match the weights: {'; '.join(problems)}")


def _shape_fields(config: PretrainedConfig, shape: Sequence[int]) -> str:
    """The config fields whose values make up `shape`, as " (vocab_size=2000, hidden_size=64)"; "" if none do."""
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    fields = []
    for dim in shape:
        for name in names:
            field = f"{name}={dim}"
            if getattr(config, name, None) == dim and field not in fields:
                fields.append(field)
    return f" ({', '.join(fields)})" if fields else ""


def _first(names: Sequence[str], limit: int = 3) -> str:
    """The first `limit` names, and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `alibi-lm verify`."""
    parser = subparsers.add_parser(
        "verify",
        help="check a model folder: weights against SHA256SUMS, safetensors headers, config against weight shapes",
        description="Check a saved model or checkpoint folder before trusting it.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="model or checkpoint folders")
    parser.add_argument("--require-checksums", action="store_true", help=f"fail when a folder has no {CHECKSUMS_FILE}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for folder in args.folders:
        if args.require_checksums and read_checksums(folder) is None:
            raise IntegrityError(f"{folder} has no {CHECKSUMS_FILE}: nothing to verify the weights against")
        files = check_model_folder(folder)  # verify_checksums among its checks
        checked = read_checksums(folder) is not None
        bad = non_finite_tensors(folder)
        if bad:
            raise IntegrityError(
                f"{folder}: {len(bad)} tensor(s) hold NaN or infinity ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}): the run that saved them diverged"
            )
        note = f"sha256 matches {CHECKSUMS_FILE}" if checked else f"no {CHECKSUMS_FILE}: headers checked only"
        print(f"{folder}: OK ({len(files)} weights file(s), {note}; config matches the weight shapes)")
    return 0
