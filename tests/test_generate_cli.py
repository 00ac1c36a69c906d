"""`alibi-lm generate` and `alibi_lm.generate.generate` refuse out-of-range decoding options, naming each and its range.

A slip such as `--max-new-tokens 1e20` must fail at once rather than generate for ever.
"""

from __future__ import annotations

import argparse
import re

import pytest
from datasets import Dataset

from alibi_lm.blocks import train_bpe_tokenizer
from alibi_lm.cli import build_parser
from alibi_lm.generate import MAX_NEW_TOKENS, generate
from tests.tiny import tiny_model

VOCAB = 300
PROMPT = "The history of"

# flag, bad value on the command line, the allowed range the error must name
BAD_FLAGS = [
    ("--max-new-tokens", "0", "an integer in [1, 1000000]"),
    ("--max-new-tokens", "1000001", "an integer in [1, 1000000]"),
    ("--max-new-tokens", "1e20", "an integer in [1, 1000000]"),
    ("--max-new-tokens", str(10**20), "an integer in [1, 1000000]"),
    ("--max-new-tokens", "2.5", "an integer in [1, 1000000]"),
    ("--top-p", "0", "a number in (0, 1]"),
    ("--top-p", "1.01", "a number in (0, 1]"),
    ("--top-p", "nan", "a number in (0, 1]"),
    ("--temperature", "0", "a finite number > 0"),
    ("--temperature", "-1", "a finite number > 0"),
    ("--temperature", "inf", "a finite number > 0"),
    ("--temperature", "nan", "a finite number > 0"),
    ("--top-k", "-1", "an integer >= 0"),
    ("--top-k", "2.5", "an integer >= 0"),
    ("--repetition-penalty", "0", "a finite number > 0"),
    ("--repetition-penalty", "inf", "a finite number > 0"),
]


def parse(argv: list[str]):
    return build_parser(["generate"]).parse_args(["generate", "some/model", "--prompt", PROMPT, *argv])


@pytest.mark.parametrize(("flag", "value", "allowed"), BAD_FLAGS)
def test_an_out_of_range_flag_is_refused_naming_the_flag_and_range(flag, value, allowed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse([flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"alibi-lm generate: error: argument {flag}: must be {allowed}")
    assert error.endswith(f"got {value!r}")


def test_the_ends_of_every_range_are_accepted():
    args = parse(
        ["--max-new-tokens", str(MAX_NEW_TOKENS), "--top-p", "1", "--top-k", "0", "--temperature", "1e-3"]
        + ["--repetition-penalty", "1e-3"]
    )
    assert (args.max_new_tokens, args.top_p, args.top_k, args.temperature, args.repetition_penalty) == (
        1_000_000,
        1.0,
        0,
        0.001,
        0.001,
    )
    assert isinstance(args.max_new_tokens, int) and isinstance(args.top_k, int)
    assert parse(["--max-new-tokens", "1"]).max_new_tokens == 1


def test_the_defaults_are_within_range():
    args = parse([])
    assert (args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty) == (
        50,
        1.0,
        50,
        1.0,
        1.0,
    )


# ---------------------------------------------------------------------------------------------------------
# The Python API checks the same ranges, whether or not it samples


@pytest.fixture(scope="module")
def model_and_tokenizer():
    texts = ["The history of the city begins with a market by the river.", "A river runs past the old market."]
    tokenizer = train_bpe_tokenizer(Dataset.from_dict({"text": texts * 4}), vocab_size=VOCAB)
    return tiny_model(vocab_size=VOCAB), tokenizer


@pytest.mark.parametrize(
    ("argument", "value", "allowed"),
    [
        ("max_new_tokens", 0, "an integer in [1, 1000000]"),
        ("max_new_tokens", 10**20, "an integer in [1, 1000000]"),
        ("max_new_tokens", 1e20, "an integer in [1, 1000000]"),
        ("max_new_tokens", 5.0, "an integer in [1, 1000000]"),
        ("max_new_tokens", True, "an integer in [1, 1000000]"),
        ("top_p", 0.0, "a number in (0, 1]"),
        ("top_p", 1.5, "a number in (0, 1]"),
        ("temperature", 0.0, "a finite number > 0"),
        ("temperature", float("inf"), "a finite number > 0"),
        ("temperature", float("nan"), "a finite number > 0"),
        ("top_k", -1, "an integer >= 0"),
        ("top_k", 2.5, "an integer >= 0"),
        ("repetition_penalty", 0.0, "a finite number > 0"),
        ("repetition_penalty", float("nan"), "a finite number > 0"),
    ],
)
@pytest.mark.parametrize("do_sample", [True, False])
def test_generate_refuses_an_out_of_range_argument_naming_it(model_and_tokenizer, argument, value, allowed, do_sample):
    model, tokenizer = model_and_tokenizer
    message = re.escape(f"{argument} must be {allowed}") + ".*" + re.escape(f"got {value!r}")
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, PROMPT, do_sample=do_sample, **{argument: value})


def test_generate_runs_at_the_ends_of_every_range(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    options = {"max_new_tokens": 1, "top_k": 0, "top_p": 1.0, "temperature": 1e-3, "repetition_penalty": 1e-3}
    text = generate(model, tokenizer, PROMPT, do_sample=True, seed=0, **options)
    assert len(tokenizer(text)["input_ids"]) >= 1


def test_every_dashed_option_of_every_subcommand_takes_the_underscore_spelling_too():
    # As transformers' HfArgumentParser does for `alibi-lm train`: `--max_new_tokens` is generate's keyword, and
    # "unrecognized arguments" was all a user typing it got.
    from alibi_lm.cli import SUBCOMMANDS

    assert parse(["--max_new_tokens", "7", "--do_sample", "--top_k", "3"]) == parse(
        ["--max-new-tokens", "7", "--do-sample", "--top-k", "3"]
    )
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subcommands) == set(SUBCOMMANDS)
    for name, subparser in subcommands.items():
        dashed = {o for action in subparser._actions for o in action.option_strings if "-" in o[2:]}
        for option in dashed:  # the same action under either spelling
            assert option in subparser._option_string_actions["--" + option[2:].replace("-", "_")].option_strings
        assert name != "generate" or "--max-new-tokens" in dashed
