"""alibi_lm.data and alibi_lm.blocks: offline Wikipedia splits, loaders, BPE tokenizer, blocks with document ids,
caching."""

from __future__ import annotations

import json
import os

import pytest
from datasets import Dataset, DatasetDict

from alibi_lm import blocks as token_blocks
from alibi_lm import data
from alibi_lm.blocks import group_texts, tokenize_and_group, train_bpe_tokenizer
from alibi_lm.data import DataArguments, load_offline_wikipedia, load_raw_datasets

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Naïve café owners in Zürich serve crème brûlée; 日本語 too.",
    "Attention with linear biases extrapolates past the training length.",
    "A fourth document, short.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(Dataset.from_dict({"text": DOCS}), vocab_size=300)


def test_offline_wikipedia_splits_are_deterministic_disjoint_and_complete():
    first = load_offline_wikipedia()
    again = load_offline_wikipedia()
    titles = {split: set(first[split]["title"]) for split in ("train", "validation", "test")}
    assert all(first[s]["title"] == again[s]["title"] for s in titles)
    assert not titles["train"] & titles["validation"] and not titles["train"] & titles["test"]
    assert not titles["validation"] & titles["test"]
    assert sum(len(t) for t in titles.values()) == 10_033
    # ~5% each, from a hash of the title
    assert 400 < len(titles["validation"]) < 620 and 400 < len(titles["test"]) < 620
    assert first["train"].column_names == ["title", "text"]
    assert data.wikipedia_texts("test") == first["test"]["text"]


def test_offline_wikipedia_topic_keeps_its_articles_in_the_global_splits():
    maths = load_offline_wikipedia(topic="Mathematics")
    everything = load_offline_wikipedia()
    assert 200 < sum(len(maths[s]) for s in maths) < 300  # 256 articles
    for split in ("train", "validation", "test"):
        assert set(maths[split]["title"]) <= set(everything[split]["title"])
    with pytest.raises(ValueError, match="topics are: .*Mathematics"):
        load_offline_wikipedia(topic="Astrology")


def test_group_texts_cuts_blocks_drops_the_tail_and_numbers_documents():
    docs = {"input_ids": [[1, 2, 0], [3, 0], [4, 5, 6, 0], [7, 0]]}  # 11 tokens
    out = group_texts(docs, block_size=4, packing=True)
    assert out["input_ids"] == [[1, 2, 0, 3], [0, 4, 5, 6]]  # the tail [0, 7, 0] is shorter than a block
    assert out["labels"] == out["input_ids"]
    assert out["document_ids"] == [[0, 0, 0, 1], [0, 1, 1, 1]]
    assert "document_ids" not in group_texts(docs, block_size=4)


@pytest.mark.parametrize("block_size", [0, 1])
def test_block_size_below_two_is_rejected(block_size):
    with pytest.raises(ValueError, match="block_size must be at least 2"):
        DataArguments(dataset_name="offline-wikipedia", block_size=block_size)
    with pytest.raises(ValueError, match="block_size must be at least 2"):
        group_texts({"input_ids": [[1, 2, 3]]}, block_size=block_size)


def test_bpe_tokenizer_is_byte_level_lossless_with_eos(tokenizer, tmp_path):
    assert len(tokenizer) <= 300 and tokenizer.eos_token == "<|endoftext|>"
    for text in DOCS[:4] + ["unseen ✓ symbols ∑ and emoji 🙂"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path)
    reloaded = type(tokenizer).from_pretrained(tmp_path)
    assert reloaded(DOCS[1])["input_ids"] == tokenizer(DOCS[1])["input_ids"]
    assert reloaded.eos_token_id == tokenizer.eos_token_id


