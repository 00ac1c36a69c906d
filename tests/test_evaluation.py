"""Tests for the extrapolation harness: perplexity at lengths, its evaluate module, callback, plot and CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import string
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments

from alibi_lm.cli import main as cli_main
from alibi_lm.evaluation import ExtrapolationCallback, perplexity_metric_path
from alibi_lm.plotting import plot_perplexity
from alibi_lm.scoring import (
    PerplexityResult,
    TextPrefix,
    load_model_and_tokenizer,
    perplexity_at_lengths,
    to_csv,
    to_json,
    tokenize_texts,
)
from tests.tiny import cli_error, random_ids, tiny_model

TRAIN_LEN = 16  # tiny_config's train_length

TEXT = (
    "Attention with Linear Biases does not add position embeddings to word embeddings; instead, it biases "
    "query-key attention scores with a penalty that is proportional to their distance. "
) * 4


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (77 ids, fits the tiny vocab of 99), built offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = sorted(set(string.ascii_letters + string.digits + " .,;:'\"!?-()\n"))
    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def hand_nll(model, ids: torch.Tensor, starts: list[int], length: int, scored: list[int]) -> tuple[float, int]:
    """Reference: one forward per window, log-softmax by hand, sum -log p of each window's last `scored` tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start, n in zip(starts, scored):
            window = ids[start : start + length]
            logp = torch.log_softmax(model(input_ids=window[None]).logits[0].double(), dim=-1)  # [L, V]
            # position t predicts token t + 1
            per_token = -logp[:-1].gather(1, window[1:, None])[:, 0]  # [L - 1]
            total += per_token[-n:].sum().item()
            count += n
    return total, count


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return random_ids(1, 50, seed=1)[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model) -> Path:
    folder = tmp_path_factory.mktemp("tiny_alibi")
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


# --- correctness ------------------------------------------------------------------------------------------


def test_nonoverlapping_at_training_length_equals_exp_trainer_eval_loss(model, tmp_path):
    ids = random_ids(1, 5 * TRAIN_LEN, seed=2)[0]
    blocks = [{"input_ids": b, "labels": b} for b in ids.view(5, TRAIN_LEN)]
    # batch 3 over 5 blocks: the last batch is short, so a plain mean of batch means would differ
    args = TrainingArguments(tmp_path, per_device_eval_batch_size=3, report_to="none", use_cpu=True, disable_tqdm=True)
    eval_loss = Trainer(model=model, args=args, eval_dataset=blocks).evaluate()["eval_loss"]

    result = perplexity_at_lengths(model, ids, [TRAIN_LEN], progress=False)

    assert result[TRAIN_LEN].n_tokens == 5 * (TRAIN_LEN - 1)
    assert result[TRAIN_LEN].ppl == pytest.approx(math.exp(eval_loss), rel=1e-5)


def test_sliding_with_stride_equal_to_length_equals_nonoverlapping(model, ids):
    lengths = [4, 8, 16]
    flat = perplexity_at_lengths(model, ids, lengths, progress=False)
    for length in lengths:
        slid = perplexity_at_lengths(model, ids, [length, 16], mode="sliding", stride=length, progress=False)
        assert slid[length].n_tokens == flat[length].n_tokens
        assert slid[length].nll == pytest.approx(flat[length].nll, rel=1e-12)


def test_nonoverlapping_matches_hand_computation(model, ids):
    result = perplexity_at_lengths(model, ids, [8, 16], progress=False)
    # span = 48 tokens (largest multiple of 16 in 50); chunks of 8 -> 6 x 7, chunks of 16 -> 3 x 15 scored tokens
    for length, n_chunks in [(8, 6), (16, 3)]:
        total, count = hand_nll(model, ids, [i * length for i in range(n_chunks)], length, [length - 1] * n_chunks)
        assert result[length].n_tokens == count == n_chunks * (length - 1)
        assert result[length].n_windows == n_chunks
        assert result[length].nll == pytest.approx(total / count, rel=1e-6)
        assert result[length].ppl == pytest.approx(math.exp(total / count), rel=1e-6)


def test_sliding_window_matches_hand_computation(model, ids):
    stride = 3
    result = perplexity_at_lengths(model, ids, [8, 16], mode="sliding", stride=stride, progress=False)
    for length in (8, 16):
        starts = list(range(0, 48 - length + 1, stride))  # windows inside the 48-token span
        scored = [length - 1] + [stride] * (len(starts) - 1)  # first window scores all, the rest their last 3
        total, count = hand_nll(model, ids, starts, length, scored)
        assert result[length].n_tokens == count
        assert result[length].nll == pytest.approx(total / count, rel=1e-6)
    assert result[8].n_tokens == 7 + 13 * 3  # 14 windows of 8 in 48 tokens
    assert result[16].n_tokens == 15 + 10 * 3  # 11 windows of 16


