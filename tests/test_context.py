"""Past the training length by default: `train_length` is what the model was trained at, `max_position_embeddings` the
context clients may use (16 x it), and `generate` in every form users write it runs to 8 x L with nothing from
transformers' logger about the length.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, pipeline
from transformers.utils import logging as hf_logging

from alibi_lm import AlibiConfig
from alibi_lm.modeling.configuration_alibi import CONTEXT_MULTIPLE

from .tiny import random_ids, saved_folder, tiny_model

L = 16  # tiny_config's train_length


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


@contextmanager
def transformers_log():
    """Every warning logged by transformers, our package or remote code (the `warning_once` cache cleared first), and
    every Python warning."""
    hf_logging.warning_once.cache_clear()
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("transformers", "alibi_lm", "transformers_modules")]
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler.messages
        handler.messages.extend(str(w.message) for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        hf_logging.set_verbosity(before)


def test_the_context_defaults_to_sixteen_training_lengths():
    config = AlibiConfig(train_length=64)
    assert (config.train_length, config.max_position_embeddings) == (64, 64 * CONTEXT_MULTIPLE)
    assert CONTEXT_MULTIPLE == 16
    assert AlibiConfig(train_length=64, max_position_embeddings=100).max_position_embeddings == 100
    saved = json.loads(config.to_json_string())
    assert (saved["train_length"], saved["max_position_embeddings"]) == (64, 1024)
    assert AlibiConfig().train_length == 512  # the default training length, as max_position_embeddings was


def test_training_again_moves_a_derived_context_and_keeps_a_chosen_one():
    derived = AlibiConfig(train_length=64)
    derived.set_train_length(128)
    assert (derived.train_length, derived.max_position_embeddings) == (128, 2048)
    chosen = AlibiConfig(train_length=64, max_position_embeddings=100_000)
    chosen.set_train_length(128)
    assert chosen.max_position_embeddings == 100_000
    short = AlibiConfig(train_length=64, max_position_embeddings=100)
    short.set_train_length(256)
    assert short.max_position_embeddings == 256  # never below what it was trained at
    with pytest.raises(ValueError, match="train_length"):
        short.set_train_length(0)


def test_a_folder_saved_before_train_length_loads_with_a_one_line_notice(tmp_path):
    folder = saved_folder(tiny_model(), tmp_path / "old")
    config_file = folder / "config.json"
    old = json.loads(config_file.read_text())
    del old["train_length"]
    old["max_position_embeddings"] = L  # what a folder held before: the training length
    config_file.write_text(json.dumps(old))
    with transformers_log() as log:
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
    assert (config.train_length, config.max_position_embeddings) == (L, 16 * L)
    assert (model.config.train_length, model.config.max_position_embeddings) == (L, 16 * L)
    notices = [m for m in log if "predates `train_length`" in m]
    assert len(notices) == 1 and "\n" not in notices[0], log
    assert "max_position_embeddings=16 as the training length and allowing 256 tokens" in notices[0]
    # Saved again, both fields are written and the notice does not come back.
    model.save_pretrained(tmp_path / "new")
    with transformers_log() as log:
        again = AutoConfig.from_pretrained(tmp_path / "new")
    assert (again.train_length, again.max_position_embeddings) == (L, 16 * L)
    assert not [m for m in log if "train_length" in m], log


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny model trained at L = 16, saved with a word-level tokenizer."""
    return saved_folder(tiny_model(), tmp_path_factory.mktemp("model") / "model")


# transformers advises every model, GPT-2's and BLOOM's too, to pass max_new_tokens when a call gives no length: advice
# on how the call is written, not about the model's context. A saved `max_new_tokens` default would silence it but
# would override a `max_length` the user passes, so it stays.
GENERIC_ADVICE = "Using the model-agnostic default `max_length`"


def length_messages(log: list[str]) -> list[str]:
    words = ("max_length", "maximum length", "max_position_embeddings", "friendly reminder", "sequence length")
    return [m for m in log if any(w in m.lower() for w in words) and not m.startswith(GENERIC_ADVICE)]