def test_blocks_end_documents_with_eos_and_packing_follows_eos(tokenizer, tmp_path):
    raw = DatasetDict({"train": Dataset.from_dict({"text": DOCS + ["", "   "]})})  # blank documents are dropped
    blocks = tokenize_and_group(raw, tokenizer, block_size=8, packing=True, cache_dir=tmp_path)["train"]
    eos = tokenizer.eos_token_id
    stream = [t for block in blocks["input_ids"] for t in block]
    per_doc = [len(tokenizer(d)["input_ids"]) + 1 for d in DOCS]
    assert len(stream) == sum(per_doc) // 8 * 8
    assert stream.count(eos) == sum(1 for end in _cumsum(per_doc) if end <= len(stream))
    for ids, docs in zip(blocks["input_ids"], blocks["document_ids"], strict=True):
        for i in range(1, 8):  # a new document starts exactly after an eos
            assert docs[i] - docs[i - 1] == (1 if ids[i - 1] == eos else 0)


def _cumsum(values):
    total = 0
    for v in values:
        total += v
        yield total


def test_tokenized_blocks_are_cached(tokenizer, tmp_path, monkeypatch):
    raw = DatasetDict({"train": Dataset.from_dict({"text": DOCS})})
    first = tokenize_and_group(raw, tokenizer, block_size=8, cache_dir=tmp_path)
    assert first["train"].cache_files[0]["filename"].startswith(str(tmp_path))

    def boom(*args, **kwargs):
        raise AssertionError("tokenized again instead of loading the cache")

    monkeypatch.setattr(token_blocks, "_tokenize_documents", boom)
    monkeypatch.setattr(token_blocks, "group_texts", boom)
    again = tokenize_and_group(raw, tokenizer, block_size=8, cache_dir=tmp_path)
    assert again["train"]["input_ids"] == first["train"]["input_ids"]


def test_bpe_tokenizer_is_cached_by_data_fingerprint(tmp_path, monkeypatch):
    train = Dataset.from_dict({"text": DOCS})
    first = token_blocks.cached_bpe_tokenizer(train, 280, tmp_path)
    monkeypatch.setattr(token_blocks, "train_bpe_tokenizer", lambda *a, **k: pytest.fail("trained again"))
    assert token_blocks.cached_bpe_tokenizer(train, 280, tmp_path).get_vocab() == first.get_vocab()
    # A shared cache: the folder gets a plain mkdir's mode, not mkdtemp's private 0700.
    (folder,) = tmp_path.glob("tokenizer-bpe280-*")
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


def test_missing_data_file_names_the_file(tmp_path):
    args = DataArguments(train_file=str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_raw_datasets(args)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_local_files_load_with_a_carved_validation_split(tmp_path, suffix):
    path = tmp_path / f"train{suffix}"
    texts = [f"line number {i}" for i in range(40)]
    if suffix == ".txt":
        path.write_text("\n".join(texts))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    else:
        Dataset.from_dict({"text": texts}).to_parquet(str(path))
    raw = load_raw_datasets(
        DataArguments(train_file=str(path), validation_split_percentage=10, cache_dir=str(tmp_path))
    )
    assert raw["validation"]["text"] == texts[:4] and raw["train"]["text"] == texts[4:]


def test_dataset_name_goes_through_load_dataset(tmp_path):
    # A local folder stands in for a Hub repo: same `datasets.load_dataset(name, config)` call.
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text("alpha\nbeta\ngamma")
    (folder / "validation.txt").write_text("delta")
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder), cache_dir=str(tmp_path / "cache")))
    assert raw["train"]["text"] == ["alpha", "beta", "gamma"] and raw["validation"]["text"] == ["delta"]


def test_missing_text_column_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no column 'text'.*body"):
        load_raw_datasets(DataArguments(train_file=str(path), cache_dir=str(tmp_path)))


