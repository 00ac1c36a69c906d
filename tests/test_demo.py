"""Tests for `alibi-lm demo`: the paper's train-short-test-long result reproduced small, its outputs, its bad input.

Press, Smith & Lewis, "Train Short, Test Long" (ICLR 2022): a model with ALiBi keeps its perplexity on inputs
longer than it was trained on, while sinusoidal position embeddings blow up. The seeded small experiment
(ALiBi flat at 4x L, sinusoidal at least 2x) is not in the suite yet: see the project notes.
"""

from __future__ import annotations

import shlex

import pytest

from alibi_lm.cli import build_parser
from alibi_lm.cli import main as cli_main
from alibi_lm.demo import ENCODINGS, DemoSettings, settings_from_args

# The small experiment: L = 32, a 2 x 64 model, BPE 1024, evaluated at 1x, 2x and 4x L on the first 16k held-out tokens.
L = 32
SMALL_ARGS = [
    "--encodings", "alibi", "sinusoidal",
    "--block-size", str(L),
    "--hidden-size", "64",
    "--layers", "2",
    "--heads", "4",
    "--vocab-size", "1024",
    "--batch-size", "16",
    "--steps", "600",
    "--multiples", "1", "2", "4",
    "--max-eval-tokens", "16384",
    "--generate-tokens", str(4 * L),
    "--seed", "0",
    "--no-progress",
]  # fmt: skip


def test_same_seed_gives_the_same_command_line_back():
    # The command written at the top of the results reproduces the settings exactly.
    args = build_parser(["demo"]).parse_args(["demo", *SMALL_ARGS, "--output-dir", "runs/x"])
    settings = settings_from_args(args)
    again = settings_from_args(build_parser(["demo"]).parse_args(shlex.split(settings.command())[1:]))
    assert again == settings


def test_compare_trains_every_baseline_and_default_is_alibi_alone():
    parser = build_parser(["demo"])
    assert settings_from_args(parser.parse_args(["demo", "--compare"])).encodings == ENCODINGS
    default = settings_from_args(parser.parse_args(["demo"]))
    assert default.encodings == ("alibi",)
    assert default.lengths == [default.block_size * m for m in (1, 2, 4, 8, 16)]
    assert default.command() == "alibi-lm demo"
    assert settings_from_args(parser.parse_args(["demo", "--compare"])).command() == "alibi-lm demo --compare"


# ---------------------------------------------------------------------------------------------------------
# Bad input: a clear error before anything is trained


@pytest.mark.parametrize("block_size", [1, 0, -4])
def test_block_size_below_two_is_an_error(block_size, tmp_path):
    with pytest.raises(ValueError, match="block_size must be at least 2"):
        cli_main(["demo", "--block-size", str(block_size), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_unknown_encoding_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown position encoding\(s\) \['alibii'\]: choose from alibi, sinusoidal"):
        cli_main(["demo", "--encodings", "alibi", "alibii", "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_compare_and_encodings_together_is_an_error(capsys):
    with pytest.raises(SystemExit):
        cli_main(["demo", "--compare", "--encodings", "alibi"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"vocab_size": 100}, "vocab_size must be at least 257"),
        ({"multiples": (1, 0)}, "multiples must be positive integers"),
        ({"hidden_size": 100, "num_attention_heads": 8}, "num_attention_heads"),
        ({"encodings": ()}, "encodings is empty"),
        ({"encodings": ("alibi", "alibi")}, "encodings has duplicates"),
        ({"max_eval_tokens": 100}, "shorter than the longest evaluation length 1024"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
    ],
)
def test_bad_settings_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        DemoSettings(**overrides)
