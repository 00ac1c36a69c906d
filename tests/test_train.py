"""alibi_lm.train: recipes, Hub-format checkpoints, fine-tuning, resume, bad input and two-process training."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

from alibi_lm import AlibiForCausalLM, cli
from alibi_lm.blocks import build_lm_datasets, train_bpe_tokenizer
from alibi_lm.checkpoints import FINAL_STAGED, StartPlan, prepare_output_dir
from alibi_lm.data import DataArguments, wikipedia_texts
from alibi_lm.integrity import verify_checksums
from alibi_lm.model_files import MODELING_FILES
from alibi_lm.modeling.configuration_alibi import AUTO_MAP
from alibi_lm.train import (
    AlibiTrainer,
    check_checkpoint,
    denormals_flushed,
    flush_denormals,
    parse_recipe,
    save_final_model,
    train,
)
from alibi_lm.train import main as train_main
from tests.tiny import AUTO_CLASSES, tiny_model

ROOT = Path(__file__).resolve().parents[1]
HUB_FILES = ("config.json", "model.safetensors", "configuration_alibi.py", "modeling_alibi.py", "tokenizer.json")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Wikipedia text files and a shared cache (the BPE tokenizer is trained once per module)."""
    root = tmp_path_factory.mktemp("train")
    (root / "train.txt").write_text("\n".join(wikipedia_texts("train")[:300]))
    (root / "validation.txt").write_text("\n".join(wikipedia_texts("validation")[:30]))
    return root


TINY_MODEL = {
    "vocab_size": 320,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}


