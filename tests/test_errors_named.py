"""Bad input is named in one line, and SIGTERM saves before it stops (issue 26, point 5)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from alibi_lm.train import TerminatedError, parse_recipe, train
from tests.test_train import tiny_recipe, workdir  # noqa: F401 - the module's text files, a pytest fixture
from tests.tiny import cli_error, tiny_model


def test_a_directory_as_train_file(workdir: Path, capsys):  # noqa: F811
    recipe = tiny_recipe(workdir, "dir-as-file", train_file=str(workdir))
    assert f"The train data file {str(workdir)!r} is a directory" in cli_error(["train", str(recipe)], capsys)


def test_a_jsonl_whose_text_is_not_a_string(workdir: Path, capsys):  # noqa: F811
    data = workdir / "numbers.jsonl"
    data.write_text("\n".join(json.dumps({"text": i}) for i in range(50)))
    recipe = tiny_recipe(workdir, "int-text", train_file=str(data), validation_file=None)
    error = cli_error(["train", str(recipe)], capsys)
    assert "column 'text' holds int64 values, not text" in error


def test_a_negative_learning_rate_names_the_key(workdir: Path, capsys):  # noqa: F811
    recipe = tiny_recipe(workdir, "negative-lr")
    error = cli_error(["train", str(recipe), "--learning_rate", "-0.001"], capsys)
    assert "learning_rate must be a finite number >= 0, got -0.001" in error


def test_a_missing_tokenizer_path(workdir: Path, capsys):  # noqa: F811
    recipe = tiny_recipe(workdir, "no-tokenizer-path", tokenizer_name="/nonexistent/tokenizer")
    assert "tokenizer_name '/nonexistent/tokenizer' does not exist" in cli_error(["train", str(recipe)], capsys)


def test_eval_of_a_folder_without_tokenizer(tmp_path: Path, capsys):
    tiny_model().save_pretrained(tmp_path)
    error = cli_error(["eval", str(tmp_path), "--lengths", "16", "--max-tokens", "64"], capsys)
    assert "has no tokenizer (no tokenizer.json or tokenizer_config.json)" in error


class SigtermAt(TrainerCallback):
    """What a scheduler does some time before it kills a job: SIGTERM to the process, here at the end of `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_does(workdir: Path):  # noqa: F811
    whole = train(*parse_recipe(tiny_recipe(workdir, "no-sigterm", max_steps=6, save_steps=10))).output_dir
    recipe = tiny_recipe(workdir, "sigterm", max_steps=6, save_steps=10)
    with pytest.raises(TerminatedError, match=r"stopped by SIGTERM after step 2, saved as .*checkpoint-2"):
        train(*parse_recipe(recipe), callbacks=[SigtermAt(2)])
    out = workdir / "sigterm"
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was the run's only
    train(*parse_recipe(recipe, ["--resume_from_checkpoint", "true"]))
    resumed, expected = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0)


def test_a_full_disk_during_a_save_names_the_folder_and_keeps_earlier_checkpoints(workdir: Path, monkeypatch):  # noqa: F811
    import safetensors
    import transformers.modeling_utils

    real_save = transformers.modeling_utils.safe_save_file  # what save_pretrained writes weights with
    saves = []

    def fill_up(tensors, filename, *args, **kwargs):
        saves.append(filename)
        if len(saves) == 2:  # the second save: checkpoint-4's weights (checkpoint-2 went through)
            raise safetensors.SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", fill_up)
    recipe = tiny_recipe(workdir, "full-disk", max_steps=6, save_steps=2)
    with pytest.raises(
        OSError, match=r"no space left on the device while saving .*checkpoint-4 \(\d+ MiB free there\)"
    ):
        train(*parse_recipe(recipe))
    out = workdir / "full-disk"
    assert (out / "checkpoint-2" / "model.safetensors").is_file() and not (out / "checkpoint-4").exists()
