"""Tests for `alibi-lm demo`: the paper's train-short-test-long result reproduced small, its outputs, its bad input.

Press, Smith & Lewis, "Train Short, Test Long" (ICLR 2022): a model with ALiBi keeps its perplexity on inputs
longer than it was trained on, while sinusoidal position embeddings blow up. The seeded small experiment below
trains both at L = 32 and asserts the qualitative result at 4x L (about 2 minutes on two CPU cores).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from alibi_lm import demo
from alibi_lm.card import read_extrapolation
from alibi_lm.cli import build_parser
from alibi_lm.data import OFFLINE_WIKIPEDIA, DataArguments, load_raw_datasets
from alibi_lm.demo import run_demo, settings_from_args
from alibi_lm.demo_settings import ENCODINGS, DemoSettings
from alibi_lm.scoring import perplexity_at_lengths, tokenize_texts

# The small experiment: L = 32, a 2 x 64 model, BPE 512, evaluated at 1x, 2x and 4x L on the first 16k held-out tokens.
L = 32
SMALL_ARGS = [
    "--encodings", "alibi", "sinusoidal",
    "--block-size", str(L),
    "--hidden-size", "64",
    "--layers", "2",
    "--heads", "4",
    "--vocab-size", "512",
    "--batch-size", "16",
    "--learning-rate", "0.008",
    "--steps", "3000",
    "--multiples", "1", "2", "4",
    "--max-eval-tokens", "16384",
    "--generate-tokens", str(4 * L),
    "--seed", "0",
    "--no-progress",
]  # fmt: skip


def parse(argv: list[str]) -> DemoSettings:
    """The settings of `alibi-lm demo ARGV`."""
    return settings_from_args(build_parser(["demo"]).parse_args(["demo", *argv]))


def run_command(argv: list[str]) -> int:
    """`alibi-lm demo ARGV` as `alibi_lm.cli.main` runs it, less the error reporting: an error raises."""
    args = build_parser(["demo"]).parse_args(["demo", *argv])
    return args.func(args)


def test_same_seed_gives_the_same_command_line_back():
    # The command written at the top of the results reproduces the settings exactly.
    args = build_parser(["demo"]).parse_args(["demo", *SMALL_ARGS, "--output-dir", "runs/x"])
    settings = settings_from_args(args)
    again = settings_from_args(build_parser(["demo"]).parse_args(shlex.split(settings.command())[1:]))
    assert again == settings


def test_default_is_alibi_and_sinusoidal_compare_trains_every_baseline_and_alibi_alone_is_one_flag():
    parser = build_parser(["demo"])
    assert settings_from_args(parser.parse_args(["demo", "--compare"])).encodings == list(ENCODINGS)
    assert settings_from_args(parser.parse_args(["demo", "--encodings", "alibi"])).encodings == ["alibi"]
    default = settings_from_args(parser.parse_args(["demo"]))
    assert default.encodings == ["alibi", "sinusoidal"] and default.stem == "demo"
    assert default.lengths == [default.block_size * m for m in (1, 2, 4, 8, 16)]
    assert default.command() == "alibi-lm demo"
    assert settings_from_args(parser.parse_args(["demo", "--compare"])).command() == "alibi-lm demo --compare"


def test_every_flag_of_the_command_line_sets_its_field():
    # The flags the README, recipes and earlier results use, each parsed to the DemoSettings field it names.
    argv = [
        "--output-dir", "runs/x", "--overwrite", "--encodings", "alibi", "t5", "--steps", "7", "--block-size", "16",
        "--batch-size", "3", "--learning-rate", "0.001", "--warmup-steps", "2", "--hidden-size", "48",
        "--layers", "3", "--heads", "6", "--vocab-size", "300", "--multiples", "4", "1", "2", "--seed", "5",
        "--topic", "Mathematics", "--max-eval-tokens", "640", "--no-generate", "--generate-tokens", "9",
        "--cache-dir", "cache", "--no-progress",
    ]  # fmt: skip
    assert parse(argv) == DemoSettings(
        output_dir="runs/x",
        overwrite=True,
        encodings=["alibi", "t5"],
        steps=7,
        block_size=16,
        batch_size=3,
        learning_rate=0.001,
        warmup_steps=2,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        vocab_size=300,
        multiples=[1, 2, 4],
        seed=5,
        topic="Mathematics",
        max_eval_tokens=640,
        generate=False,
        generate_tokens=9,
        cache_dir="cache",
        progress=False,
    )


@pytest.mark.parametrize(
    "settings",
    [
        DemoSettings(),
        DemoSettings(compare=True, steps=3, overwrite=True),
        DemoSettings(encodings=["t5", "alibi"], generate=False, progress=False, topic="Mathematics", warmup_steps=0),
        DemoSettings(num_hidden_layers=4, num_attention_heads=2, multiples=[1, 3], learning_rate=1e-5),
        DemoSettings(efficiency=True, batch_size=8, repeat_span_fraction=0.25),
    ],
)
def test_command_parses_back_to_the_same_settings_less_overwrite(settings):
    # --overwrite is left out: the command in the results must not replace a folder when someone runs it again.
    assert parse(shlex.split(settings.command())[2:]) == replace(settings, overwrite=False)
    assert "--overwrite" not in settings.command()


# ---------------------------------------------------------------------------------------------------------
# The seeded small experiment: both models trained once for the module (3,000 steps of 16 x 32 tokens each)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    args = build_parser(["demo"]).parse_args(
        ["demo", *SMALL_ARGS, "--output-dir", str(root / "out"), "--cache-dir", str(root / "cache")]
    )
    return run_demo(settings_from_args(args))


def test_alibi_stays_flat_at_four_times_the_training_length(small_demo):
    at_l, at_4l = small_demo.ppl("alibi", 1), small_demo.ppl("alibi", 4)
    assert at_4l <= 1.1 * at_l, f"alibi: ppl {at_4l:.2f} at 4L vs {at_l:.2f} at L"
    assert at_l < 100  # it learned the text: a unigram model of this BPE sits near 300


def test_sinusoidal_blows_up_past_the_training_length(small_demo):
    # What the experiment is about is the contrast past L, and that is what is asserted, with margins that hold on
    # both CPU vendors: the seeded run's trajectory differs by CPU (AMD EPYC, 2026-12-05: sinusoidal 31.72 at L, 67.66
    # at 4L, ALiBi 26.36 -> 25.84; Intel Xeon, earlier: sinusoidal 34.40 at L, ALiBi 26.44). It used to also ask that
    # the two be within 25% at L, which held on AMD only.
    at_l, at_4l = small_demo.ppl("sinusoidal", 1), small_demo.ppl("sinusoidal", 4)
    alibi_l, alibi_4l = small_demo.ppl("alibi", 1), small_demo.ppl("alibi", 4)
    assert at_4l >= 1.6 * at_l, f"sinusoidal: ppl {at_4l:.2f} at 4L vs {at_l:.2f} at L"
    assert alibi_4l <= 1.05 * alibi_l, f"ALiBi: ppl {alibi_4l:.2f} at 4L vs {alibi_l:.2f} at L"
    assert at_4l > 1.5 * alibi_4l
    # Both trained: at L neither is broken (within 1.5x of each other), so the contrast is extrapolation alone.
    assert max(at_l, alibi_l) < 1.5 * min(at_l, alibi_l) and at_l < 100


def test_every_length_is_scored_on_the_same_tokens(small_demo):
    for result in small_demo.results:
        for multiple in (1, 2, 4):
            scored = result[L * multiple]
            # 16,384 held-out tokens cut into whole chunks; each chunk's first token has no context to score it.
            chunks = 16384 // (L * multiple)
            assert scored.n_tokens == chunks * (L * multiple - 1)


def test_the_results_files_match_what_was_printed(small_demo):
    files = small_demo.files
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(files["json"].read_text())
    assert data["command"] == small_demo.settings.command()
    for saved, result in zip(data["results"], small_demo.results, strict=True):
        assert saved["model_name"] == result.model_name
        assert [row["ppl"] for row in saved["lengths"]] == [result[L * m].ppl for m in (1, 2, 4)]
    markdown = files["markdown"].read_text()
    assert small_demo.settings.command() in markdown
    assert f"{small_demo.ppl('sinusoidal', 4):.2f}" in markdown
    ratios = {e: small_demo.ppl(e, 4) / small_demo.ppl(e, 1) for e in ("alibi", "sinusoidal")}
    line = (f"Perplexity at 4 x L = {4 * L} tokens, over each model's at L: alibi {ratios['alibi']:.2f}x, sinusoidal "
            f"{ratios['sinusoidal']:.2f}x.")  # fmt: skip
    assert line in markdown
    assert set(data["training"]) == {"alibi", "sinusoidal"}
    assert all(info["steps"] == 3000 for info in data["training"].values())


def test_a_trained_model_loads_with_auto_classes_and_scores_the_same(small_demo):
    # Reload from disk as a user would and score the held-out text again, independently of the demo's own objects.
    out = small_demo.files["json"].parent
    model = AutoModelForCausalLM.from_pretrained(out / "sinusoidal").eval()
    assert model.config.position_encoding == "sinusoidal"
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    held_out = load_raw_datasets(DataArguments(dataset_name=OFFLINE_WIKIPEDIA, block_size=L))["test"]["text"]
    ids = tokenize_texts(held_out, tokenizer)[:16384]
    again = perplexity_at_lengths(model, ids, [L, 4 * L], progress=False)
    assert again[L].ppl == pytest.approx(small_demo.ppl("sinusoidal", 1), rel=1e-6)
    assert again[4 * L].ppl == pytest.approx(small_demo.ppl("sinusoidal", 4), rel=1e-6)
    # What `alibi-lm push` puts in the model card.
    saved = read_extrapolation(out / "sinusoidal" / "extrapolation.json")
    assert saved == {L * m: small_demo.ppl("sinusoidal", m) for m in (1, 2, 4)}


def test_the_sample_runs_past_four_times_the_training_length(small_demo):
    generation = small_demo.generation
    assert generation["model"] == "alibi"
    assert generation["total_tokens"] == L // 2 + 4 * L
    assert len(generation["text"].split()) > L  # words, not padding or an early stop
    markdown = small_demo.files["markdown"].read_text()
    assert "> *Continuation:* " + generation["text"].strip().split("\n")[0] in markdown


def test_the_demo_model_exports_to_mpt_and_transformers_serve_answers_with_its_tokens(small_demo, tmp_path):
    # The demo trains AlibiConfig's default architecture, which is MPT's: no flag makes it exportable.
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving] (in the dev extra)")
    from alibi_lm.cli import main
    from tests.serving import check_server, transformers_serve

    trained = Path(small_demo.settings.output_dir) / "alibi"
    exported = tmp_path / "alibi-mpt"
    assert main(["export", str(trained), str(exported), "--to", "mpt"]) == 0
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["MptForCausalLM"]
    prompt = small_demo.generation["prompt"]
    with transformers_serve(exported, tmp_path / "serve.log") as endpoint:
        served = check_server(endpoint, exported, trained, prompt, 4 * L)
    assert served.returncode == 0, served.stdout + served.stderr[-2000:]
    assert "identical" in served.stdout


# ---------------------------------------------------------------------------------------------------------
# Bad input: a clear error before anything is trained


@pytest.mark.parametrize("block_size", [1, 0, -4])
def test_block_size_below_two_is_an_error(block_size, tmp_path):
    with pytest.raises(ValueError, match="block_size must be at least 2"):
        run_command(["--block-size", str(block_size), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_unknown_encoding_is_an_error(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown position encoding\(s\) \['alibii'\]: choose from alibi, sinusoidal"
    ):
        run_command(["--encodings", "alibi", "alibii", "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_compare_and_encodings_together_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="give --compare or --encodings, not both"):
        run_command(["--compare", "--encodings", "alibi", "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"vocab_size": 100}, "vocab_size must be at least 257"),
        ({"multiples": (1, 0)}, "multiples must be positive integers"),
        ({"hidden_size": 100, "num_attention_heads": 8}, "num_attention_heads"),
        ({"encodings": ()}, "encodings is empty"),
        ({"encodings": ("alibi", "alibi")}, "encodings has duplicates"),
        ({"max_eval_tokens": 100}, "shorter than the longest evaluation length 512"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"efficiency": True, "compare": True}, "give it without --compare or --encodings"),
        ({"efficiency": True, "encodings": ["alibi"]}, "give it without --compare or --encodings"),
        ({"efficiency": True, "batch_size": 7}, "batch_size must be even, got 7"),
        ({"repeat_span_fraction": -0.1}, r"repeat_span_fraction must be in \[0, 1\]"),
    ],
)
def test_bad_settings_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        DemoSettings(**overrides)


# ---------------------------------------------------------------------------------------------------------
# An output folder that holds something is replaced only with --overwrite (a tiny run: ~10 s)

TINY_ARGS = [
    "--topic", "Mathematics",
    "--steps", "2",
    "--block-size", "8",
    "--hidden-size", "16",
    "--layers", "1",
    "--heads", "2",
    "--vocab-size", "300",
    "--batch-size", "2",
    "--multiples", "1", "2",
    "--max-eval-tokens", "64",
    "--no-generate",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The output folder of a tiny demo run, made empty beforehand: an empty folder needs no --overwrite."""
    root = tmp_path_factory.mktemp("overwrite")
    out = root / "out"
    out.mkdir()
    run_command([*TINY_ARGS, "--output-dir", str(out), "--cache-dir", str(root / "cache")])
    return out


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_non_empty_output_dir_is_refused_before_any_work(finished_run, monkeypatch):
    before = _listing(finished_run), (finished_run / "demo.json").read_bytes()
    monkeypatch.setattr(demo, "load_raw_datasets", lambda *a, **k: pytest.fail("loaded the data before refusing"))
    message = f"output_dir {finished_run} is not empty (alibi/, demo.json, demo.md, and 3 more): pass --overwrite"
    with pytest.raises(ValueError, match=re.escape(message)):
        run_command([*TINY_ARGS, "--output-dir", str(finished_run)])
    assert (_listing(finished_run), (finished_run / "demo.json").read_bytes()) == before


