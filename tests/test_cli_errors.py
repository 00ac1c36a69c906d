"""Bad input at the command line: one line that names the file, key or flag, and no traceback unless asked for."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from alibi_lm.cli import DEBUG_ENV
from alibi_lm.cli import main as cli_main
from alibi_lm.scoring import perplexity, perplexity_at_lengths
from tests.tiny import cli_error, random_ids, tiny_model

TEXT = "The quick brown fox jumps over the lazy dog.\n" * 50


def recipe(tmp_path: Path, **values) -> Path:
    (tmp_path / "train.txt").write_text(TEXT)
    base = {
        "train_file": str(tmp_path / "train.txt"),
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        "vocab_size": 300,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "block_size": 16,
        "max_steps": 1,
        "report_to": "none",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**base, **values}))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"The train data file .*train-bad\.txt is empty\."),
        (b"caf\xe9 au lait\n" * 10, r"The train data file .*train-bad\.txt is not UTF-8 text: byte 0xe9 at offset 3"),
        (b"  \n\n \n", r"The train data file .*train-bad\.txt holds only whitespace\."),
    ],
    ids=["empty", "latin-1", "whitespace"],
)
def test_bad_train_file_is_named(tmp_path, capsys, content, message):
    bad = tmp_path / "train-bad.txt"
    bad.write_bytes(content)
    path = recipe(tmp_path, train_file=str(bad))
    assert re.search(message, cli_error(["train", str(path)], capsys))
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"max_steps: 1\nlearning_rate: [1e-3\n", r"Recipe .*recipe\.yaml is not valid YAML: line 3, column 1: "),
        (b"a: b: c\n", r"Recipe .*recipe\.yaml is not valid YAML: line 1, column 5: mapping values are not allowed"),
        (b"max_steps: 1\n# \xff\xfe\n", r"Recipe .*recipe\.yaml is not UTF-8 text \(byte 0xff at offset 15\)"),
        (b"- max_steps\n", r"Recipe .*recipe\.yaml must be a mapping of key: value, got list"),
    ],
    ids=["unclosed-list", "bad-mapping", "not-utf8", "list"],
)
def test_bad_recipe_file_is_named_with_line_and_column(tmp_path, capsys, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text)
    assert re.search(message, cli_error(["train", str(path)], capsys))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_steps": [1, 2]}, r"max_steps must be int, got \[1, 2\] \(list\)"),
        ({"max_steps": 2.7}, r"max_steps must be int, got 2\.7 \(float\)"),
        ({"learning_rate": "fast"}, r"learning_rate must be float, got 'fast' \(str\)"),
        ({"hidden_size": True}, r"hidden_size must be int or null, got True \(bool\)"),
        ({"save_strategy": False}, r"save_strategy must be .*got False \(bool\); YAML reads unquoted no/yes"),
    ],
    ids=["list", "float-for-int", "str-for-float", "bool-for-int", "yaml-no"],
)
def test_recipe_value_of_the_wrong_type_names_the_key(tmp_path, capsys, values, message):
    path = recipe(tmp_path, **values)
    line = cli_error(["train", str(path)], capsys)
    assert re.search(rf"recipe .*recipe\.yaml: {message}", line), line


def test_traceback_only_with_debug(tmp_path, capsys, monkeypatch):
    path = recipe(tmp_path, max_steps=2.7)
    assert cli_main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "alibi-lm --debug train" in err
    assert cli_main(["--debug", "train", str(path)]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert cli_main(["train", str(path)]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_huge_loss_gives_infinite_perplexity_not_an_overflow():
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(710.0) == math.inf and perplexity(1e9) == math.inf
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e5)  # logits in the 1e4s: the mean NLL is far past exp's range (~709)
    result = perplexity_at_lengths(model, random_ids(1, 64)[0], [16, 32], progress=False)
    assert all(r.nll > 710 and r.ppl == math.inf for r in result.lengths)