def _repeat(block):
    """(start, span, gap) of a span of `block` that comes again later in it, longest first; None if none."""
    length = len(block)
    for span in range(length // 2, 1, -1):
        for start in range(0, length - 2 * span + 1):
            for gap in range(0, length - 2 * span - start + 1):
                if block[start : start + span] == block[start + span + gap : start + 2 * span + gap]:
                    return start, span, gap
    return None


def test_repeat_spans_copies_a_span_later_into_the_chosen_blocks_only():
    length, count = 64, 400
    blocks = [list(range(i * length, (i + 1) * length)) for i in range(count)]  # no token repeats anywhere
    out = token_blocks.repeat_spans({"input_ids": blocks}, list(range(count)), fraction=0.5)
    assert out["labels"] == out["input_ids"]
    changed = [i for i, (a, b) in enumerate(zip(blocks, out["input_ids"])) if a != b]
    assert 0.4 < len(changed) / count < 0.6  # about the fraction asked for
    for i, block in enumerate(out["input_ids"]):
        assert len(block) == length and set(block) <= set(blocks[i])
        found = _repeat(block)
        if i not in changed:
            assert found is None
            continue
        start, span, gap = found
        assert length // 16 <= span <= length // 4 and span + gap <= length - span
        # Outside the copy, the block is the original text in order with the last `span` tokens cut.
        rest = block[: start + span + gap] + block[start + 2 * span + gap :]
        assert rest == blocks[i][: length - span]
    # The mix depends only on the block's index and the seed: the same blocks in a second run, others with a new seed.
    again = token_blocks.repeat_spans({"input_ids": blocks}, list(range(count)), fraction=0.5)
    assert again == out
    assert token_blocks.repeat_spans({"input_ids": blocks}, list(range(count)), fraction=0.5, seed=1) != out
    assert token_blocks.repeat_spans({"input_ids": blocks}, list(range(count)), fraction=0.0)["input_ids"] == blocks


def test_repeat_span_fraction_reaches_the_training_blocks_only(tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"line {i} " + " ".join(f"w{i * 31 + j}" for j in range(40)) for i in range(300)))
    tok = train_bpe_tokenizer(Dataset.from_dict({"text": text.read_text().splitlines()}), vocab_size=300)
    plain = token_blocks.build_lm_datasets(DataArguments(train_file=str(text), cache_dir=str(tmp_path / "c")), tok, 32)
    mixed = token_blocks.build_lm_datasets(
        DataArguments(train_file=str(text), cache_dir=str(tmp_path / "c"), repeat_span_fraction=1.0), tok, 32
    )
    assert mixed["validation"]["input_ids"] == plain["validation"]["input_ids"]
    train = plain["train"]["input_ids"]
    special = tok.all_special_ids
    expected = token_blocks.repeat_spans(
        {"input_ids": train}, list(range(len(train))), fraction=1.0, vocab_size=len(tok), exclude=special
    )["input_ids"]
    assert mixed["train"]["input_ids"] == expected
    # Random spans: the first copy and the second copy's first token are not scored; every other label is the token.
    for ids, labels in zip(expected, mixed["train"]["labels"]):
        hidden = [i for i, label in enumerate(labels) if label == -100]
        assert all(labels[i] == ids[i] for i in range(len(ids)) if i not in hidden)
        if hidden:
            span = len(hidden) - 1
            first, second = hidden[:span], hidden[span]
            assert first == list(range(first[0], first[0] + span)) and 32 // 16 <= span <= 32 // 4
            assert ids[second : second + span] == ids[first[0] : first[0] + span]  # the copy starts there
    # Fraction 1: every block gets a copy (one can happen to equal the text it replaces, hence not all differ).
    assert sum(a != b for a, b in zip(train, expected)) > 0.98 * len(train)


