"""A run's folder on disk: saves that a kill cannot half-finish, resume from the last good checkpoint, no silent loss.

`alibi_lm.train` calls these; they know nothing of recipes. The layout of `output_dir`:

    checkpoint-N/            whole checkpoints only: written in .tmp-checkpoints/checkpoint-N, then renamed here
    .tmp-checkpoints/        checkpoints being written (a kill leaves a partial one here, never in checkpoint-N)
    .tmp-final-model/        the final model being written
    .final-model-staged/     the whole final model, being moved into output_dir (a start finishes the move)
    config.json, model.safetensors, SHA256SUMS, tokenizer files, modeling files: the final model

A run holds the folder's lock (`run_lock`, a file beside it) from before it reads the folder until it ends: a second run
into the same folder refuses at once, naming the first, and changes nothing. A start first decides (`plan_start`): resume from a checkpoint, refuse, or start over; nothing is written or deleted
before that. Then `prepare_output_dir` finishes an interrupted final-model move, puts aside partial saves, and, for
`--overwrite_output_dir` only, removes the old run's checkpoints and final model, naming them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import AlibiForCausalLM
from .integrity import (
    CHECKSUMS_FILE,
    IntegrityError,
    check_links_stay_inside,
    read_checksums,
    verify_checksums,
    write_checksums,
)
from .loading import find_weights
from .model_files import MODELING_FILES, copy_modeling_files, with_auto_map

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # Trainer writes it last in a checkpoint
CHECKPOINT_STAGING = ".tmp-checkpoints"
FINAL_STAGING = ".tmp-final-model"
FINAL_STAGED = ".final-model-staged"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Files whose presence means a folder holds a run's work; never overwritten without --overwrite_output_dir.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
# The final model's own files (what `--overwrite_output_dir` removes besides checkpoints; tokenizer files are
# rewritten by the new run and user files are never touched).
FINAL_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", CHECKSUMS_FILE)


class OutputDirInUseError(ValueError):
    """output_dir holds earlier work and the run was not told to resume or overwrite it."""


class OutputDirLockedError(OutputDirInUseError):
    """Another run is training into output_dir right now."""


LOCK_SUFFIX = ".alibi-lm.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(output_dir: str | os.PathLike) -> Path:
    """Where `run_lock` keeps the lock of `output_dir`: beside it, so that locking changes nothing inside it."""
    folder = Path(output_dir).resolve()
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


@contextmanager
def run_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of `output_dir` (`lock_path`: `.<name>.alibi-lm.lock` beside it) for the block: one run per folder.

    An advisory `flock`, which the kernel releases when the process ends however it ends, so a killed run leaves
    no lock that holds: its file, naming the dead process, is reported and taken over. A second run refuses at once
    with `OutputDirLockedError`, naming the first run's process, and writes nothing. The lock file lives beside the
    folder, not in it, so nothing in the folder changes for it, and it is removed on leaving the block.

    Raises:
        OutputDirLockedError: another process holds the lock.
    """
    path = lock_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "a process that has not written its name yet"
        handle.close()
        raise OutputDirLockedError(
            f"output_dir {output_dir} is in use by another run ({owner}); nothing was changed. Wait for it to end "
            f"or stop it, or choose another output_dir. (The lock: {path}.)"
        ) from None
    try:
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            pid = re.search(r"pid (\d+)", previous)
            gone = pid is not None and not _alive(int(pid.group(1)))
            logger.warning(
                "%s: a lock left by an earlier run that did not end cleanly (%s%s); taking it over.",
                output_dir, previous, ", no longer running" if gone else "",
            )  # fmt: skip
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()  # releases the lock


# ---------------------------------------------------------------------------------------------------------------
# What is in a folder
# ---------------------------------------------------------------------------------------------------------------


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def run_artifacts(output_dir: str | os.PathLike) -> list[str]:
    """Names of the entries of `output_dir` that hold a run's work: checkpoints, staged or partial saves, weights and
    the final model's config. Empty for a missing or unrelated folder."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for entry in sorted(output_dir.iterdir()):
        name = entry.name
        if entry.is_dir():
            if _CHECKPOINT_RE.match(name) or name.startswith(
                ("incomplete-", CHECKPOINT_STAGING, FINAL_STAGING, FINAL_STAGED)
            ):
                found.append(name + "/")
        elif name.endswith(WEIGHT_SUFFIXES) or name in FINAL_MODEL_FILES or name == TRAINER_STATE:
            found.append(name)
    return found


def check_checkpoint(folder: str | os.PathLike, require_optimizer: bool = True) -> Path:
    """Raise a clear error unless `folder` is a whole Trainer checkpoint; return it as a Path.

    Whole means: `trainer_state.json` that parses, `config.json`, safetensors weights whose headers are whole and
    which match `SHA256SUMS` when there is one, and, unless the run saved only the model, a readable optimizer and
    scheduler state.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: anything above is missing or damaged; the message names the file.
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
    try:
        json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"Checkpoint folder {folder} has a damaged {TRAINER_STATE} ({err}): it was cut short while being written."
        ) from None
    check_links_stay_inside(folder)  # resume reads only what the run wrote, never what a link points at
    find_weights(folder)  # names a missing or truncated safetensors file
    verify_checksums(folder)  # names a weights file whose bytes changed since the save
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


