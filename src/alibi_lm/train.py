"""One runner for every recipe: train an ALiBi LM from scratch or fine-tune one, with Trainer.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

    alibi-lm train RECIPE.yaml [--key value ...]
    accelerate launch [--config_file recipes/accelerate/NAME.yaml] -m alibi_lm.train RECIPE.yaml [--key value ...]

A recipe is one YAML file whose keys are fields of `ModelArguments`, `DataArguments` (alibi_lm.data) and
`AlibiTrainingArguments` (transformers' `TrainingArguments` plus `overwrite_output_dir`); `--key value` overrides
any of them. `ModelArguments` carries every architecture field of `AlibiConfig`, so a from-scratch recipe is flat.

Checkpoints are Hub folders (safetensors, config with auto_map, modeling files, tokenizer) plus Trainer's state and
`SHA256SUMS` (alibi_lm.integrity). Nothing that holds work is lost to a killed run or a careless re-run:

- every checkpoint is written into `output_dir/.tmp-checkpoints/checkpoint-N` and renamed into place when whole;
- the final model is written into `output_dir/.tmp-final-model`, renamed to `.final-model-staged` when whole, then
  moved into `output_dir` file by file, `config.json` last; a start that finds a staged model finishes the move;
- a start decides first (resume, refuse, or start over) and only then cleans up; it refuses, deleting nothing, when
  `output_dir` holds weights or checkpoints and neither resume nor `--overwrite_output_dir` was asked for;
- `--overwrite_output_dir` removes the old run's checkpoints and final model, and says so;
- resume takes the newest checkpoint whose `trainer_state.json` parses, whose safetensors headers are whole and whose
  weights match `SHA256SUMS`; any newer one is named and skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from . import AlibiConfig, AlibiForCausalLM, AlibiPreTrainedModel
from .blocks import build_lm_datasets, cached_bpe_tokenizer
from .checkpoints import (
    CHECKPOINT_STAGING,
    TRAINER_STATE,
    check_checkpoint,
    finish_checkpoint,
    last_checkpoint,
    plan_start,
    prepare_output_dir,
    run_lock,
    save_final_model,
    write_remote_code,
)
from .data import DataArguments, load_raw_datasets
from .integrity import share_weights_like_config
from .loading import check_model_folder, load_model
from .machine import denormals_flushed
from .model_files import has_tokenizer, prepare_for_hub
from .progress import LineProgressCallback, is_terminal
from .push import push_to_hub
from .recipe import AlibiTrainingArguments, ModelArguments, parse_recipe
from .scoring import perplexity, training_length

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ---------------------------------------------------------------------------------------------------------------


def _check_model_folder(name_or_path: str) -> None:
    folder = Path(name_or_path)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model_name_or_path {folder} has no config.json; is it a saved model folder?")
        check_model_folder(folder)
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        # Not a Hub id ("name" or "org/name"): a local folder that is not there.
        raise FileNotFoundError(f"model_name_or_path {name_or_path!r} does not exist.")


def load_tokenizer(
    model_args: Any, data_args: DataArguments, raw_train: Any, resume: Path | None
) -> PreTrainedTokenizerBase:
    """The tokenizer: given, from the checkpoint being resumed or fine-tuned, or a BPE trained on `raw_train`."""
    if model_args.tokenizer_name:
        name = model_args.tokenizer_name
        if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            # Not a Hub id ("name" or "org/name"): a local folder that is not there (transformers would say the
            # repo id is malformed).
            raise FileNotFoundError(f"tokenizer_name {name!r} does not exist.")
        return AutoTokenizer.from_pretrained(name)
    # A resumed run must keep the tokenizer its checkpoint was trained with.
    if resume is not None and has_tokenizer(resume):
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


def _global_step(checkpoint: Path) -> int:
    return TrainerState.load_from_json(str(checkpoint / TRAINER_STATE)).global_step


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


@contextlib.contextmanager
def naming_disk_errors(folder: str | os.PathLike) -> Iterator[None]:
    """Re-raise a full disk during a save as an OSError that names the folder and the space left.

    safetensors reports it as `SafetensorError: Error while serializing: ... No space left on device (os error 28)`,
    naming no path; torch's and json's writes raise ENOSPC with the file at most.
    """
    try:
        yield
    except Exception as err:
        full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err)
        if not full:
            raise
        folder = Path(folder)
        existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        raise OSError(
            errno.ENOSPC,
            f"no space left on the device while saving {folder} ({free / 2**20:.0f} MiB free there); the save was "
            "not finished and the earlier checkpoints are intact. Free some space (or set save_total_limit) and "
            "resume with --resume_from_checkpoint true",
        ) from err


class TerminatedError(RuntimeError):
    """The run got SIGTERM and stopped after saving a checkpoint of its last step."""


class StopOnSigterm(TrainerCallback):
    """SIGTERM, which schedulers send some time before they kill a job: finish the step, save it, stop.

    Without it a SIGTERM ended the process at once, losing every step since the last checkpoint.
    """

    def __init__(self) -> None:
        self.received = False

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """Take SIGTERM for the block (main thread only, as Python's signals are), then restore the handler."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: Any) -> None:
            logger.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping.")
            self.received = True

        previous = signal.signal(signal.SIGTERM, handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if self.received:
            control.should_save = True
            control.should_training_stop = True


class DivergedError(RuntimeError):
    """Training made a parameter NaN or infinite; the run stops instead of saving it."""


class AlibiTrainer(Trainer):
    """Trainer whose checkpoints appear whole or not at all, and which adds `eval_perplexity` to evaluation logs.

    Each checkpoint is written into `output_dir/.tmp-checkpoints/checkpoint-N`, sealed (remote code, `SHA256SUMS`)
    and renamed to `output_dir/checkpoint-N` (`alibi_lm.checkpoints.finish_checkpoint`), so a kill at any point of a
    save leaves the earlier checkpoints as they were and no `checkpoint-N` that is not whole.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        model = kwargs.get("model", args[0] if args else None)
        use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        super().__init__(*args, **kwargs)
        if use_cache is not None:
            # Trainer copies args.use_cache (False) into the config, which every checkpoint would then carry into
            # inference; the model already skips the cache while training.
            self.model.config.use_cache = use_cache
        self._checkpoint_staging: str | None = None
        self._first_non_finite_loss_step: int | None = None

    def _is_alibi(self) -> bool:
        return isinstance(self.accelerator.unwrap_model(self.model), AlibiForCausalLM)

    def check_finite(self) -> None:
        """Raise `DivergedError` if a parameter holds NaN or infinity: such weights are never saved."""
        bad = [
            name
            for name, parameter in self.accelerator.unwrap_model(self.model).named_parameters()
            # an FSDP2 parameter is a DTensor: each rank checks the shard it holds
            if not bool(torch.isfinite(parameter.to_local() if hasattr(parameter, "to_local") else parameter).all())
        ]
        if bad:
            when = self._first_non_finite_loss_step
            raise DivergedError(
                f"training diverged: {len(bad)} parameter(s) hold NaN or infinity at step {self.state.global_step} "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
                + (f"; the logged loss was first non-finite at step {when}" if when is not None else "")
                + ". Nothing was saved; lower the learning rate (or clip gradients) and start again from the last "
                "checkpoint."
            )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Every checkpoint and final save goes through here, on every rank.
        self.check_finite()
        with naming_disk_errors(output_dir or self.args.output_dir):
            super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            share_weights_like_config(output_dir or self.args.output_dir)
        if self.args.should_save and self._is_alibi():
            write_remote_code(output_dir or self.args.output_dir)

    # transformers has no public hook for where a checkpoint is written: `_save_checkpoint` writes every part of it
    # (weights, optimizer, scheduler, RNG, trainer_state.json) into `_get_output_dir(trial)/checkpoint-N`. These two
    # overrides point that at a staging folder for the length of the save and rename the result into place.
    def _get_output_dir(self, trial: Any) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        staging = run_dir / CHECKPOINT_STAGING
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._checkpoint_staging = str(staging)
        try:
            with naming_disk_errors(staging / name):
                super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()  # every rank has written its part (FSDP shards, RNG states)
        if self.args.should_save:
            target = finish_checkpoint(staging / name, run_dir / name, staging, alibi=self._is_alibi())
            best = self.state.best_model_checkpoint
            if best is not None and Path(best).parent == staging:
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )
            logger.info("Saved %s", target)
        self.accelerator.wait_for_everyone()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Added here rather than in a callback's on_log: Trainer copies `logs` into state.log_history and the
        # reporters before callbacks run, so only this hook reaches all of them (and evaluate()'s return value).
        if "eval_loss" in logs:
            logs["eval_perplexity"] = perplexity(logs["eval_loss"])
        loss = logs.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss) and self._first_non_finite_loss_step is None:
            self._first_non_finite_loss_step = self.state.global_step
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

    The main process holds `output_dir`'s lock (`alibi_lm.checkpoints.run_lock`) for the whole run: a second run
    into the same folder refuses at once and changes nothing.

    Args:
        model_args, data_args, training_args: as returned by `parse_recipe` (a plain `TrainingArguments` works too).
        callbacks: extra Trainer callbacks, e.g. `alibi_lm.evaluation.ExtrapolationCallback`.
    """
    main_process = training_args.process_index == 0
    with run_lock(training_args.output_dir) if main_process else contextlib.nullcontext():
        return _train(model_args, data_args, training_args, callbacks)


def check_sharding_supported(training_args: TrainingArguments) -> None:
    """Refuse FSDP on CPU processes, where Accelerate would quietly run plain data parallel instead.

    Accelerate (1.16) turns an FSDP config into `DistributedType.FSDP` only on GPU-like devices; on CPU ranks its
    state stays `MULTI_CPU`, Trainer wraps the model in DDP, and every rank holds the whole model and optimizer.
    """
    requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(training_args.fsdp)
    if requested and training_args.world_size > 1 and training_args.device.type == "cpu":
        import accelerate

        raise ValueError(
            f"FSDP was requested, but these {training_args.world_size} processes run on the CPU, where Accelerate "
            f"{accelerate.__version__} runs plain data parallel instead (DistributedType.MULTI_CPU): every rank would "
            "hold the whole model. Train with FSDP on GPUs, drop the FSDP config to train data parallel on CPUs "
            "(recipes/accelerate/multi-gpu.yaml), or see sharding on CPU ranks with recipes/scaling/fsdp_cpu.py."
        )


def _train(
    model_args: Any, data_args: DataArguments, training_args: TrainingArguments, callbacks: Sequence[TrainerCallback]
) -> TrainResult:
    check_sharding_supported(training_args)
    given = bool(model_args.tokenizer_name or model_args.model_name_or_path)
    data_args.check_trainable(training_args.max_steps, tokenizer_given=given)
    output_dir = Path(training_args.output_dir)
    # Decide first (every process reads the same folder), change the folder only after: a run that refuses to
    # start leaves everything as it found it.
    plan = plan_start(
        output_dir,
        training_args.resume_from_checkpoint,
        overwrite=getattr(training_args, "overwrite_output_dir", False),
        require_optimizer=not training_args.save_only_model,
    )
    if model_args.model_name_or_path:
        _check_model_folder(model_args.model_name_or_path)  # a missing or damaged model fails before any work
    with training_args.main_process_first(local=False, desc="preparing output_dir"):
        if training_args.process_index == 0:
            prepare_output_dir(plan)
    resume = plan.resume
    set_seed(training_args.seed)

    # The main process downloads, trains the tokenizer and fills the caches; the others then read them.
    with training_args.main_process_first(local=False, desc="preparing data"):
        raw = load_raw_datasets(data_args)
        tokenizer = load_tokenizer(model_args, data_args, raw["train"], resume)
        config = build_config(model_args, tokenizer)
        block_size = data_args.block_size or training_length(config)
        if block_size is None:
            raise ValueError("Set block_size: the model's config has no train_length or max_position_embeddings.")
        if isinstance(config, AlibiConfig):
            # The length the model was (last) trained at; a context derived from it moves with it. (For other
            # architectures max_position_embeddings sizes a position table, so it stays as it is.)
            config.set_train_length(block_size)
        # A stream has a shard per DataLoader worker, so that each worker tokenizes its share of the documents.
        shards = max(1, training_args.dataloader_num_workers)
        blocks = build_lm_datasets(data_args, tokenizer, block_size, raw=raw, seed=training_args.seed, shards=shards)

    # A checkpoint at max_steps is a finished run whose final save was cut short. Trainer would train one step past
    # max_steps from it (transformers 5.24 checks the step count only after a step), so it is saved as it is.
    finished = resume is not None and 0 < training_args.max_steps <= _global_step(resume)
    if finished:
        logger.info(
            "%s is at max_steps=%d: nothing left to train; saving it as the final model.",
            resume,
            training_args.max_steps,
        )
        model = load_model(resume, attn_implementation=model_args.attn_implementation)
    else:
        model = build_model(model_args, config)
    if isinstance(model, AlibiPreTrainedModel):
        prepare_for_hub(model, tokenizer)  # every checkpoint gets the modeling files and a full auto_map
    # Perplexity needs the loss only; see AlibiTrainingArguments.
    training_args.prediction_loss_only = True
    # Trainer's default leaves NaN and infinite losses out of the logged mean, so a diverged run logs 0.
    training_args.logging_nan_inf_filter = False
    # Trainer's own push uploads the whole output_dir (training_args.bin, results, any stray file) at every save;
    # the final model goes up once, at the end, through `alibi_lm.push.push_to_hub` and its allow-list.
    # Off a terminal (a log file, CI) tqdm's redraws would all stay: a line every few percent instead, and Trainer
    # prints each log dict as a line (its PrinterCallback).
    line_progress = not training_args.disable_tqdm and not is_terminal()
    if line_progress:
        training_args.disable_tqdm = True
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    trainer = AlibiTrainer(
        model=model,
        args=training_args,
        train_dataset=blocks["train"],
        eval_dataset=blocks.get("validation"),
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[*callbacks, *([LineProgressCallback()] if line_progress else [])],
    )
    if finished:
        trainer.state = TrainerState.load_from_json(str(resume / TRAINER_STATE))
        metrics: dict[str, float] = {}
    else:
        sigterm = StopOnSigterm()
        trainer.add_callback(sigterm)
        with flush_denormals(getattr(training_args, "flush_denormal", False)), sigterm.listening():
            metrics = dict(trainer.train(resume_from_checkpoint=str(resume) if resume else None).metrics)
        if sigterm.received:
            raise TerminatedError(
                f"stopped by SIGTERM after step {trainer.state.global_step}, saved as "
                f"{output_dir / f'{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}'}; run the same command with "
                "--resume_from_checkpoint true to go on from it."
            )
    save_final_model(trainer, output_dir)
    if push and training_args.should_save:
        push_to_hub(
            output_dir,
            training_args.hub_model_id or output_dir.name,
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )

    if "train_samples_per_second" in metrics:
        metrics["train_tokens_per_second"] = metrics["train_samples_per_second"] * block_size
    if metrics:
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
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    args.callbacks = callbacks
    # Imported here: cli imports this module's siblings lazily, and this is the only thing train needs from it.
    from .cli import run_reporting_errors

    return run_reporting_errors("train", lambda: run(args), debug=args.debug)


__all__ = [
    "AlibiTrainer",
    "AlibiTrainingArguments",
    "DataArguments",
    "ModelArguments",
    "TrainResult",
    "check_checkpoint",
    "denormals_flushed",
    "flush_denormals",
    "DivergedError",
    "StopOnSigterm",
    "TerminatedError",
    "last_checkpoint",
    "main",
    "parse_recipe",
    "save_final_model",
    "train",
    "write_remote_code",
]

if __name__ == "__main__":
    sys.exit(main())
