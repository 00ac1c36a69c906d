"""A recipe: one YAML file of `ModelArguments`, `DataArguments` (alibi_lm.data) and `AlibiTrainingArguments` fields,
with `--key value` overrides, read into the three argument dataclasses with clear errors (`parse_recipe`).

`ModelArguments` carries every architecture field of `AlibiConfig`, so a from-scratch recipe is flat;
`AlibiTrainingArguments` is transformers' `TrainingArguments` plus `overwrite_output_dir` and `flush_denormal`. A key
no class knows is named with the closest valid one; a value of the wrong type is named with the type expected.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    HfArgumentParser,
    TrainingArguments,
)

from . import AlibiConfig
from .data import DataArguments

# Token ids come from the tokenizer, never from a recipe.
_TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id")


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _ModelSource:
    """Where the model and tokenizer come from."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Fine-tune this checkpoint (a folder or Hub id); omit to train from scratch."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Train from scratch starting from this config (a folder or Hub id)."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer folder or Hub id (default: the model's, or a byte-level BPE trained on the data)."
        },
    )
    tokenizer_vocab_size: int | None = field(
        default=None, metadata={"help": "Vocabulary of the trained BPE tokenizer (default: vocab_size)."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "'sdpa', 'eager', 'flex_attention' or 'flash_attention_2'."}
    )

    def config_overrides(self) -> dict[str, Any]:
        """The architecture fields this recipe sets (the rest keep the config's values)."""
        return {name: getattr(self, name) for name in ARCHITECTURE_FIELDS if getattr(self, name) is not None}


# Every architecture field of AlibiConfig, typed as in the config and None by default ("keep the config's value").
# Generated, so a field the config gains is a recipe key at once. `use_cache` is also a TrainingArguments field
# (and not architecture): names TrainingArguments owns stay with it.
ARCHITECTURE_FIELDS: tuple[str, ...] = tuple(
    name
    for name in AlibiConfig.__annotations__
    if name not in _TOKEN_ID_FIELDS and name not in {f.name for f in fields(TrainingArguments)}
)


ModelArguments = make_dataclass(
    "ModelArguments",
    [
        (
            name,
            AlibiConfig.__annotations__[name] | None,
            field(default=None, metadata={"help": f"AlibiConfig.{name} (default: the config's)."}),
        )
        for name in ARCHITECTURE_FIELDS
    ],
    bases=(_ModelSource,),
)
ModelArguments.__module__ = __name__
ModelArguments.__doc__ = "Model source plus every AlibiConfig architecture field, each None unless a recipe sets it."


@dataclass
class AlibiTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults this runner needs and `overwrite_output_dir`."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that already holds checkpoints or a model."},
    )
    # Without it Trainer gathers the logits of every evaluation block (blocks x L x vocab floats); perplexity
    # needs only the loss.
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluate the loss only."})
    # Trainer's None means True for models without gradient checkpointing: an extra autograd traversal every step,
    # though every parameter of an ALiBi model takes part in each forward.
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Let DDP look for parameters that get no gradient."}
    )
    # Trainer then logs num_input_tokens_seen and train_tokens_per_second (every rank's input tokens, over the wall
    # time of the session) with each training log.
    include_num_input_tokens_seen: str | bool = field(
        default=True,
        metadata={"help": "Count input tokens and log tokens per second ('all' = true, 'non_padding', 'no')."},
    )
    flush_denormal: bool = field(
        default=False,
        metadata={"help": "Flush denormal floats to zero while training (CPUs where they are slow); restored after."},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, AlibiTrainingArguments)


def _valid_keys() -> dict[str, list[str]]:
    return {cls.__name__: sorted(f.name for f in fields(cls) if f.init) for cls in ARGUMENT_CLASSES}


def _unknown_keys_error(unknown: Sequence[str], where: str) -> ValueError:
    valid = _valid_keys()
    every = [key for keys in valid.values() for key in keys]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, every, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    listing = "\n".join(f"  {name}: {', '.join(keys)}" for name, keys in valid.items())
    return ValueError(f"Unknown key(s) in {where}: {', '.join(hints)}.\nValid keys:\n{listing}")


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(repr(member.value) for member in annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(arg) for arg in typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a dataclass field's type (as HfArgumentParser would read it from the command line)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return any(value == member.value or value == member for member in annotation)
    if origin in (list, tuple) or annotation in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the dataclass validates it


def _check_recipe_types(values: dict[str, Any], path: Path) -> None:
    """Raise a ValueError naming the key, its value and the expected type for the first recipe value of a wrong type.

    YAML gives typed values (`2.7`, `[1, 2]`), which HfArgumentParser passes to the dataclasses unchecked; an int
    field given 2.7 would otherwise fail deep in TrainingArguments with a bare TypeError, or not at all.
    """
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        for item in fields(cls):
            if item.name in values and not _matches(values[item.name], hints[item.name]):
                value = values[item.name]
                hint = ""
                if isinstance(value, bool) and _matches("no", hints[item.name]):
                    hint = "; YAML reads unquoted no/yes/off/on as booleans, so quote the word (e.g. 'no')"
                raise ValueError(
                    f"recipe {path}: {item.name} must be {_type_name(hints[item.name])}, got {value!r} "
                    f"({type(value).__name__}){hint}"
                )


def read_recipe(recipe: str | os.PathLike) -> dict[str, Any]:
    """The key: value mapping of a YAML recipe.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ValueError: it is not UTF-8, not valid YAML (the message gives the line and column), or not a mapping.
    """
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} does not exist.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"Recipe {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})."
        ) from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(f"Recipe {path} is not valid YAML:{where}: {problem}.") from None
    if not isinstance(values, dict):
        raise ValueError(f"Recipe {path} must be a mapping of key: value, got {type(values).__name__}.")
    return values


def parse_recipe(
    recipe: str | os.PathLike, overrides: Sequence[str] = ()
) -> tuple[Any, DataArguments, AlibiTrainingArguments]:
    """Parse one YAML recipe plus `--key value` overrides into (ModelArguments, DataArguments, training args).

    Raises:
        FileNotFoundError: the recipe does not exist.
        ValueError: the recipe is not UTF-8, not YAML or not a mapping; a key (in the file or the overrides) is
            unknown (the message lists the valid keys); or a value has the wrong type (the message names the key).
    """
    path = Path(recipe)
    values = read_recipe(path)
    known = {key for keys in _valid_keys().values() for key in keys}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _unknown_keys_error(unknown, f"recipe {path}")
    _check_recipe_types(values, path)

    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if not torch.accelerator.is_available():
        # Trainer sets up torch.distributed on a CPU-only machine only with use_cpu; without it every process
        # launched by `accelerate launch` would train alone.
        parser.set_defaults(use_cpu=True)
    # The recipe becomes the parser's defaults, so command-line overrides win and are typed by argparse. (No field
    # of these dataclasses is required, so a recipe key never has to stand in for a required flag.)
    parser.set_defaults(**values)
    model_args, data_args, training_args, remaining = parser.parse_args_into_dataclasses(
        args=list(overrides), return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        keys = [arg.lstrip("-").split("=")[0] for arg in remaining if arg.startswith("--")] or remaining
        raise _unknown_keys_error(keys, "the command-line overrides")
    for key in ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm"):
        value = getattr(training_args, key, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{key} must be a finite number >= 0, got {value} (recipe {path} or its overrides).")
    return model_args, data_args, training_args


__all__ = ["ARCHITECTURE_FIELDS", "AlibiTrainingArguments", "ModelArguments", "parse_recipe", "read_recipe"]