FORMS = {
    # A prompt of 8L - 20 tokens and no length argument: generate adds its default 20 new tokens.
    "no length arguments": lambda model, ids: model.generate(ids[:, : 8 * L - 20], do_sample=False),
    "max_length": lambda model, ids: model.generate(ids[:, :L], max_length=8 * L, do_sample=False),
    "max_new_tokens": lambda model, ids: model.generate(ids[:, :L], max_new_tokens=7 * L, do_sample=False),
    "static cache": lambda model, ids: model.generate(
        ids[:, :L], max_new_tokens=7 * L, do_sample=False, cache_implementation="static"
    ),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_generate_runs_to_eight_training_lengths_with_no_length_message(folder, form):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = random_ids(1, 8 * L, model.config.vocab_size)
    with transformers_log() as log:
        output = FORMS[form](model, ids)
    assert output.shape == (1, 8 * L)
    assert length_messages(log) == [], log


def test_a_pipeline_runs_to_eight_training_lengths_with_no_length_message(folder):
    generator = pipeline("text-generation", model=str(folder), device="cpu")
    prompt = " ".join(f"w{i % 98 + 1}" for i in range(L))  # L word-level tokens
    with transformers_log() as log:
        out = generator(prompt, max_new_tokens=7 * L, do_sample=False, return_tensors=True)
    assert len(out[0]["generated_token_ids"]) == 8 * L
    assert length_messages(log) == [], log


# The call with no length argument is meant: transformers warns of its default max_length before refusing it.
@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
def test_the_capture_sees_the_reminder_when_the_context_is_the_training_length(folder):
    """The control: with the old meaning (context = L), the same call is warned about, so the tests above can fail."""
    model = AutoModelForCausalLM.from_pretrained(folder, max_position_embeddings=L).eval()
    ids = random_ids(1, L, model.config.vocab_size)
    with transformers_log() as log:
        model.generate(ids, max_new_tokens=7 * L, do_sample=False)
    assert any("friendly reminder" in m for m in length_messages(log)), log
    with pytest.raises(ValueError, match="max_length"):  # a prompt past L with no length argument
        model.generate(random_ids(1, 2 * L, model.config.vocab_size), do_sample=False)


def test_greedy_tokens_past_the_context_are_those_of_the_model_in_one_pass(folder):
    """Generation past L is the model's own prediction: each greedy token is the argmax of a full forward pass."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    output = FORMS["max_new_tokens"](model, random_ids(1, 8 * L, model.config.vocab_size))
    with torch.no_grad():
        logits = model(output).logits[0, L - 1 : -1]
    assert torch.equal(logits.argmax(-1), output[0, L:])


def test_the_tokenizer_loads_with_autotokenizer_and_no_prompt_or_warning(folder, capsys, monkeypatch):
    """With alibi_lm imported (the model type registered): no remote-code prompt, no warning. stdin is closed, so a
    prompt would end in transformers' fallback and its 'model of type alibi' warning."""
    from transformers import AutoTokenizer

    monkeypatch.setattr("sys.stdin", open(os.devnull))
    capsys.readouterr()
    with transformers_log() as log:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("w1 w2 w3")["input_ids"] == [1, 2, 3]
    assert log == [] and "custom code" not in capsys.readouterr().out
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"


def test_the_tokenizer_loads_with_transformers_alone_as_the_card_says(folder):
    """A fresh interpreter without alibi_lm, stdin closed: the card's `AutoTokenizer.from_pretrained(repo,
    trust_remote_code=True)` loads with nothing printed."""
    script = (
        "import sys; from transformers import AutoTokenizer; "
        f"t = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True); "
        "assert 'alibi_lm' not in sys.modules; print(t('w1 w2 w3')['input_ids'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=folder.parent,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2, 3]"
    assert "warn" not in done.stderr.lower() and "custom code" not in done.stderr + done.stdout, done.stderr


@pytest.fixture(scope="module")
def transformers4(tmp_path_factory):
    """A venv with transformers 4.57 (and the huggingface_hub it needs) over this interpreter's packages, from the
    package registry at test time."""
    venv = tmp_path_factory.mktemp("transformers4") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "transformers==4.57.1",
         "huggingface_hub<1.0"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"could not install transformers 4.57.1 from the package registry: {done.stderr[-500:]}")
    return python


def test_on_transformers_4_the_tokenizer_fails_with_the_models_version_message(folder, transformers4):
    script = (
        "import sys, transformers; from transformers import AutoConfig, AutoTokenizer\n"
        "assert transformers.__version__ == '4.57.1'\n"
        "for load in (AutoTokenizer, AutoConfig):\n"
        "    try:\n"
        f"        load.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "    except ImportError as error:\n"
        "        print(type(error).__name__, error)\n"
    )
    done = subprocess.run(
        [transformers4, "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=folder.parent,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    tokenizer_line, model_line = done.stdout.strip().splitlines()
    assert tokenizer_line == model_line  # the same message, from the same check
    assert tokenizer_line.startswith("ImportError This ALiBi model's code needs transformers>=5.24.0, but ")
    assert "TokenizersBackend" not in done.stdout + done.stderr


def test_an_export_carries_no_tokenizer_auto_map(tmp_path):
    """An MPT export has no remote code for the tokenizer's auto_map to point at."""
    from alibi_lm.export import export_checkpoint

    folder = saved_folder(tiny_model(intermediate_size=128), tmp_path / "model")  # MPT's MLP is 4 x hidden
    export_checkpoint(folder, tmp_path / "mpt", "mpt")
    saved = json.loads((tmp_path / "mpt" / "tokenizer_config.json").read_text())
    assert "auto_map" not in saved and not (tmp_path / "mpt" / "configuration_alibi.py").exists()
    assert json.loads((folder / "tokenizer_config.json").read_text())["auto_map"] == {
        "AutoTokenizer": [None, "configuration_alibi.AlibiTokenizerFast"]
    }


def test_a_tokenizer_saved_from_the_remote_class_loads_with_alibi_lm_and_no_prompt(folder, tmp_path, monkeypatch):
    """Loaded with trust_remote_code=True (the remote AlibiTokenizerFast) and saved again, it names that class; with
    alibi_lm imported the registered class loads it, no prompt."""
    from transformers import AutoTokenizer

    resaved = tmp_path / "resaved"
    script = (
        "from transformers import AutoTokenizer; "
        f"AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True).save_pretrained({str(resaved)!r})"
    )
    subprocess.run([sys.executable, "-c", script], check=True, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path)
    assert json.loads((resaved / "tokenizer_config.json").read_text())["tokenizer_class"] == "AlibiTokenizerFast"
    (resaved / "config.json").write_bytes((folder / "config.json").read_bytes())
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    with transformers_log() as log:
        tokenizer = AutoTokenizer.from_pretrained(resaved)
    assert type(tokenizer).__name__ == "AlibiTokenizerFast" and tokenizer("w1 w2")["input_ids"] == [1, 2]
    assert log == [], log