def tiny_recipe(workdir: Path, name: str, architecture: bool = True, **values) -> Path:
    """A recipe on the Wikipedia text files, with the tiny architecture unless `architecture` is False (fine-tuning);
    keyword arguments add or replace keys."""
    recipe = {
        "train_file": str(workdir / "train.txt"),
        "validation_file": str(workdir / "validation.txt"),
        "cache_dir": str(workdir / "cache"),
        "output_dir": str(workdir / name),
        **(TINY_MODEL if architecture else {}),
        "block_size": 32,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "max_eval_samples": 8,
        "learning_rate": 3e-3,
        "max_steps": 6,
        "logging_steps": 1,
        "save_steps": 3,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
        **values,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


class KillAt(TrainerCallback):
    """Stands in for a killed job: raises once `step` is done, before anything after it is saved."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def losses(log_history: list[dict]) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}


@pytest.fixture(scope="module")
def uninterrupted(workdir) -> Path:
    """6 steps through `alibi-lm train`, checkpoints at 3 and 6, evaluation at each checkpoint."""
    recipe = tiny_recipe(workdir, "full", eval_strategy="steps", eval_steps=3)
    assert cli.main(["train", str(recipe), "--max_steps", "6"]) == 0
    return workdir / "full"


# ---------------------------------------------------------------------------------------------------------------
# Recipes and arguments


def test_overrides_win_over_the_recipe_and_are_typed(workdir):
    model_args, data_args, training_args = parse_recipe(
        tiny_recipe(workdir, "parse"), ["--max_steps", "2", "--hidden_size=48", "--packing", "true"]
    )
    assert training_args.max_steps == 2 and model_args.hidden_size == 48 and data_args.packing is True
    assert training_args.learning_rate == 3e-3 and data_args.block_size == 32
    assert model_args.config_overrides() == {
        "vocab_size": 320,
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    }


def test_unknown_recipe_key_lists_the_valid_keys(workdir):
    recipe = tiny_recipe(workdir, "typo", hiden_size=64)
    with pytest.raises(ValueError, match=r"'hiden_size' \(did you mean 'hidden_size'\?\)") as err:
        parse_recipe(recipe)
    for key in ("ModelArguments", "hidden_size", "block_size", "learning_rate", "model_name_or_path"):
        assert key in str(err.value)
    with pytest.raises(ValueError, match="(?s)'lerning_rate'.*Valid keys"):
        parse_recipe(tiny_recipe(workdir, "ok"), ["--lerning_rate", "1e-3"])


def test_block_size_below_two_is_rejected_at_parse_time(workdir):
    with pytest.raises(ValueError, match="block_size must be at least 2"):
        parse_recipe(tiny_recipe(workdir, "b1", block_size=1))


def test_missing_data_file_is_named(workdir):
    args = parse_recipe(tiny_recipe(workdir, "nofile", train_file=str(workdir / "absent.txt")))
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        train(*args)


def test_tokenizer_larger_than_vocab_size_is_rejected_before_training(workdir):
    args = parse_recipe(tiny_recipe(workdir, "vocab", vocab_size=300, tokenizer_vocab_size=320))
    with pytest.raises(ValueError, match="tokenizer has 320 tokens but the model's vocab_size is 300"):
        train(*args)
    assert not (workdir / "vocab" / "config.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def test_every_checkpoint_is_a_hub_folder_and_logs_throughput_and_perplexity(uninterrupted):
    for folder in (uninterrupted / "checkpoint-3", uninterrupted / "checkpoint-6", uninterrupted):
        for name in HUB_FILES:
            assert (folder / name).is_file(), folder / name
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) == AUTO_CLASSES
        assert (config["train_length"], config["max_position_embeddings"]) == (32, 512) and config["use_cache"] is True
        # Readable by whoever may read its config (safetensors 0.8 alone writes weights 0600 whatever the umask).
        assert (folder / "model.safetensors").stat().st_mode & 0o777 == (folder / "config.json").stat().st_mode & 0o777
    assert not (uninterrupted / ".tmp-final-model").exists()
    history = json.loads((uninterrupted / "trainer_state.json").read_text())["log_history"]
    # Trainer's own count (include_num_input_tokens_seen, on by default here): every input token of every step.
    logged = [e for e in history if "loss" in e]
    assert all(e["train_tokens_per_second"] > 0 for e in logged)
    assert [e["num_input_tokens_seen"] for e in logged] == [4 * 32 * e["step"] for e in logged]
    evals = [e for e in history if "eval_loss" in e]
    assert len(evals) == 3  # steps 3 and 6, and the final evaluation
    for entry in evals:
        assert entry["eval_perplexity"] == pytest.approx(math.exp(entry["eval_loss"]))
    step = losses(history)
    assert step[6] < step[1]


def test_resume_after_a_kill_matches_the_uninterrupted_run(workdir, uninterrupted):
    recipe = tiny_recipe(workdir, "killed", eval_strategy="steps", eval_steps=3)
    with pytest.raises(KeyboardInterrupt):
        train(*parse_recipe(recipe), callbacks=[KillAt(4)])
    killed = workdir / "killed"
    assert (killed / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (killed / "config.json").exists()  # no final model, nothing that loads as one
    # A save that was cut short: weights there, trainer_state.json not yet written.
    shutil.copytree(killed / "checkpoint-3", killed / "checkpoint-5")
    (killed / "checkpoint-5" / "trainer_state.json").unlink()

    result = train(*parse_recipe(recipe, ["--resume_from_checkpoint", "true"]))

    assert (killed / "incomplete-checkpoint-5").is_dir() and not (killed / "checkpoint-5").exists()
    expected = load_file(uninterrupted / "model.safetensors")
    resumed = load_file(killed / "model.safetensors")
    for name, tensor in expected.items():
        # Same seed, same data order, restored RNG and optimizer: identical up to float reassociation.
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)
    history = json.loads((uninterrupted / "trainer_state.json").read_text())["log_history"]
    want, got = losses(history), losses(result.log_history)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # the log of steps 1-3 comes back from the checkpoint
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(want[step], abs=1e-5)


def test_existing_checkpoints_are_not_overwritten_without_resume(workdir, uninterrupted):
    args = parse_recipe(tiny_recipe(workdir, "full"))
    with pytest.raises(ValueError, match="already holds a run's work"):
        train(*args)


def test_truncated_or_incomplete_checkpoint_gives_a_clear_error(workdir, uninterrupted):
    broken = workdir / "broken"
    shutil.copytree(uninterrupted / "checkpoint-3", broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    args = parse_recipe(tiny_recipe(workdir, "resume-broken"), ["--resume_from_checkpoint", str(broken)])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        train(*args)
    (broken / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match="incomplete .*trainer_state.json"):
        check_checkpoint(broken)
    recipe = tiny_recipe(workdir, "ft-broken", architecture=False, model_name_or_path=str(broken))
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        train(*parse_recipe(recipe))


def test_interrupted_final_save_is_finished_by_the_next_start(workdir, uninterrupted, monkeypatch):
    out = workdir / "interrupted-save"
    shutil.copytree(uninterrupted, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    (out / "model.safetensors").unlink()  # the old final model's weights: about to be replaced anyway

    class FakeTrainer:  # what save_final_model uses of a Trainer, on one process
        args = type("Args", (), {"should_save": True})()
        accelerator = type("Acc", (), {"wait_for_everyone": staticmethod(lambda: None)})()

        @staticmethod
        def save_model(folder):
            shutil.copytree(uninterrupted, folder, ignore=shutil.ignore_patterns("checkpoint-*", "SHA256SUMS"))

    calls = []
    real_replace = os.replace

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # staging -> staged, then two files moved in: killed on the third
            raise KeyboardInterrupt("killed while moving files")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_final_model(FakeTrainer(), out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (out / "config.json").exists()  # mid-move, the folder does not look like a model
    with pytest.raises((OSError, ValueError)):
        AutoModelForCausalLM.from_pretrained(out)
    assert (out / FINAL_STAGED / "config.json").is_file()

    # The next start that goes on (resuming, say) finishes the move before anything else.
    prepare_output_dir(StartPlan(out, resume=None, overwrite=False))
    assert not (out / FINAL_STAGED).exists()
    assert out / "model.safetensors" in verify_checksums(out, required=True)  # config, tokenizer, code too
    assert type(AutoModelForCausalLM.from_pretrained(out)) is AlibiForCausalLM


def test_saves_carry_the_package_modeling_files_even_when_the_class_was_rebuilt(tmp_path):
    # FSDP2 swaps the model's class for one torch builds at run time (FSDPAlibiForCausalLM, defined in torch), and
    # save_pretrained copies the source of whatever module defines the class; here that module is this test file.
    model = tiny_model()
    model.__class__ = type("FSDPAlibiForCausalLM", (AlibiForCausalLM,), {"__module__": __name__})
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    AlibiTrainer(model=model, args=args).save_model(str(tmp_path / "saved"))

    assert {p.name for p in (tmp_path / "saved").glob("*.py")} == set(MODELING_FILES)
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["architectures"] == ["AlibiForCausalLM"]
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "saved")) is AlibiForCausalLM


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning


def test_finetuning_lowers_the_loss_on_new_text_and_loads_with_from_pretrained(workdir, uninterrupted):
    lines = [f"Item {i} weighs {i % 7 + 2} kilograms and costs {i % 5 + 1} coins." for i in range(300)]
    (workdir / "new.txt").write_text("\n".join(lines[:270]))
    (workdir / "new-val.txt").write_text("\n".join(lines[270:]))
    recipe = tiny_recipe(
        workdir,
        "finetuned",
        model_name_or_path=str(uninterrupted),
        train_file=str(workdir / "new.txt"),
        validation_file=str(workdir / "new-val.txt"),
        eval_strategy="steps",
        eval_steps=8,
        eval_on_start=True,
        save_strategy="no",
        max_steps=8,
        architecture=False,
    )
    result = train(*parse_recipe(recipe))

    evals = [e["eval_loss"] for e in result.log_history if "eval_loss" in e]
    assert evals[-1] < evals[0] - 0.5, evals
    model = AutoModelForCausalLM.from_pretrained(result.output_dir)
    assert isinstance(model, AlibiForCausalLM) and model.config.hidden_size == 32
    data_args = DataArguments(
        train_file=str(workdir / "new.txt"),
        validation_file=str(workdir / "new-val.txt"),
        max_eval_samples=8,
        cache_dir=str(workdir / "cache"),
    )
    blocks = build_lm_datasets(data_args, AutoTokenizer.from_pretrained(result.output_dir), block_size=32)[
        "validation"
    ]
    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss == pytest.approx(evals[-1], abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Two processes


DRIVER = """
import hashlib, json, os, sys
from transformers import TrainerCallback
from alibi_lm.train import main


class Probe(TrainerCallback):
    def __init__(self):
        self.batches = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, inputs, kw):
            if module.training:
                self.batches.append(kw["input_ids"][:, :8].tolist())
                self.packed = kw.get("document_ids") is not None
        model.register_forward_pre_hook(record, with_kwargs=True)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
        with open(os.path.join(args.output_dir, f"probe-{args.process_index}.json"), "w") as f:
            probe = {"batches": self.batches, "params": digest, "world_size": args.world_size, "packed": self.packed}
            json.dump(probe, f)