def last_checkpoint(output_dir: str | os.PathLike, require_optimizer: bool = True) -> Path | None:
    """The newest whole checkpoint in `output_dir`, or None; each newer, damaged one is named in a warning."""
    for folder in reversed(checkpoints(output_dir)):
        try:
            return check_checkpoint(folder, require_optimizer)
        except (ValueError, FileNotFoundError) as err:
            logger.warning("Skipping %s: %s", folder.name, err)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Deciding how a run starts, then preparing the folder
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartPlan:
    """What a run does with its output_dir: resume from `resume` (or start fresh), and whether it overwrites."""

    output_dir: Path
    resume: Path | None
    overwrite: bool


def _resume_request(value: Any) -> bool | str | None:
    """TrainingArguments.resume_from_checkpoint as True (the last checkpoint), a path, or None."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    text = str(value).strip()
    if text.lower() in ("", "false", "no", "none"):
        return None
    if text.lower() in ("true", "yes", "last", "latest"):
        return True
    return text


def plan_start(
    output_dir: str | os.PathLike, resume_from_checkpoint: Any, overwrite: bool, require_optimizer: bool = True
) -> StartPlan:
    """Decide how a run starts, reading `output_dir` and writing nothing.

    Raises:
        OutputDirInUseError: output_dir holds checkpoints, weights or a final model, and the run was told neither to
            resume nor to overwrite (or was told to resume but no whole checkpoint is left).
        ValueError / FileNotFoundError: an explicit resume checkpoint is missing or damaged.
    """
    output_dir = Path(output_dir)
    request = _resume_request(resume_from_checkpoint)
    if isinstance(request, str):
        return StartPlan(output_dir, check_checkpoint(request, require_optimizer), overwrite)
    if request is True:
        found = last_checkpoint(output_dir, require_optimizer)
        if found is not None:
            return StartPlan(output_dir, found, overwrite)
        if not run_artifacts(output_dir):
            logger.warning("resume_from_checkpoint: %s has no checkpoint yet; starting from scratch.", output_dir)
            return StartPlan(output_dir, None, overwrite)
    if overwrite:
        return StartPlan(output_dir, None, True)
    existing = run_artifacts(output_dir)
    if existing:
        shown = ", ".join(existing[:6]) + (f" and {len(existing) - 6} more" if len(existing) > 6 else "")
        hint = (
            "no whole checkpoint is left to resume from; "
            if request is True
            else "pass --resume_from_checkpoint true to continue from its last whole checkpoint, "
        )
        raise OutputDirInUseError(
            f"output_dir {output_dir} already holds a run's work ({shown}); nothing was changed. To go on, {hint}"
            "--overwrite_output_dir true to remove it and start over, or choose another output_dir."
        )
    return StartPlan(output_dir, None, False)


def install_staged_final_model(output_dir: str | os.PathLike) -> bool:
    """Move a whole staged final model (`.final-model-staged`) into `output_dir`; return whether there was one.

    `config.json` is removed first and moved in last, so until the move is done the folder does not look like a
    loadable model, and the staged folder keeps whatever has not been moved yet; running this again (after a kill)
    finishes the move. Weights shards of the old model that the new one does not have are removed.
    """
    output_dir = Path(output_dir)
    staged = output_dir / FINAL_STAGED
    if not staged.is_dir():
        return False
    new_weights = read_checksums(staged)
    if new_weights is not None:  # first pass: the manifest has not been moved yet
        (output_dir / "config.json").unlink(missing_ok=True)
        for stale in output_dir.glob("model*.safetensors*"):
            if stale.name not in new_weights and stale.is_file():
                stale.unlink()
    last = [CHECKSUMS_FILE, "config.json"]
    for item in sorted(staged.iterdir(), key=lambda p: (p.name in last, last.index(p.name) if p.name in last else 0)):
        target = output_dir / item.name
        if item.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staged.rmdir()
    return True


def _set_aside(path: Path) -> Path:
    """Rename `path` to `incomplete-<name>` (numbered if taken); return the new path."""
    target = path.with_name(f"incomplete-{path.name.lstrip('.')}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"incomplete-{path.name.lstrip('.')}-{number}")
    path.rename(target)
    return target


def prepare_output_dir(plan: StartPlan) -> None:
    """Make `output_dir` ready for the run `plan` describes (main process only, after `plan_start`).

    - A whole staged final model from a killed run is moved into place.
    - Partial saves in `.tmp-checkpoints/` and `.tmp-final-model/` are removed (the run redoes them); a
      `checkpoint-N` without `trainer_state.json` (left by plain Trainer) is renamed `incomplete-checkpoint-N`.
    - With `overwrite` and no resume: the old run's checkpoints, partial saves and final model are removed, each
      named in the log, so that no later resume can pick them up.
    """
    output_dir = plan.output_dir
    if not output_dir.is_dir():
        return
    if install_staged_final_model(output_dir):
        logger.warning("Finished moving the final model saved by an interrupted run into %s.", output_dir)
    if plan.overwrite and plan.resume is None:
        removed = []
        for entry in sorted(output_dir.iterdir()):
            run_dir = entry.is_dir() and (
                _CHECKPOINT_RE.match(entry.name) or entry.name.startswith(("incomplete-", CHECKPOINT_STAGING))
            )
            if run_dir or entry.name == FINAL_STAGING:
                shutil.rmtree(entry)
                removed.append(entry.name + "/")
            elif entry.is_file() and (
                entry.name.endswith(WEIGHT_SUFFIXES) or entry.name in FINAL_MODEL_FILES or entry.name == TRAINER_STATE
            ):
                entry.unlink()
                removed.append(entry.name)
        if removed:
            logger.warning(
                "overwrite_output_dir: removed the previous run's %s from %s.", ", ".join(removed), output_dir
            )
        return
    for name in (CHECKPOINT_STAGING, FINAL_STAGING):
        if (output_dir / name).exists():
            # Only whole saves ever leave these folders, so what is left in them is the part of a save a kill cut
            # short; the run is about to redo it.
            shutil.rmtree(output_dir / name)
            logger.warning(
                "Removed %s/: the part of a save that an earlier run did not finish (it was killed, or the save "
                "failed, e.g. on a full disk).",
                name,
            )
    for folder in checkpoints(output_dir):
        if not (folder / TRAINER_STATE).is_file():
            logger.warning("%s was not completely written; renamed to %s.", folder, _set_aside(folder).name)


# ---------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------


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
    copy_modeling_files(folder)
    config_path = folder / "config.json"
    config = with_auto_map(json.loads(config_path.read_text(encoding="utf-8")))
    config["architectures"] = [AlibiForCausalLM.__name__]
    _write_atomic(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def finish_checkpoint(partial: Path, target: Path, partial_root: Path, alibi: bool) -> Path:
    """Seal a checkpoint written into `partial` and rename it to `target` (main process).

    Trainer recorded the checkpoint's own path (inside `partial_root`) as `best_model_checkpoint` when it is the
    best so far; that path is corrected in the saved `trainer_state.json` before the rename, so the rename is the
    last step and the checkpoint is whole the moment it appears.
    """
    if alibi:
        write_remote_code(partial)
    state_file = partial / TRAINER_STATE
    state = json.loads(state_file.read_text(encoding="utf-8"))
    best = state.get("best_model_checkpoint")
    if isinstance(best, str) and Path(best).parent == partial_root:
        state["best_model_checkpoint"] = str(target.parent / Path(best).name)
        _write_atomic(state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")
    write_checksums(partial)
    if target.exists():  # the same step saved again (a resumed run re-saving its last step): the new one wins
        shutil.rmtree(target)
    os.replace(partial, target)
    if not any(partial_root.iterdir()):
        partial_root.rmdir()
    return target


def save_final_model(trainer: Trainer, output_dir: str | os.PathLike) -> Path:
    """`trainer.save_model(output_dir)`, written so that a killed save never loses a model or leaves a half one.

    Every rank saves into `output_dir/.tmp-final-model` (FSDP gathers the weights; `AlibiTrainer.save_model` adds
    the remote code); the main process adds `SHA256SUMS`, renames the folder `.final-model-staged` (now whole), and moves it into `output_dir`
    (`install_staged_final_model`).
    """
    output_dir = Path(output_dir)
    staging = output_dir / FINAL_STAGING
    if trainer.args.should_save and staging.exists():
        shutil.rmtree(staging)  # this run's own partial save (prepare_output_dir set older ones aside)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        write_checksums(staging)
        staged = output_dir / FINAL_STAGED
        if staged.exists():
            shutil.rmtree(staged)
        os.replace(staging, staged)
        install_staged_final_model(output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


__all__ = [
    "CHECKPOINT_STAGING",
    "FINAL_STAGED",
    "FINAL_STAGING",
    "IntegrityError",
    "LOCK_SUFFIX",
    "lock_path",
    "OutputDirInUseError",
    "OutputDirLockedError",
    "StartPlan",
    "check_checkpoint",
    "run_lock",
    "checkpoints",
    "finish_checkpoint",
    "install_staged_final_model",
    "last_checkpoint",
    "plan_start",
    "prepare_output_dir",
    "run_artifacts",
    "save_final_model",
    "write_remote_code",
]
