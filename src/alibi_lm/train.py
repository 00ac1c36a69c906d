"""One runner for every recipe: train an ALiBi LM from scratch or fine-tune one, with Trainer.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

    alibi-lm train RECIPE.yaml [--key value ...]
    accelerate launch [--config_file recipes/accelerate/NAME.yaml] -m alibi_lm.train RECIPE.yaml [--key value ...]

A recipe is one YAML file whose keys are fields of `ModelArguments`, `DataArguments` (alibi_lm.data) and
`AlibiTrainingArguments` (transformers' `TrainingArguments` plus `overwrite_output_dir`); `--key value` overrides
any of them. `ModelArguments` carries every architecture field of `AlibiConfig`, so a from-scratch recipe is flat.

Checkpoints are Hub folders (safetensors, config with auto_map, modeling files, tokenizer). A checkpoint counts as
complete once Trainer has written `trainer_state.json`, its last file; incomplete ones are renamed
`incomplete-checkpoint-N` at the next start and never resumed from. The final model is written to a hidden staging
folder and moved into `output_dir` with `config.json` last, so a killed save never looks like a loadable model.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import AlibiConfig, AlibiForCausalLM, AlibiPreTrainedModel
from .data import DataArguments, build_lm_datasets, cached_bpe_tokenizer, load_raw_datasets
from .hub import AUTO_MAP, MODELING_FILES, find_weights, load_model, prepare_for_hub
from .modeling import modeling_alibi

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # Trainer writes it last in a checkpoint: its presence marks a complete one
FINAL_STAGING = ".tmp-final-model"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
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


def parse_recipe(
    recipe: str | os.PathLike, overrides: Sequence[str] = ()
) -> tuple[Any, DataArguments, AlibiTrainingArguments]:
    """Parse one YAML recipe plus `--key value` overrides into (ModelArguments, DataArguments, training args).

    Raises:
        FileNotFoundError: the recipe does not exist.
        ValueError: the recipe is not a mapping, or a key (in the file or the overrides) is unknown; the
            message lists the valid keys.
    """
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} does not exist.")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Recipe {path} must be a mapping of key: value, got {type(values).__name__}.")
    known = {key for keys in _valid_keys().values() for key in keys}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _unknown_keys_error(unknown, f"recipe {path}")

    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if not torch.accelerator.is_available():
        # Trainer sets up torch.distributed on a CPU-only machine only with use_cpu; without it every process
        # launched by `accelerate launch` would train alone.
        parser.set_defaults(use_cpu=True)
    # The recipe becomes the parser's defaults, so command-line overrides win and are typed by argparse.
    parser.set_defaults(**values)
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    model_args, data_args, training_args, remaining = parser.parse_args_into_dataclasses(
        args=list(overrides), return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        keys = [arg.lstrip("-").split("=")[0] for arg in remaining if arg.startswith("--")] or remaining
        raise _unknown_keys_error(keys, "the command-line overrides")
    return model_args, data_args, training_args


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------


def check_checkpoint(folder: str | os.PathLike, require_optimizer: bool = True) -> Path:
    """Raise a clear error unless `folder` is a complete Trainer checkpoint; return it as a Path.

    Complete means: `trainer_state.json` (written last), `config.json`, readable safetensors weights and, unless
    the run saved only the model, a readable `optimizer.pt` and `scheduler.pt`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {folder} does not exist.")
    missing = [name for name in (TRAINER_STATE, "config.json") if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"Checkpoint folder {folder} is incomplete (missing {', '.join(missing)}): the run was probably "
            "stopped while saving it. Resume from an earlier checkpoint."
        )
    find_weights(folder)  # names a missing or truncated safetensors file
    if require_optimizer:
        # optimizer.pt, or under FSDP optimizer.bin (full state dict) or optimizer_0/ (sharded).
        optimizer = [folder / name for name in ("optimizer.pt", "optimizer.bin") if (folder / name).is_file()]
        if not optimizer and not any(p.is_dir() for p in folder.glob("optimizer_*")):
            raise ValueError(f"Checkpoint folder {folder} has no optimizer state (optimizer.pt).")
        for file in [*optimizer, folder / "scheduler.pt"]:
            # torch.save writes a zip archive; a truncated one has no central directory.
            if not file.is_file() or not zipfile.is_zipfile(file):
                raise ValueError(f"Checkpoint folder {folder} has a missing or truncated {file.name}.")
    return folder


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def quarantine_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Rename every `checkpoint-N` without `trainer_state.json` to `incomplete-checkpoint-N`; return the new paths.

    Trainer's own `get_last_checkpoint` and checkpoint rotation only look at `checkpoint-N`, so a half-written
    folder renamed this way can never be resumed from or mixed with a fresh save at the same step.
    """
    moved = []
    for folder in _checkpoints(output_dir):
        if not (folder / TRAINER_STATE).is_file():
            target = folder.with_name(f"incomplete-{folder.name}")
            shutil.rmtree(target, ignore_errors=True)
            folder.rename(target)
            logger.warning("%s was not completely written; renamed to %s.", folder, target.name)
            moved.append(target)
    return moved


def last_checkpoint(output_dir: str | os.PathLike, require_optimizer: bool = True) -> Path | None:
    """The newest complete checkpoint in `output_dir`, or None; incomplete or corrupt ones are skipped."""
    for folder in reversed(_checkpoints(Path(output_dir))):
        try:
            return check_checkpoint(folder, require_optimizer)
        except (ValueError, FileNotFoundError) as err:
            logger.warning("Skipping %s: %s", folder, err)
    return None


def _resolve_resume(training_args: TrainingArguments) -> Path | None:
    """The checkpoint to resume from (validated), or None; refuses to train over earlier work unasked."""
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.strip().lower() in ("", "false", "no", "none"):
        resume = None
    require_optimizer = not training_args.save_only_model
    output_dir = Path(training_args.output_dir)
    if resume is True or (isinstance(resume, str) and resume.strip().lower() in ("true", "yes", "last", "latest")):
        found = last_checkpoint(output_dir, require_optimizer)
        if found is not None:
            return found
        logger.warning("resume_from_checkpoint: no complete checkpoint in %s; starting from scratch.", output_dir)
    elif resume is not None:
        return check_checkpoint(resume, require_optimizer)
    if not getattr(training_args, "overwrite_output_dir", False):
        existing = [p.name for p in _checkpoints(output_dir)] + [
            name for name in ("config.json",) if (output_dir / name).is_file()
        ]
        if existing:
            raise ValueError(
                f"output_dir {output_dir} already holds a trained model or checkpoints ({', '.join(existing)}) "
                "that this run would overwrite. Pass --resume_from_checkpoint true to continue from its last "
                "complete checkpoint, --overwrite_output_dir true to start over, or choose another output_dir."
            )
    return None


def write_remote_code(folder: str | os.PathLike) -> None:
    """Give a saved ALiBi folder this package's modeling files, the full auto_map and the real class name.

    `save_pretrained` copies the source file of the model's class. Under FSDP2 that class is one torch builds at
    run time (`FSDPAlibiForCausalLM`, defined in torch.distributed.fsdp), so the folder would get torch's FSDP
    sources, an auto_map pointing at them and that class name in `architectures`.
    """
    folder = Path(folder)
    for stray in folder.glob("*.py"):
        if stray.name not in MODELING_FILES:
            stray.unlink()
    package = Path(modeling_alibi.__file__).parent
    for name in MODELING_FILES:
        shutil.copyfile(package / name, folder / name)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = dict(AUTO_MAP)
    config["architectures"] = [AlibiForCausalLM.__name__]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_final_model(trainer: Trainer, output_dir: str | os.PathLike) -> Path:
    """`trainer.save_model(output_dir)`, written so that a killed save never leaves a loadable-looking folder.

    The model is saved into `output_dir/.tmp-final-model` (by every rank: FSDP gathers the weights), then the main
    process removes the old `config.json` and weights, moves the new files in, and `config.json` last.
    """
    output_dir = Path(output_dir)
    staging = output_dir / FINAL_STAGING
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    # _internal_call: save only; with push_to_hub, train() pushes the published folder afterwards.
    trainer.save_model(str(staging), _internal_call=True)
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        (output_dir / "config.json").unlink(missing_ok=True)
        for stale in output_dir.glob("model*.safetensors*"):
            stale.unlink()
        for item in sorted(staging.iterdir()):
            if item.name == "config.json":
                continue
            target = output_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        os.replace(staging / "config.json", output_dir / "config.json")
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ---------------------------------------------------------------------------------------------------------------


def _check_model_folder(name_or_path: str) -> None:
    folder = Path(name_or_path)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model_name_or_path {folder} has no config.json; is it a saved model folder?")
        find_weights(folder)
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        # Not a Hub id ("name" or "org/name"): a local folder that is not there.
        raise FileNotFoundError(f"model_name_or_path {name_or_path!r} does not exist.")


def load_tokenizer(
    model_args: Any, data_args: DataArguments, raw_train: Any, resume: Path | None
) -> PreTrainedTokenizerBase:
    """The tokenizer: given, from the checkpoint being resumed or fine-tuned, or a BPE trained on `raw_train`."""
    if model_args.tokenizer_name:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    # A resumed run must keep the tokenizer its checkpoint was trained with.
    if resume is not None and (resume / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(resume)
    if model_args.model_name_or_path:
        try:
            return AutoTokenizer.from_pretrained(model_args.model_name_or_path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"No tokenizer found with model {model_args.model_name_or_path!r}; set `tokenizer_name`."
            ) from err
    vocab_size = model_args.tokenizer_vocab_size or model_args.vocab_size or AlibiConfig().vocab_size
    return cached_bpe_tokenizer(
        raw_train,
        vocab_size,
        data_args.resolved_cache_dir(),
        text_column=data_args.text_column,
        overwrite=data_args.overwrite_cache,
    )


def build_config(model_args: Any, tokenizer: PreTrainedTokenizerBase) -> PreTrainedConfig:
    """The model config: the checkpoint's (fine-tuning), `config_name`'s or AlibiConfig's, with the recipe's fields.

    Raises:
        ValueError: the tokenizer has more tokens than the model's `vocab_size`.
    """
    overrides = model_args.config_overrides()
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **overrides)
    else:
        # A from-scratch model takes its token ids, and unless the recipe says otherwise its vocabulary, from the
        # tokenizer.
        overrides.setdefault("vocab_size", len(tokenizer))
        overrides.update(
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if model_args.config_name:
            config = AutoConfig.from_pretrained(model_args.config_name, **overrides)
        else:
            config = AlibiConfig(**overrides)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}: token ids "
            f"past {config.vocab_size - 1} would index outside the embedding. Use a tokenizer with at most "
            f"{config.vocab_size} tokens or a larger vocab_size."
        )
    return config


def build_model(model_args: Any, config: PreTrainedConfig) -> PreTrainedModel:
    """Load the checkpoint to fine-tune, or initialise a new model from `config` (seeded by the caller)."""
    if model_args.model_name_or_path:
        return load_model(
            model_args.model_name_or_path, config=config, attn_implementation=model_args.attn_implementation
        )
    return AutoModelForCausalLM.from_config(config, attn_implementation=model_args.attn_implementation)


# ---------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------


def denormals_flushed() -> bool:
    """Whether this process flushes denormal floats to zero (torch has a setter, `set_flush_denormal`, but no getter)."""
    return torch.tensor([1e-40], dtype=torch.float32).mul(1.0).item() == 0.0


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then restore what was set before, even on an error.

    ALiBi's far keys get attention probabilities below fp32's normal range. On some x86 CPUs the SDPA backward
    recomputes them as denormals, which are slow there (a training step took 1.7x the no-bias time on the 2026-11-26
    machine; on the AMD EPYC machine of 2026-11-28 it made no difference). It is process-wide state, so it is opt-in
    (`--flush_denormal true`) and scoped to training, never set by the model.
    """
    previous = denormals_flushed()
    if enabled:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