def test_stride_one_scores_every_token_once(model, ids):
    result = perplexity_at_lengths(model, ids, [8], mode="sliding", stride=1, progress=False)
    # 48-token span: every token but the first is predicted exactly once
    assert result[8].n_tokens == 47 and result[8].n_windows == 41


def test_sliding_edge_strides_and_a_text_of_one_window(model, ids):
    # stride L - 1: windows overlap by one token, so every token after the first is scored once, each with a
    # context of 1 to L - 1 tokens, like non-overlapping chunks but with no token left out between chunks.
    result = perplexity_at_lengths(model, ids, [8], mode="sliding", stride=7, progress=False)
    starts = list(range(0, 48 - 8 + 1, 7))  # 0, 7, ..., 35 inside the 48-token span: 6 windows
    total, count = hand_nll(model, ids, starts, 8, [7] * len(starts))
    assert result[8].n_windows == 6 and result[8].n_tokens == count == 42
    assert result[8].nll == pytest.approx(total / count, rel=1e-6)
    # A text exactly one window long: one window, every predicted token scored, in both modes.
    one = ids[:16]
    for mode, stride in (("sliding", 1), ("sliding", 16), ("nonoverlapping", None)):
        single = perplexity_at_lengths(model, one, [16], mode=mode, stride=stride, progress=False)[16]
        assert (single.n_windows, single.n_tokens) == (1, 15)
        assert single.nll == pytest.approx(hand_nll(model, one, [0], 16, [15])[0] / 15, rel=1e-6)


