"""What a model folder is made of: the remote code, the tokenizer's files, the files that define a model, `auto_map`.

Each list is written once, here, and every module that saves, seals, checks, uploads or describes a folder reads it:
`checkpoints` and `train` (saving), `integrity` (the `SHA256SUMS` manifest), `loading`, `push` and `card`, `convert`
and `export`. The remote code is not a list anyone keeps: `MODELING_FILES` is `modeling_alibi.py` and whatever it
imports relatively, as transformers' own remote-code loader (`get_relative_import_files`) finds them, so a module
split out of the model is saved, sealed and pushed without a change here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.dynamic_module_utils import get_relative_import_files

from .modeling import modeling_alibi
from .modeling.configuration_alibi import TOKENIZER_AUTO_MAP, full_auto_map

MODELING_SOURCE = Path(modeling_alibi.__file__).parent
# The remote code beside the weights: the modeling file and every file it imports relatively (transformers' rule).
# (Once each: transformers' list names a file once per module that imports it.)
MODELING_FILES = tuple(
    sorted(
        {Path(path).name for path in [modeling_alibi.__file__, *get_relative_import_files(modeling_alibi.__file__)]}
    )
)
# What a transformers 5 tokenizer's save_pretrained writes (slow tokenizers' vocabularies included).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
# Trainer's state beside the weights in a checkpoint folder: not part of the model.
TRAINER_FILES = frozenset({"trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"})
# The files a tokenizer can be loaded from: a folder with neither has no tokenizer.
TOKENIZER_ENTRY_FILES = ("tokenizer.json", "tokenizer_config.json")
# What defines a model besides its weights, recorded in the manifest too: an edited config (a layer count, the
# position encoding, the activation) changes what the same weights compute as surely as a flipped bit does.
DEFINING_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES, *MODELING_FILES)


def has_tokenizer(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a tokenizer to load."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_ENTRY_FILES)


def with_auto_map(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict whose `auto_map` names all three Auto classes (what the folder's own map adds is kept)."""
    return {**config, "auto_map": full_auto_map(config.get("auto_map"), replace=True)}


def remote_code_of(folder: str | os.PathLike) -> dict[str, Path]:
    """The remote code `folder` ships, by name: its own `modeling_alibi.py` and what that imports relatively (the
    code its weights were saved with, found by transformers' rule), or this package's `MODELING_FILES` if it has none."""
    folder = Path(folder)
    own = folder / "modeling_alibi.py"
    if not own.is_file():
        return {name: MODELING_SOURCE / name for name in MODELING_FILES}
    try:
        imported = get_relative_import_files(str(own))
    except OSError as err:
        raise FileNotFoundError(
            f"{own} imports {Path(err.filename).name}, which {folder} does not hold: the folder's remote code is "
            "incomplete (save the model again, or copy the file from the same alibi-lm version)."
        ) from err
    return {path.name: path for path in [own, *map(Path, imported)]}


def copy_modeling_files(folder: str | os.PathLike, replace: bool = True) -> list[Path]:
    """Copy this package's `MODELING_FILES` into `folder` (only the missing ones unless `replace`); the paths written."""
    written = []
    for name in MODELING_FILES:
        target = Path(folder) / name
        if replace or not target.is_file():
            shutil.copyfile(MODELING_SOURCE / name, target)
            written.append(target)
    return written


def prepare_for_hub(model: PreTrainedModel, tokenizer: Any = None) -> PreTrainedModel:
    """Make `save_pretrained` / `push_to_hub` write the remote code next to the weights.

    transformers' `register_for_auto_class` makes `save_pretrained` copy the modeling files (the relative imports
    too) and map AutoConfig and the model's class in `auto_map`; AlibiConfig already carries the full `auto_map`
    (AutoModel too). Registration is per class (transformers' API), so afterwards every ALiBi model this process saves
    carries the code. Returns the model, for chaining.

    A `tokenizer` saved with the model gets `TOKENIZER_AUTO_MAP` in its tokenizer_config.json, so that on
    transformers 4 it fails with the remote code's version message (transformers 5 ignores it without
    `trust_remote_code=True`, and loads the same tokenizer with it).
    """
    model.config.register_for_auto_class()
    model.register_for_auto_class(type(model)._auto_class or "AutoModelForCausalLM")  # a head: its own Auto class
    if tokenizer is not None:
        tokenizer._auto_map = dict(TOKENIZER_AUTO_MAP)
    return model


__all__ = [
    "DEFINING_FILES",
    "MODELING_FILES",
    "MODELING_SOURCE",
    "TOKENIZER_ENTRY_FILES",
    "TOKENIZER_FILES",
    "TRAINER_FILES",
    "copy_modeling_files",
    "has_tokenizer",
    "prepare_for_hub",
    "remote_code_of",
    "with_auto_map",
]