def test_random_repeated_spans_are_fresh_tokens_copied_exactly_once():
    length, count = 64, 200
    blocks = [list(range(i * length, (i + 1) * length)) for i in range(count)]  # ids below 12,800
    vocab, special = 20_000, list(range(19_000))  # random spans may use 19,000-19,999 only
    out = token_blocks.repeat_spans({"input_ids": blocks}, list(range(count)), 1.0, vocab_size=vocab, exclude=special)
    for original, block, labels in zip(blocks, out["input_ids"], out["labels"]):
        fresh = [i for i, t in enumerate(block) if t >= 12_800]
        assert len(block) == length and all(block[i] >= 19_000 for i in fresh)
        span = len(fresh) // 2
        first, second = fresh[:span], fresh[span:]
        assert length // 16 <= span <= length // 4
        assert first == list(range(first[0], first[0] + span)) and second == list(range(second[0], second[0] + span))
        assert [block[i] for i in first] == [block[i] for i in second]
        # Only what can be predicted is scored: not the first copy, not the second copy's first token.
        assert [i for i, label in enumerate(labels) if label == -100] == first + second[:1]
        assert all(labels[i] == block[i] for i in range(length) if i not in first + second[:1])
        # The text around the copies keeps its order: the original minus the span at p and the last span tokens.
        rest = [t for t in block if t < 12_800]
        p = first[0]
        assert rest == original[:p] + original[p + span : length - span]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"repeat_span_source": "noise"}, "must be 'random' or 'text'"),
        ({"repeat_span_fraction": 1.5}, r"repeat_span_fraction must be in \[0, 1\], got 1.5"),
        ({"repeat_span_fraction": 0.5, "packing": True}, "cannot be combined with packing"),
    ],
)
def test_bad_repeat_span_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        DataArguments(dataset_name="x", **overrides)


def test_first_bad_record_names_the_file_and_its_own_line(tmp_path):
    import gzip

    from alibi_lm.data_files import first_bad_record

    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n{"text": b}\n')
    scalar = tmp_path / "scalar.jsonl"
    scalar.write_text('{"text": "a"}\n"just a string"\n')
    array = tmp_path / "array.json"
    array.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n')
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"fine\ncaf\xe9\n")
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-12])
    table = tmp_path / "table.csv"
    table.write_text("text\nfine\n")
    assert first_bad_record([str(good), str(table)]) is None
    assert first_bad_record([str(good), str(lines)]) == (
        f"The first bad record is {lines}, line 3: Expecting value (column 10)."
    )
    assert (
        first_bad_record([str(scalar)])
        == f"The first bad record is {scalar}, line 2: not a JSON object (one per line)."
    )
    assert (
        first_bad_record([str(array)])
        == f"The first bad record is {array}, line 3: Expecting property name enclosed in double quotes (column 16)."
    )
    assert "latin1.txt is not UTF-8 text: byte 0xe9 at offset 8" in first_bad_record([str(good), str(latin1)])
    assert "cut.jsonl.gz is not valid .gz data" in first_bad_record([str(truncated)])


def test_a_streams_up_front_check_reads_a_budget_of_text_in_all_not_per_file(tmp_path):
    from alibi_lm.data_files import data_files_arguments

    for number in range(3):
        (tmp_path / f"part-{number}.txt").write_bytes(b"plain words here\n" * 4)  # 68 bytes each
    (tmp_path / "part-2.txt").write_bytes(b"plain words, then caf\xe9\n")
    pattern = str(tmp_path / "part-*.txt")
    arguments = data_files_arguments({"train": pattern}, "line", check_bytes=100)  # part-0 whole, part-1's head
    assert arguments["data_files"]["train"] == [str(tmp_path / f"part-{n}.txt") for n in range(3)]
    with pytest.raises(ValueError, match=r"part-2\.txt is not UTF-8 text: byte 0xe9 at offset 21"):
        data_files_arguments({"train": pattern}, "line")  # no budget: every byte of every file
    with pytest.raises(ValueError, match=r"part-2\.txt is not UTF-8 text"):
        data_files_arguments({"train": pattern}, "line", check_bytes=200)
    (tmp_path / "part-2.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"part-2\.txt is empty"):  # past the budget, a file must still hold text
        data_files_arguments({"train": pattern}, "line", check_bytes=10)


def test_a_bad_record_in_the_validation_file_is_named_there(tmp_path):
    train, validation = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_text('{"text": "fine words"}\n' * 5)
    validation.write_text('{"text": "fine"}\n{"text": unquoted}\n')
    args = DataArguments(train_file=str(train), validation_file=str(validation))
    with pytest.raises(ValueError, match=r"The first bad record is .*valid\.jsonl, line 2: Expecting value"):
        load_raw_datasets(args)