def test_uniform_model_has_perplexity_equal_to_vocab_size(ids):
    model = tiny_model(seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # zero logits: every token has probability 1 / 99
    result = perplexity_at_lengths(model, ids, [4, 16], mode="sliding", stride=2, progress=False)
    # log-softmax runs in fp32 (log 99 to ~1e-7); per-token losses are summed in fp64
    assert result[4].ppl == pytest.approx(99, rel=1e-6)
    assert result[16].ppl == pytest.approx(99, rel=1e-6)


def test_batch_size_does_not_change_the_result(model, ids):
    one = perplexity_at_lengths(model, ids, [8, 16], mode="sliding", stride=5, batch_size=1, progress=False)
    many = perplexity_at_lengths(model, ids, [8, 16], mode="sliding", stride=5, batch_size=7, progress=False)
    for length in (8, 16):
        assert many[length].nll == pytest.approx(one[length].nll, rel=1e-6)


def test_model_training_mode_is_restored(ids):
    model = tiny_model(seed=0, hidden_dropout=0.5).train()
    first = perplexity_at_lengths(model, ids, [8], progress=False)
    second = perplexity_at_lengths(model, ids, [8], progress=False)
    assert model.training
    assert first[8].nll == second[8].nll  # dropout was off during evaluation


def test_texts_are_joined_with_eos_and_scored_like_their_ids(model):
    tokenizer = char_tokenizer()
    texts = ["ALiBi extrapolates.", "Sinusoidal does not."]
    ids = tokenize_texts(texts, tokenizer)
    assert ids.tolist() == (
        tokenizer(texts[0])["input_ids"]
        + [tokenizer.eos_token_id]
        + tokenizer(texts[1])["input_ids"]
        + [tokenizer.eos_token_id]
    )
    from_texts = perplexity_at_lengths(model, texts=texts, tokenizer=tokenizer, lengths=[8], progress=False)
    from_ids = perplexity_at_lengths(model, ids, [8], progress=False)
    assert from_texts[8].nll == from_ids[8].nll


# --- outputs ----------------------------------------------------------------------------------------------


def test_json_and_csv_hold_the_numbers(model, ids, tmp_path):
    result = perplexity_at_lengths(model, ids, [8, 16], model_name="tiny", progress=False)
    to_json([result], tmp_path / "out.json")
    to_csv([result], tmp_path / "out.csv")

    loaded = json.loads((tmp_path / "out.json").read_text())
    assert loaded[0]["model_name"] == "tiny" and loaded[0]["training_length"] == TRAIN_LEN
    assert [r["ppl"] for r in loaded[0]["lengths"]] == [result[8].ppl, result[16].ppl]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert [(int(r["length"]), float(r["ppl"]), int(r["n_tokens"])) for r in rows] == [
        (8, result[8].ppl, 42),
        (16, result[16].ppl, 45),
    ]
    table = result.to_table()
    assert f"{result[16].ppl:.2f}*" in table  # the training length is starred
    # Read back, a saved result is the same object: every field, every length.
    assert PerplexityResult.from_dict(loaded[0]) == result


def test_plot_is_a_valid_png(model, ids, tmp_path):
    results = [
        perplexity_at_lengths(model, ids, [4, 8, 16], model_name="a", progress=False),
        perplexity_at_lengths(tiny_model(seed=1), ids, [4, 8, 16], model_name="b", progress=False),
    ]
    path = plot_perplexity(results, tmp_path / "plot.png", dpi=100)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (640, 420)  # figsize 6.4 x 4.2 inches at 100 dpi


# --- evaluate module and Trainer callback -----------------------------------------------------------------


def test_evaluate_module_loads_by_path_and_matches_the_function(model, model_dir, tmp_path):
    import evaluate

    metric = evaluate.load(perplexity_metric_path(), cache_dir=str(tmp_path))
    texts = [TEXT[:150], TEXT[150:]]
    expected = perplexity_at_lengths(model, texts=texts, tokenizer=char_tokenizer(), lengths=[8, 32], progress=False)

    from_folder = metric.compute(predictions=texts, model_id=str(model_dir), lengths=[32, 8], device="cpu")
    from_object = metric.compute(predictions=texts, model_id=model, tokenizer=char_tokenizer(), lengths=[8, 32])

    for out in (from_folder, from_object):
        assert out["lengths"] == [8, 32]
        assert out["n_tokens"] == [expected[8].n_tokens, expected[32].n_tokens]
        assert out["perplexities"] == pytest.approx([expected[8].ppl, expected[32].ppl], rel=1e-6)


def test_callback_logs_perplexity_at_lengths_during_training(tmp_path):
    model = tiny_model(seed=3)
    train = [{"input_ids": b, "labels": b} for b in random_ids(8, TRAIN_LEN, seed=4)]
    held_out = random_ids(1, 64, seed=5)[0]
    args = TrainingArguments(
        tmp_path,
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=train[:2])
    trainer.add_callback(ExtrapolationCallback(held_out, [TRAIN_LEN, 4 * TRAIN_LEN], trainer=trainer))
    trainer.train()

    logged = [e for e in trainer.state.log_history if "eval_ppl@16" in e]
    assert [e["step"] for e in logged] == [2, 4]
    assert all("eval_ppl@64" in e for e in logged)
    assert logged[0]["eval_ppl@16"] != logged[1]["eval_ppl@16"]  # computed on the current weights
    final = perplexity_at_lengths(trainer.model, held_out, [TRAIN_LEN, 4 * TRAIN_LEN], progress=False)
    assert logged[1]["eval_ppl@16"] == pytest.approx(final[16].ppl, rel=1e-6)
    assert logged[1]["eval_ppl@64"] == pytest.approx(final[64].ppl, rel=1e-6)
    assert trainer.evaluate()["eval_ppl@64"] == pytest.approx(final[64].ppl, rel=1e-6)  # usable for best model


def test_callback_without_a_trainer_reference_adds_to_metrics_and_history(model, tmp_path):
    held_out = random_ids(1, 64, seed=5)[0]
    args = TrainingArguments(tmp_path, report_to="none", use_cpu=True, disable_tqdm=True)
    blocks = [{"input_ids": b, "labels": b} for b in random_ids(2, TRAIN_LEN, seed=6)]
    trainer = Trainer(model=model, args=args, eval_dataset=blocks, callbacks=[ExtrapolationCallback(held_out, [32])])
    metrics = trainer.evaluate()
    expected = perplexity_at_lengths(model, held_out, [32], progress=False)[32].ppl
    assert metrics["eval_ppl@32"] == pytest.approx(expected, rel=1e-6)
    assert trainer.state.log_history[-1]["eval_ppl@32"] == metrics["eval_ppl@32"]


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_writes_table_json_csv_and_plot(model, model_dir, tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    argv = ["eval", str(model_dir), "--data", str(data), "--lengths", "8", "32", "--device", "cpu", "--no-progress"]
    argv += ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png")]
    assert cli_main(argv) == 0

    expected = perplexity_at_lengths(model, texts=[TEXT], tokenizer=char_tokenizer(), lengths=[8, 32], progress=False)
    out = capsys.readouterr().out
    assert f"{expected[8].ppl:.2f}" in out and f"{expected[32].ppl:.2f}" in out
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert [r["ppl"] for r in loaded[0]["lengths"]] == pytest.approx([expected[8].ppl, expected[32].ppl], rel=1e-6)
    assert (tmp_path / "r.csv").read_text().count("\n") == 3
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_default_lengths_are_multiples_of_the_training_length(model_dir, tmp_path, capsys):
    data = tmp_path / "texts.json"
    data.write_text(json.dumps([{"text": TEXT}, {"text": TEXT}]))  # 2 x 733 tokens, enough for 16 x 16
    assert cli_main(["eval", str(model_dir), "--data", str(data), "--device", "cpu", "--no-progress"]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [int(row.split()[0]) for row in rows] == [16, 32, 64, 128, 256]


def test_cli_reads_the_offline_wikipedia_test_split(model, model_dir, capsys):
    from alibi_lm.data import load_offline_wikipedia

    argv = ["eval", str(model_dir), "--data", "wikipedia", "--lengths", "8", "16", "--max-tokens", "200"]
    assert cli_main(argv + ["--device", "cpu", "--no-progress"]) == 0
    texts = load_offline_wikipedia(split="test")["text"]
    expected = perplexity_at_lengths(
        model, texts=texts, tokenizer=char_tokenizer(), lengths=[8, 16], max_tokens=200, progress=False
    )
    assert expected[16].n_tokens == 12 * 15  # 192-token span of the first 200 tokens
    assert f"{expected[16].ppl:.2f}*" in capsys.readouterr().out


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [[1, 8], [0], [8, -4]])
def test_lengths_below_two_are_rejected(model, ids, lengths):
    with pytest.raises(ValueError, match="length must be >= 2"):
        perplexity_at_lengths(model, ids, lengths, progress=False)


def test_stride_above_a_length_is_rejected(model, ids):
    with pytest.raises(ValueError, match=r"stride 9 is longer than evaluation length\(s\) \[8\]"):
        perplexity_at_lengths(model, ids, [8, 16], mode="sliding", stride=9, progress=False)


@pytest.mark.parametrize("stride", [0, -3])
def test_stride_not_positive_is_rejected(model, ids, stride):
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        perplexity_at_lengths(model, ids, [8], mode="sliding", stride=stride, progress=False)


def test_sliding_needs_a_stride_and_nonoverlapping_refuses_one(model, ids):
    with pytest.raises(ValueError, match="needs a stride"):
        perplexity_at_lengths(model, ids, [8], mode="sliding", progress=False)
    with pytest.raises(ValueError, match="stride applies only to mode='sliding'"):
        perplexity_at_lengths(model, ids, [8], stride=4, progress=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        perplexity_at_lengths(model, ids, [8], mode="overlapping", progress=False)


def test_text_shorter_than_the_longest_length_is_an_error(model):
    tokenizer = char_tokenizer()
    with pytest.raises(ValueError, match="the text has 12 tokens, fewer than the longest evaluation length 16"):
        perplexity_at_lengths(model, texts="short text.", tokenizer=tokenizer, lengths=[8, 16], progress=False)
    with pytest.raises(ValueError, match="held-out text has 10 tokens"):
        ExtrapolationCallback(torch.arange(10), [8, 16])


def test_missing_model_path_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model_and_tokenizer(str(missing))
    message = cli_error(["eval", str(missing), "--data", str(tmp_path / "x.txt"), "--lengths", "8"], capsys)
    assert f"model folder(s) not found: {missing}" in message


# --- --data in the forms training takes ---------------------------------------------------------------------

OTHER = TEXT.upper().replace("ALIBI", "the linear bias")


def _jsonl(path: Path, texts: list[str], column: str = "text", opener=open) -> None:
    with opener(path, "wt") as f:
        f.writelines(json.dumps({column: text, "n": n}) + "\n" for n, text in enumerate(texts))


def _write_form(form: str, root: Path, url: str) -> tuple[list[str], list[str]]:
    """Write TEXT and OTHER (with an empty document between) in `form`; return the --data arguments and the texts
    they must score."""
    import gzip

    texts = [TEXT, "", OTHER]
    if form == "txt":
        (root / "a.txt").write_text(TEXT)
        return [str(root / "a.txt")], [TEXT]
    if form == "json":
        (root / "a.json").write_text(json.dumps([{"text": text} for text in texts]))
        return [str(root / "a.json")], [TEXT, OTHER]
    if form == "jsonl.gz":
        _jsonl(root / "a.jsonl.gz", texts, opener=gzip.open)
        return [str(root / "a.jsonl.gz")], [TEXT, OTHER]
    if form == "glob":  # two files, written out of order: the pattern reads them sorted
        _jsonl(root / "part-2.jsonl", [OTHER])
        _jsonl(root / "part-1.jsonl", [TEXT])
        return [str(root / "part-*.jsonl")], [TEXT, OTHER]
    if form == "csv, a column":
        with open(root / "a.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerows([["title", "body"], ["one", TEXT], ["two", OTHER]])
        return [str(root / "a.csv"), "--text-column", "body"], [TEXT, OTHER]
    if form == "URL":
        _jsonl(root / "served.jsonl", texts)
        return [f"{url}/served.jsonl"], [TEXT, OTHER]
    # A dataset folder laid out as a Hub dataset repository (configs in its card, Parquet shards) goes through
    # `load_dataset(name, config)` as a Hub name does; its config and split are chosen.
    for config, split, rows in [("raw", "train", ["not scored"]), ("raw", "validation", [OTHER, "", TEXT])]:
        (root / "corpus" / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({"text": rows}).to_parquet(root / "corpus" / config / f"{split}-0.parquet")
    (root / "corpus" / "README.md").write_text(
        "---\nconfigs:\n- config_name: raw\n  data_files:\n"
        + "".join(f"  - split: {split}\n    path: raw/{split}-*\n" for split in ("train", "validation"))
        + "---\n"
    )
    return [str(root / "corpus"), "--data-config", "raw", "--split", "validation"], [OTHER, TEXT]


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory):
    """A folder on a local HTTP server, the stand-in for a remote file (https://, hf://, s3://)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path_factory.mktemp("served")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("form", ["txt", "json", "jsonl.gz", "glob", "csv, a column", "URL", "dataset folder"])
def test_eval_reads_data_in_every_form_training_takes(model, model_dir, tmp_path, served_folder, form):
    folder, url = served_folder
    root = folder if form == "URL" else tmp_path
    data, texts = _write_form(form, root, url)
    argv = ["eval", str(model_dir), "--data", *data, "--lengths", "8", "32", "--device", "cpu", "--no-progress"]
    assert cli_main([*argv, "--json", str(tmp_path / "r.json")]) == 0
    expected = perplexity_at_lengths(model, texts=texts, tokenizer=char_tokenizer(), lengths=[8, 32], progress=False)
    scored = json.loads((tmp_path / "r.json").read_text())[0]["lengths"]
    assert [r["n_tokens"] for r in scored] == [expected[8].n_tokens, expected[32].n_tokens]
    assert [r["ppl"] for r in scored] == pytest.approx([expected[8].ppl, expected[32].ppl], rel=1e-6)


@pytest.mark.parametrize("name", ["wikipedia", "offline-wikipedia"])
def test_eval_scores_a_chosen_split_and_topic_of_the_offline_wikipedia(model, model_dir, tmp_path, name):
    from alibi_lm.data import load_offline_wikipedia

    argv = ["eval", str(model_dir), "--data", name, "--split", "validation", "--data-config", "Mathematics"]
    argv += ["--lengths", "8"]
    assert (
        cli_main(
            [*argv, "--max-tokens", "300", "--device", "cpu", "--no-progress", "--json", str(tmp_path / "r.json")]
        )
        == 0
    )
    texts = load_offline_wikipedia(split="validation", topic="Mathematics")["text"]
    expected = perplexity_at_lengths(
        model, texts=texts, tokenizer=char_tokenizer(), lengths=[8], max_tokens=300, progress=False
    )
    assert json.loads((tmp_path / "r.json").read_text())[0]["lengths"][0]["ppl"] == pytest.approx(
        expected[8].ppl, rel=1e-6
    )
    assert expected[8].ppl != pytest.approx(
        perplexity_at_lengths(
            model,
            texts=load_offline_wikipedia(split="test")["text"],
            tokenizer=char_tokenizer(),
            lengths=[8],
            max_tokens=300,
            progress=False,
        )[8].ppl
    )  # another split is other text


def _bad_data(root: Path) -> None:
    (root / "corpus").mkdir()
    _jsonl(root / "corpus" / "train.jsonl", [TEXT])
    _jsonl(root / "columns.jsonl", [TEXT], column="body")
    (root / "numbers.jsonl").write_text('{"text": "fine"}\n{"text": 7}\n')
    _jsonl(root / "blank.jsonl", ["", "  \n"])
    (root / "a.txt").write_text(TEXT)
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (root / "table.xlsx").write_bytes(b"PK")


@pytest.mark.parametrize(
    "data, message",
    [
        (["corpus"], r"corpus has no 'test' split; its splits are \['train'\]"),
        (["corpus", "--data-config", "raw"], r"BuilderConfig 'raw' not found"),
        (["columns.jsonl"], r"The test split has no column 'text'; its columns are \['body', 'n'\]"),
        (["numbers.jsonl"], r"column 'text' holds int values, not text; .* Record 1 is the first"),
        (["blank.jsonl"], r"The test split of .*blank\.jsonl holds only empty documents"),
        (
            ["a.txt", "--data-config", "wikitext-103-raw-v1"],
            r"config \('wikitext-103-raw-v1'\) applies to a dataset, not",
        ),
        (["missing.txt"], r"The test data file '.*missing\.txt' does not exist"),
        (["nothing-*.jsonl"], r"The test data file pattern '.*nothing-\*\.jsonl' matches no file"),
        (["latin1.txt"], r"latin1\.txt is not UTF-8 text: byte 0xe9 at offset 3"),
        (["table.xlsx"], r"Unsupported data file type '\.xlsx'"),
        (
            ["no-such-user/no-such-dataset"],
            r"'no-such-user/no-such-dataset' is not a data file .* cannot load it as a dataset",
        ),
        (["wikipedia", "--text-column", "body"], r"The offline Wikipedia's text is in its column 'text', not 'body'"),
    ],
)
def test_bad_eval_data_is_named_before_a_model_loads(model_dir, tmp_path, monkeypatch, capsys, data, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub name is looked up once and refused, never downloaded
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    _bad_data(tmp_path)
    loaded = []
    monkeypatch.setattr("alibi_lm.evaluation.load_model_and_tokenizer", lambda *a, **k: loaded.append(a))
    assert re.search(message, cli_error(["eval", str(model_dir), "--data", *data, "--lengths", "8"], capsys))
    assert not loaded


def test_max_tokens_reads_the_texts_it_scores_and_no_further(model, model_dir, tmp_path, capsys):
    # A bad record after the texts that hold --max-tokens tokens is never read: a split of a Hub corpus (terabytes,
    # read as a stream) scores its first N tokens without reading the rest.
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in [TEXT, OTHER, TEXT]) + '{"text": 5}\n')
    argv = ["eval", str(model_dir), str(model_dir), "--data", str(data), "--lengths", "8", "--device", "cpu"]
    assert cli_main([*argv, "--max-tokens", "900", "--no-progress", "--json", str(tmp_path / "r.json")]) == 0
    expected = perplexity_at_lengths(
        model, texts=[TEXT, OTHER, TEXT], tokenizer=char_tokenizer(), lengths=[8], max_tokens=900, progress=False
    )
    rows = [result["lengths"][0] for result in json.loads((tmp_path / "r.json").read_text())]
    assert [row["n_tokens"] for row in rows] == [expected[8].n_tokens] * 2  # both models, the same texts
    assert [row["ppl"] for row in rows] == pytest.approx([expected[8].ppl] * 2, rel=1e-6)
    message = cli_error([*argv, "--no-progress"], capsys)  # every text scored: the bad record is reached
    assert "column 'text' holds int values, not text" in message and "Record 3 is the first" in message
    assert "--max-tokens must be at least 2, got 1" in cli_error([*argv, "--max-tokens", "1"], capsys)


def test_a_text_prefix_is_the_shortest_that_holds_the_tokens():
    tokenizer = char_tokenizer()
    texts = ["abc", "de", "fghij"]  # 4, 3 and 6 tokens with each one's eos
    read: list[str] = []

    def source():
        for text in texts:
            read.append(text)
            yield text

    prefix = TextPrefix(source())
    assert prefix.up_to(tokenizer, 4) == ["abc"] and read == ["abc"]
    assert prefix.up_to(tokenizer, 5) == ["abc", "de"] and read == ["abc", "de"]
    assert prefix.up_to(tokenizer, 7) == ["abc", "de"]
    assert prefix.up_to(tokenizer, 8) == texts
    assert prefix.up_to(tokenizer, 100) == texts  # the texts run out: all of them
    assert prefix.up_to(tokenizer, 2) == ["abc"]
    assert len(tokenize_texts(texts[:2], tokenizer)) == 7