class ThroughputCallback(TrainerCallback):
    """Time spent in optimizer steps since the last log, for tokens per second."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self._seconds = 0.0
        self._steps = 0
        self._start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self._seconds += time.perf_counter() - self._start
            self._steps += 1
            self._start = None

    def pop(self) -> dict[str, float]:
        """{"tokens_per_second": ...} over the steps since the last call (all ranks together), then reset."""
        if self._steps == 0 or self._seconds <= 0:
            return {}
        rate = self._steps * self.tokens_per_step / self._seconds
        self._seconds, self._steps = 0.0, 0
        return {"tokens_per_second": round(rate, 1)}


class AlibiTrainer(Trainer):
    """Trainer that adds `tokens_per_second` to training logs and `eval_perplexity` to evaluation logs."""

    def __init__(self, *args: Any, tokens_per_step: int, **kwargs: Any) -> None:
        model = kwargs.get("model", args[0] if args else None)
        use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        super().__init__(*args, **kwargs)
        if use_cache is not None:
            # Trainer copies args.use_cache (False) into the config, which every checkpoint would then carry into
            # inference; the model already skips the cache while training.
            self.model.config.use_cache = use_cache
        self.throughput = ThroughputCallback(tokens_per_step)
        self.add_callback(self.throughput)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Every checkpoint and the final save go through here (on every rank), before trainer_state.json.
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save and isinstance(self.accelerator.unwrap_model(self.model), AlibiForCausalLM):
            write_remote_code(output_dir or self.args.output_dir)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Added here rather than in a callback's on_log: Trainer copies `logs` into state.log_history and the
        # reporters before callbacks run, so only this hook reaches all of them (and evaluate()'s return value).
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(logs["eval_loss"]) if logs["eval_loss"] < 700 else math.inf
        if "loss" in logs:
            logs.update(self.throughput.pop())
        super().log(logs, start_time)


@dataclass
class TrainResult:
    """What a finished run leaves: the model folder, the last step and the final metrics."""

    output_dir: Path
    global_step: int
    metrics: dict[str, float]
    log_history: list[dict[str, float]]


def train(
    model_args: Any,
    data_args: DataArguments,
    training_args: TrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Train (or fine-tune, or resume) and save the final model, with its tokenizer, to `output_dir`.

    Args:
        model_args, data_args, training_args: as returned by `parse_recipe` (a plain `TrainingArguments` works too).
        callbacks: extra Trainer callbacks, e.g. `alibi_lm.evaluation.ExtrapolationCallback`.
    """
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(local=False, desc="checking output_dir"):
        if training_args.process_index == 0:
            quarantine_incomplete_checkpoints(output_dir)
            shutil.rmtree(output_dir / FINAL_STAGING, ignore_errors=True)
        resume = _resolve_resume(training_args)
    if model_args.model_name_or_path:
        _check_model_folder(model_args.model_name_or_path)  # a missing or truncated model fails before any work
    set_seed(training_args.seed)

    # The main process downloads, trains the tokenizer and fills the caches; the others then read them.
    with training_args.main_process_first(local=False, desc="preparing data"):
        raw = load_raw_datasets(data_args)
        tokenizer = load_tokenizer(model_args, data_args, raw["train"], resume)
        config = build_config(model_args, tokenizer)
        block_size = data_args.block_size or getattr(config, "max_position_embeddings", None)
        if block_size is None:
            raise ValueError("Set block_size: the model's config has no max_position_embeddings to default to.")
        if isinstance(config, AlibiConfig):
            # It records the length the model was (last) trained at: metadata, never a limit. (For other
            # architectures it sizes a position table, so it stays as it is.)
            config.max_position_embeddings = block_size
        blocks = build_lm_datasets(data_args, tokenizer, block_size, raw=raw)

    model = build_model(model_args, config)
    if isinstance(model, AlibiPreTrainedModel):
        prepare_for_hub(model)  # every checkpoint gets the modeling files and a full auto_map
    # Perplexity needs the loss only; see AlibiTrainingArguments.
    training_args.prediction_loss_only = True
    tokens_per_step = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
        * block_size
    )
    trainer = AlibiTrainer(
        model=model,
        args=training_args,
        train_dataset=blocks["train"],
        eval_dataset=blocks.get("validation"),
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=list(callbacks),
        tokens_per_step=tokens_per_step,
    )
    with flush_denormals(getattr(training_args, "flush_denormal", False)):
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    save_final_model(trainer, output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()

    metrics = dict(output.metrics)
    if "train_samples_per_second" in metrics:
        metrics["train_tokens_per_second"] = metrics["train_samples_per_second"] * block_size
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    if training_args.do_eval and "validation" in blocks:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.save_state()
    return TrainResult(output_dir, trainer.state.global_step, metrics, list(trainer.state.log_history))


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="--key value pairs overriding the recipe: any ModelArguments, DataArguments or TrainingArguments field",
    )


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `alibi-lm train`."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune an ALiBi LM from a YAML recipe",
        description="Train or fine-tune an ALiBi LM with Trainer. Under `accelerate launch -m alibi_lm.train` it "
        "runs on many processes.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run a recipe from parsed command-line arguments."""
    _setup_logging()
    result = train(*parse_recipe(args.recipe, args.overrides), callbacks=getattr(args, "callbacks", ()))
    logger.info("Final model saved to %s after %d steps.", result.output_dir, result.global_step)
    return 0


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if rank == 0 else logging.WARNING
    )


def main(argv: Sequence[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> int:
    """Entry point of `python -m alibi_lm.train` (and `accelerate launch -m alibi_lm.train`)."""
    parser = argparse.ArgumentParser(prog="python -m alibi_lm.train", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    args.callbacks = callbacks
    return run(args)


__all__ = [
    "AlibiTrainer",
    "AlibiTrainingArguments",
    "DataArguments",
    "ModelArguments",
    "ThroughputCallback",
    "TrainResult",
    "check_checkpoint",
    "denormals_flushed",
    "flush_denormals",
    "last_checkpoint",
    "main",
    "parse_recipe",
    "save_final_model",
    "train",
    "write_remote_code",
]

if __name__ == "__main__":
    sys.exit(main())
