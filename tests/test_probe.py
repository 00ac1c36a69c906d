"""The copy probe (`alibi_lm.probe`, `alibi-lm eval --probe`) on hand-built models whose answer is known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alibi_lm.probe import alibi_reach, copy_probe, probe_sequences
from tests.tiny import cli_error, random_ids, tiny_model

VOCAB = 50


class CopiesFrom(torch.nn.Module):
    """Predicts that the next token is the one `distance - 1` tokens before the current one: a perfect copier
    over exactly `distance`, uniform where it cannot look that far back."""

    def __init__(self, distance: int):
        super().__init__()
        self.distance = distance
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to put the inputs on

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, VOCAB)
        source = torch.arange(length) + 1 - self.distance  # position of the token predicted at each step
        ok = source >= 0
        logits[:, ok] = 100.0 * torch.nn.functional.one_hot(input_ids[:, source[ok]], VOCAB).float()
        return SimpleNamespace(logits=logits)


def test_sequences_are_a_span_a_gap_and_the_span_again():
    stream = torch.arange(1000)
    rows = probe_sequences(stream, span=8, gap=5, samples=3)
    assert rows.shape == (3, 21)
    for s, row in enumerate(rows):
        assert torch.equal(row[:8], stream[8 * s : 8 * s + 8]) and torch.equal(row[13:], row[:8])
        assert (row[8:13] >= 500).all()  # fillers from the second half, never the span itself


def test_a_model_that_copies_from_exactly_span_plus_gap_back_has_zero_loss_on_the_repeat_only_at_that_gap():
    span, gaps = 8, [0, 4, 16]
    stream = random_ids(1, 2000, VOCAB)[0]
    result = copy_probe(CopiesFrom(span + 4), stream, gaps, span=span, samples=5, progress=False)
    assert result.gaps == gaps
    at = dict(zip(result.gaps, result.repeat_loss))
    assert at[4] < 1e-6 and result.repeat_accuracy[1] == 1.0  # copies the repeat perfectly
    assert at[0] > 10 and at[16] > 10  # copies the wrong token at other gaps (one-hot logit 100 on it)
    # The first time, the span opens the sequence: nothing lies `distance` back, so the model is uniform.
    assert result.first_loss == pytest.approx([math.log(VOCAB)] * 3, rel=1e-6)


def test_uniform_model_loses_log_vocab_everywhere():
    result = copy_probe(CopiesFrom(10**6), random_ids(1, 400, VOCAB)[0], [0, 3], span=4, samples=2, progress=False)
    for loss in result.first_loss + result.repeat_loss:
        assert loss == pytest.approx(math.log(VOCAB), rel=1e-6)


def test_bad_probe_settings_are_refused():
    with pytest.raises(ValueError, match="fewer samples, a shorter span or a longer text"):
        probe_sequences(torch.arange(100), span=32, gap=0, samples=8)
    with pytest.raises(ValueError, match="need span >= 2"):
        copy_probe(CopiesFrom(3), torch.arange(1000), [-1], progress=False)


def test_alibi_reach_is_where_the_bias_leaves_one_percent():
    assert alibi_reach([0.5, 1 / 256]) == [10, 1179]  # ln(100) / m, rounded up
    for m, d in zip([0.5, 1 / 256], alibi_reach([0.5, 1 / 256])):
        assert math.exp(-m * d) <= 0.01 < math.exp(-m * (d - 1))


def test_eval_cli_runs_the_probe_on_a_saved_model(tmp_path, capsys):
    import json

    from alibi_lm.cli import main
    from tests.tiny import saved_folder

    folder = saved_folder(tiny_model(), tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i * 7 % 97 + 1}" for i in range(600)))
    argv = ["eval", str(folder), "--data", str(text), "--probe", "--probe-span", "8", "--probe-samples", "2"]
    out_files = ["--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png"), "--no-progress"]
    assert main([*argv, "--probe-gaps", "0", "16", *out_files]) == 0
    out = capsys.readouterr().out
    assert "| gap d | loss, first time | loss, repeat |" in out and "| 16 |" in out
    assert "ALiBi bias alone leaves 1% of the weight at distances (per head): [19, 74, 295, 1179]" in out
    saved = json.loads((tmp_path / "p.json").read_text())
    assert [r["gaps"] for r in saved["probe"]] == [[0, 16]] and saved["alibi_reach_1pct"] == {
        "model": [19, 74, 295, 1179]
    }
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    message = cli_error([*argv, "--probe-gaps", "5000"], capsys)
    assert "longer text" in message
    assert "give one of them" in cli_error([*argv, "--by-position"], capsys)
    assert "--mode and --stride do not apply" in cli_error([*argv, "--mode", "sliding", "--stride", "2"], capsys)

    # --max-tokens N: the probe on the first N tokens, read only as far as them (a bad record past them is not reached)
    from alibi_lm.scoring import load_model_and_tokenizer, tokenize_texts

    words = text.read_text().split()
    texts = [" ".join(words[start : start + 100]) for start in range(0, len(words), 100)]
    records = tmp_path / "records.jsonl"
    records.write_text("\n".join([*(json.dumps({"text": t}) for t in texts), '{"text": 5}']) + "\n")
    probe = ["eval", str(folder), "--data", str(records), "--probe", "--probe-span", "8", "--probe-samples", "2"]
    probe += ["--probe-gaps", "0", "16", "--no-progress"]
    assert main([*probe, "--max-tokens", "300", "--json", str(tmp_path / "q.json")]) == 0
    model, tokenizer = load_model_and_tokenizer(str(folder), "cpu")
    expected = copy_probe(model, tokenize_texts(texts, tokenizer)[:300], [0, 16], span=8, samples=2, progress=False)
    got = json.loads((tmp_path / "q.json").read_text())["probe"][0]
    assert got["repeat_loss"] == pytest.approx(expected.repeat_loss, rel=1e-6)
    assert got["first_loss"] == pytest.approx(expected.first_loss, rel=1e-6)
    assert expected.repeat_loss != pytest.approx(saved["probe"][0]["repeat_loss"], rel=1e-3)  # not the whole text's
    assert "is the first" in cli_error(probe, capsys)  # read whole without --max-tokens
    assert "--max-tokens must be at least 2" in cli_error([*probe, "--max-tokens", "1"], capsys)


def test_eval_cli_loss_by_position_averages_to_the_perplexity_eval_reports(tmp_path, capsys):
    import json

    from alibi_lm.cli import main
    from tests.tiny import cli_error, saved_folder

    folder = saved_folder(tiny_model(), tmp_path / "model")  # trained length 16 (train_length)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i * 7 % 97 + 1}" for i in range(600)))
    common = ["eval", str(folder), "--data", str(text), "--lengths", "64", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "ppl.json")]) == 0
    assert (
        main([*common, "--by-position", "--json", str(tmp_path / "pos.json"), "--plot", str(tmp_path / "pos.png")])
        == 0
    )
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| 1-8",
        "| 9-16",
        "| 17-32",
        "| 33-63",
        "| all (= non-overlapping loss)",
        "| perplexity",
    ]
    curve = json.loads((tmp_path / "pos.json").read_text())["by_position"][0]
    assert curve["length"] == 64 and len(curve["loss"]) == 63 and curve["training_length"] == 16
    ppl = json.loads((tmp_path / "ppl.json").read_text())[0]["lengths"][0]["ppl"]
    assert math.exp(sum(curve["loss"]) / 63) == pytest.approx(ppl, rel=1e-6)
    assert (tmp_path / "pos.png").stat().st_size > 10_000

    # With --max-tokens the text is read only as far as the tokens it scores: a bad record past them is not reached.
    words = text.read_text().split()
    records = tmp_path / "records.jsonl"
    lines = [json.dumps({"text": " ".join(words[start : start + 100])}) for start in range(0, len(words), 100)]
    records.write_text("\n".join([*lines, '{"text": 5}']) + "\n")
    by_position = ["eval", str(folder), "--data", str(records), "--by-position", "--lengths", "64", "--no-progress"]
    assert main([*by_position, "--max-tokens", "200"]) == 0
    assert "Record 6 is the first" in cli_error(by_position, capsys)


def test_position_buckets_cover_every_position_once():
    from alibi_lm.probe import position_buckets

    assert position_buckets(1024, 64) == [(1, 8), (9, 64), (65, 128), (129, 256), (257, 512), (513, 1023)]
    assert position_buckets(10, 64) == [(1, 8), (9, 9)]
    for length, trained in ((64, 64), (100, 7), (3, 2)):
        covered = [c for a, b in position_buckets(length, trained) for c in range(a, b + 1)]
        assert covered == list(range(1, length))


def test_loss_by_position_averages_back_to_the_non_overlapping_loss():
    from alibi_lm.probe import loss_by_position
    from alibi_lm.scoring import perplexity_at_lengths

    model = tiny_model()
    stream = random_ids(1, 1000)[0]
    curve = loss_by_position(model, stream, 64, batch_size=4)
    assert curve.shape == (63,)
    total = perplexity_at_lengths(model, stream, [64], progress=False)[64]
    assert math.exp(float(curve.mean())) == pytest.approx(total.ppl, rel=1e-6)  # the same tokens, fp32 logits
    # A model that looks back exactly 10 tokens is uniform before position 9 and perfect from there on.
    copier = loss_by_position(CopiesFrom(10), torch.arange(300) % 10, 30)  # a stream of period 10
    assert copier[:8].tolist() == pytest.approx([math.log(VOCAB)] * 8) and copier[9:].max() < 1e-6
    with pytest.raises(ValueError, match="at least one chunk"):
        loss_by_position(model, stream[:10], 64)


def test_the_copiers_training_blocks_score_only_the_predictable_part_of_the_copy():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "recipes" / "experiments" / "train_copier.py"
    spec = importlib.util.spec_from_file_location("train_copier", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    pool = torch.arange(5, 4005)  # tokens 0-4 are "special" and must never appear
    ids, labels = recipe.copy_blocks(64, 64, pool, torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (64, 64) and ids.min() >= 5
    distances = set()
    for row, label in zip(ids, labels):
        scored = (label != -100).nonzero().flatten().tolist()
        span = len(scored) + 1  # the second copy's first token is not scored
        assert 16 <= span <= 32 and scored == list(range(scored[0], scored[0] + span - 1))
        assert label[scored].tolist() == row[scored].tolist()
        # The scored tokens repeat an earlier span of the block, at one distance for the whole span.
        second = scored[0] - 1
        matches = [
            d for d in range(span, second + 1) if row[second - d : second - d + span].equal(row[second:][:span])
        ]
        assert matches
        distances.add(matches[0])
    assert len(distances) > 10  # the distance varies, so no encoding can copy from a fixed offset
