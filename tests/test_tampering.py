"""What defines a model is sealed with its weights, and a diverged run saves nothing (issue 26, point 2).

`SHA256SUMS` used to cover the weights only: a config.json with another layer count, position encoding or activation
passed generate, eval and fine-tuning (perplexity 65.25 -> 102.44 for `hidden_act: relu`), and a run at learning
rate 1e6 saved 18 of 18 tensors as NaN, logged a loss of '0' and verified.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from alibi_lm import loading, push
from alibi_lm.cli import main as cli_main
from alibi_lm.integrity import CHECKSUMS_FILE, read_checksums, write_checksums
from alibi_lm.train import DivergedError, parse_recipe, train
from tests.test_train import tiny_recipe, workdir  # noqa: F401 - the module's text files, a pytest fixture
from tests.tiny import cli_error, saved_folder, tiny_model

TAMPERING = {
    "a layer more": {"num_hidden_layers": 3},
    "another position encoding": {"position_encoding": "none"},
    "another activation": {"hidden_act": "relu"},
}


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:  # noqa: F811
    """A model folder saved by `alibi-lm train` (3 steps): weights, config, tokenizer and SHA256SUMS."""
    recipe = tiny_recipe(workdir, "sealed", max_steps=3, save_steps=3)
    return train(*parse_recipe(recipe)).output_dir


@pytest.fixture
def copy(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(trained, target, ignore=shutil.ignore_patterns("checkpoint-*"))
    return target


def tamper(folder: Path, changes: dict) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=2))


def test_the_manifest_covers_config_generation_config_tokenizer_and_code(trained: Path):
    recorded = read_checksums(trained)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "modeling_alibi.py"):
        assert name in recorded, name
    assert cli_main(["verify", str(trained)]) == 0  # a finished run's model keeps verifying


@pytest.mark.parametrize("edit", TAMPERING)
def test_a_tampered_config_is_refused_everywhere_and_named(edit: str, copy: Path, workdir: Path, capsys):  # noqa: F811
    tamper(copy, TAMPERING[edit])
    assert "config.json" in cli_error(["verify", str(copy)], capsys)
    assert "config.json" in cli_error(["generate", str(copy), "--prompt", "The", "--max-new-tokens", "2"], capsys)
    assert "config.json" in cli_error(["eval", str(copy), "--lengths", "32", "--max-tokens", "256"], capsys)
    with pytest.raises(ValueError, match=r"config\.json"):
        push.plan_push(copy, "user/tampered")
    finetune = tiny_recipe(workdir, f"ft-{edit.replace(' ', '-')}", architecture=False, model_name_or_path=str(copy))
    with pytest.raises(ValueError, match=r"config\.json"):
        train(*parse_recipe(finetune))
    assert not (workdir / f"ft-{edit.replace(' ', '-')}" / "model.safetensors").exists()


def test_a_manifest_of_the_weights_alone_still_verifies(tmp_path: Path):
    # Folders sealed before the manifest covered config.json: their weights are checked as before.
    folder = saved_folder(tiny_model(), tmp_path / "old")
    write_checksums(folder)
    lines = (folder / CHECKSUMS_FILE).read_text().splitlines()
    (folder / CHECKSUMS_FILE).write_text("\n".join(line for line in lines if line.endswith("safetensors")) + "\n")
    assert cli_main(["verify", str(folder)]) == 0
    assert loading.load_model(folder).config.num_hidden_layers == 2


def test_verify_names_non_finite_tensors(tmp_path: Path, capsys):
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = math.nan
        model.model.norm.weight[3] = math.inf
    folder = saved_folder(model, tmp_path / "nan")
    write_checksums(folder)  # sealed as it is: the digests match, the numbers are not a model
    error = cli_error(["verify", str(folder)], capsys)
    assert "2 tensor(s) hold NaN or infinity" in error
    assert "model.layers.1.mlp.up_proj.weight" in error and "model.norm.weight" in error


class RecordLosses(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def test_a_diverged_run_saves_nothing_and_names_the_step(workdir: Path):  # noqa: F811
    recipe = tiny_recipe(workdir, "diverged", learning_rate=1e6, max_steps=6, save_steps=3)
    recorder = RecordLosses()
    with pytest.raises(DivergedError, match=r"NaN or infinity at step 3 .*first non-finite at step [123]\b"):
        train(*parse_recipe(recipe), callbacks=[recorder])
    out = workdir / "diverged"
    assert not (out / "checkpoint-3").exists() and not (out / "model.safetensors").exists()
    assert any(math.isnan(loss) for loss in recorder.losses)  # logged as nan, never as 0
    assert 0.0 not in recorder.losses
