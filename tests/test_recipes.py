"""recipes/: every recipe parses and holds only non-defaults; the runnable ones run; the paper one builds 253M."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from transformers import TrainingArguments, get_scheduler

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.data import DataArguments
from alibi_lm.export import export_problems
from alibi_lm.train import ModelArguments, parse_recipe, train

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# bf16 needs a GPU: TrainingArguments refuses it on this machine, so the paper recipe parses with it off here.
NO_GPU = [] if torch.cuda.is_available() else ["--bf16", "false"]
TINY = ["--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "4", "--intermediate_size", "64"]


def _defaults() -> dict[str, object]:
    defaults = {}
    for cls in (ModelArguments, DataArguments, TrainingArguments):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    return defaults


@pytest.mark.parametrize("name", ["tiny-cpu", "finetune", "wikitext103-paper"])
def test_recipe_parses_and_holds_only_what_differs_from_the_defaults(name):
    path = RECIPES / f"{name}.yaml"
    _, _, training_args = parse_recipe(path, NO_GPU if name == "wikitext103-paper" else [])
    assert training_args.output_dir == f"runs/{name}"
    defaults = _defaults()
    for key, value in yaml.safe_load(path.read_text()).items():
        default = defaults[key]
        assert str(getattr(default, "value", default)) != str(value), f"{name}.yaml repeats the default {key}: {value}"


def test_every_recipe_file_is_covered():
    assert {p.stem for p in RECIPES.glob("*.yaml")} == {"tiny-cpu", "finetune", "wikitext103-paper"}
    assert {p.stem for p in (RECIPES / "accelerate").glob("*.yaml")} == {"multi-gpu", "fsdp"}


def test_accelerate_configs_load_and_wrap_the_decoder_layer():
    ddp = load_config_from_file(str(RECIPES / "accelerate" / "multi-gpu.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and ddp.mixed_precision == "no"
    fsdp = load_config_from_file(str(RECIPES / "accelerate" / "fsdp.yaml"))
    assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    layer = fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    modeling = importlib.import_module("alibi_lm.modeling.modeling_alibi")
    assert hasattr(modeling, layer) and layer in AlibiForCausalLM._no_split_modules
    # Full state dicts keep every checkpoint a Hub-format safetensors folder.
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_paper_recipe_builds_the_253m_parameter_model_and_the_fairseq_schedule():
    model_args, data_args, training_args = parse_recipe(RECIPES / "wikitext103-paper.yaml", NO_GPU)
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("Salesforce/wikitext", "wikitext-103-raw-v1")
    assert data_args.block_size == 512 and data_args.packing is False  # fairseq --sample-break-mode none
    with torch.device("meta"):
        model = AlibiForCausalLM(AlibiConfig(**model_args.config_overrides()))
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (16, 1024, 8)
    assert config.intermediate_size == 4096 and config.position_encoding == "alibi"
    # 16 bias-free blocks x 12,584,960 + 50,257 x 1,024 tied embedding + 1,024 final norm: MPT's architecture
    assert sum(p.numel() for p in model.parameters()) == 252_823_552
    assert export_problems(config, "mpt") == []
    # 18 x 512 = 9,216 tokens per GPU per step (fairseq --max-tokens 9216), x 8 GPUs = 73,728
    assert training_args.per_device_train_batch_size * data_args.block_size * 8 == 73_728
    assert training_args.max_grad_norm == 0.1 and training_args.optim == "sgd"
    assert training_args.optim_args == "momentum=0.99,nesterov=True"

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=training_args.learning_rate)
    scheduler = get_scheduler(
        training_args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=training_args.warmup_steps,
        num_training_steps=training_args.max_steps,
        scheduler_specific_kwargs=training_args.lr_scheduler_kwargs,
    )
    lr_at = {
        step: training_args.learning_rate * scheduler.lr_lambdas[0](step) for step in (8_000, 16_000, 151_000, 286_000)
    }
    assert lr_at[8_000] == pytest.approx(0.5)  # linear warmup over 16k steps
    assert lr_at[16_000] == pytest.approx(1.0)  # --lr 1.0
    assert lr_at[151_000] == pytest.approx((1.0 + 1e-4) / 2)  # half-way down the 270k-step cosine
    assert lr_at[286_000] == pytest.approx(1e-4)  # --min-lr 0.0001 at --max-update 286000


@pytest.fixture(scope="module")
def tiny_cpu_run(tmp_path_factory) -> Path:
    """recipes/tiny-cpu.yaml for 2 steps, shrunk to a tiny model on one Wikipedia topic."""
    out = tmp_path_factory.mktemp("recipes")
    overrides = TINY + [
        "--dataset_config_name", "Mathematics",
        "--vocab_size", "512", "--block_size", "32",
        "--max_steps", "2", "--max_eval_samples", "16",
        "--output_dir", str(out / "tiny-cpu"), "--cache_dir", str(out / "cache"),
        "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    result = train(*parse_recipe(RECIPES / "tiny-cpu.yaml", overrides))
    assert result.global_step == 2 and "eval_perplexity" in result.metrics
    return result.output_dir


def test_tiny_cpu_recipe_runs_two_steps(tiny_cpu_run):
    assert (tiny_cpu_run / "model.safetensors").is_file() and (tiny_cpu_run / "tokenizer.json").is_file()


def test_finetune_recipe_runs_two_steps_from_a_saved_model(tiny_cpu_run):
    out = tiny_cpu_run.parent
    overrides = [
        "--model_name_or_path", str(tiny_cpu_run),
        "--max_steps", "2", "--max_eval_samples", "16",
        "--output_dir", str(out / "finetune"), "--cache_dir", str(out / "cache"),
        "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    result = train(*parse_recipe(RECIPES / "finetune.yaml", overrides))
    assert result.global_step == 2
    evals = [e for e in result.log_history if "eval_loss" in e]
    assert evals[0]["step"] == 0  # eval_on_start: the loss before fine-tuning is logged
    assert AlibiConfig.from_pretrained(result.output_dir).train_length == 32  # the model's length