sys.exit(main(sys.argv[1:], callbacks=[Probe()]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("streaming, workers", [(False, 0), (True, 0), (True, 2)])
def test_two_processes_see_different_data_and_end_with_identical_weights(workdir, streaming, workers):
    driver = workdir / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    name = f"ddp-{'streaming' if streaming else 'map'}-{workers}"
    stream = {}
    if streaming:  # a stream cannot train a tokenizer; process 0 reads it (in its workers: a shard each) for both
        tokenizer = train_bpe_tokenizer(Dataset.from_dict({"text": wikipedia_texts("train")[:300]}), vocab_size=320)
        tokenizer.save_pretrained(workdir / "tokenizer")
        stream = {"streaming": True, "tokenizer_name": str(workdir / "tokenizer"), "dataloader_num_workers": workers}
    recipe = tiny_recipe(
        workdir, name, max_steps=8, save_steps=8, per_device_train_batch_size=2, packing=True, **stream
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate" / "multi-gpu.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(driver), str(recipe),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    out = workdir / name
    probes = [json.loads((out / f"probe-{rank}.json").read_text()) for rank in (0, 1)]
    assert [p["world_size"] for p in probes] == [2, 2]
    assert all(p["packed"] for p in probes)  # document_ids reach the model's forward
    assert len(probes[0]["batches"]) == len(probes[1]["batches"]) == 8
    seen = [{tuple(row) for batch in p["batches"] for row in batch} for p in probes]
    assert len(seen[0]) == len(seen[1]) == 16 and not seen[0] & seen[1]  # each rank its own shard
    assert probes[0]["params"] == probes[1]["params"]  # DDP keeps the replicas bit-identical
    step = losses(json.loads((out / "trainer_state.json").read_text())["log_history"])
    assert sorted(step) == list(range(1, 9))
    assert (step[7] + step[8]) / 2 < (step[1] + step[2]) / 2 - 0.1
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


# ---------------------------------------------------------------------------------------------------------------
# Process-wide float state


def test_flush_denormals_is_scoped_and_restored_after_an_error():
    assert not denormals_flushed()
    with flush_denormals():
        assert denormals_flushed() and (torch.tensor([1e-40]) * 1.0).item() == 0.0
    assert not denormals_flushed()
    with pytest.raises(RuntimeError, match="boom"), flush_denormals():
        raise RuntimeError("boom")
    assert not denormals_flushed()
    with flush_denormals(enabled=False):
        assert not denormals_flushed()


@pytest.mark.parametrize("flag", [False, True])
def test_flush_denormal_is_opt_in_and_ends_with_training(workdir, flag):
    seen: list[bool] = []

    class RecordFlush(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(denormals_flushed())

    recipe = tiny_recipe(workdir, f"flush-{flag}")
    assert train_main([str(recipe), "--max_steps", "2", "--flush_denormal", str(flag).lower()], [RecordFlush()]) == 0
    assert seen == [flag, flag]
    assert not denormals_flushed()