def test_overwrite_runs_again_in_a_non_empty_output_dir(finished_run):
    (finished_run / "demo.json").write_text("{}")
    result = run_demo(parse([*TINY_ARGS, "--output-dir", str(finished_run), "--overwrite"]))
    assert result.files["json"] == finished_run / "demo.json"
    assert json.loads(result.files["json"].read_text())["training"]["alibi"]["steps"] == 2


def test_in_a_log_progress_is_a_line_every_five_percent_and_library_bars_are_off(tmp_path, capsys):
    """stderr is not a terminal under pytest: no tqdm redraws (no carriage return), a line per 5% of each run."""
    import datasets
    from transformers.utils import logging as hf_logging

    args = [a for a in TINY_ARGS if a != "--no-progress"]
    args[args.index("--steps") + 1] = "40"
    capsys.readouterr()
    run_command([*args, "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert "\r" not in err, err[:2000]
    lines = [line for line in err.splitlines() if line.startswith("training: ")]
    assert len(lines) == 2 * 20, lines  # two models, 40 steps each, a line every 2 steps
    assert lines[19].startswith("training: 100% 40/40 steps") and "loss " in lines[19]
    assert any(line.startswith("ppl@16: 100%") for line in err.splitlines())
    # Back as they were after the run.
    assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()


def test_no_progress_prints_no_progress_at_all(tmp_path, capsys):
    capsys.readouterr()
    run_command([*TINY_ARGS, "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert "training: " not in err and "ppl@" not in err and "%|" not in err, err[:2000]


# ---------------------------------------------------------------------------------------------------------
# --efficiency: ALiBi at L against sinusoidal at 2L on the same tokens (a tiny run: ~20 s)


def test_efficiency_trains_alibi_at_l_and_sinusoidal_at_2l_on_the_same_tokens():
    settings = parse(["--efficiency", "--block-size", "32", "--batch-size", "8"])
    assert settings.command() == "alibi-lm demo --efficiency --batch-size 8"  # 32 is the default block size
    runs = settings.runs()
    assert [(r.name, r.encoding, r.block_size, r.batch_size) for r in runs] == [
        ("alibi", "alibi", 32, 8),
        ("sinusoidal-2L", "sinusoidal", 64, 4),
    ]
    assert settings.stem == "efficiency" and parse([]).stem == "demo" and parse(["--compare"]).stem == "demo-compare"


def test_efficiency_run_reports_perplexity_speed_and_memory(tmp_path):
    from alibi_lm.efficiency import verdict

    args = [a for a in TINY_ARGS if a != "--no-generate"] + ["--multiples", "1", "2", "4", "--max-eval-tokens", "128"]
    result = run_demo(
        parse([*args, "--efficiency", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    )
    assert [r.model_name for r in result.results] == ["alibi", "sinusoidal-2L"]
    assert result.generation is None  # the efficiency run is about training, not sampling
    for name, length in (("alibi", 8), ("sinusoidal-2L", 16)):
        config = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / name).config
        assert (config.train_length, config.max_position_embeddings) == (length, 16 * length)
        assert result.training[name]["steps"] == 2 and result.training[name]["block_size"] == length
    speed = result.speed
    assert speed["alibi"]["tokens_per_step"] == speed["sinusoidal-2L"]["tokens_per_step"] == 16
    for info in speed.values():
        assert info["tokens_per_second"] == pytest.approx(16 / info["step_seconds"], rel=1e-3)
        assert info["peak_bytes"] > 0 and info["total_bytes"] == info["peak_bytes"] + info["persistent_bytes"]
        # weights + AdamW's two moments: at least three copies of the fp32 parameters
        assert info["persistent_bytes"] >= 3 * 4 * result.training["alibi"]["parameters"]
    text = (tmp_path / "out" / "efficiency.md").read_text()
    assert "| `sinusoidal-2L` | 16 | 16 |" in text and "training tokens/s" in text
    for line in verdict(result):
        assert line in text
    assert any(f"At 16 tokens (2x L): `alibi` {result.ppl('alibi', 2):.2f}" in line for line in verdict(result))
    saved = json.loads((tmp_path / "out" / "efficiency.json").read_text())
    assert saved["speed"] == speed and saved["command"].startswith("alibi-lm demo --output-dir")
    assert (tmp_path / "out" / "efficiency.png").read_bytes()[:4] == b"\x89PNG"
