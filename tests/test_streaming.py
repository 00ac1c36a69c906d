"""Streaming: `streaming: true` trains on text read as training needs it (alibi_lm.data, alibi_lm.blocks)."""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import math
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pytest
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from transformers import AutoModelForCausalLM, TrainerCallback

from alibi_lm import blocks
from alibi_lm.blocks import build_lm_datasets, stream_lm_blocks, tokenize_and_group, train_bpe_tokenizer
from alibi_lm.data import DataArguments, load_raw_datasets, wikipedia_texts
from alibi_lm.train import parse_recipe, train

from .test_big_inputs import prose
from .test_train import KillAt, tiny_recipe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """400 Wikipedia summaries as JSON lines (with a second column), and a BPE trained on them, saved."""
    root = tmp_path_factory.mktemp("stream")
    texts = wikipedia_texts("train")[:400]
    with open(root / "train.jsonl", "w") as f:
        for number, text in enumerate(texts):
            f.write(json.dumps({"text": text, "number": number}) + "\n")
            if number % 50 == 0:
                f.write(json.dumps({"text": "   ", "number": -1}) + "\n")  # blank documents are dropped
    train_bpe_tokenizer(Dataset.from_dict({"text": texts}), vocab_size=320).save_pretrained(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def tokenizer(corpus):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(corpus / "tokenizer")


def stream_args(corpus: Path, **overrides) -> DataArguments:
    return DataArguments(
        train_file=str(corpus / "train.jsonl"), streaming=True, **{"validation_documents": 20, **overrides}
    )


# ---------------------------------------------------------------------------------------------------------------
# Blocks


def test_a_stream_is_read_lazily_and_holds_out_its_first_documents(corpus):
    raw = load_raw_datasets(stream_args(corpus, validation_documents=7))
    assert all(isinstance(split, IterableDataset) for split in raw.values())
    numbers = [record["number"] for record in raw["validation"]]
    assert numbers == [0, -1, 1, 2, 3, 4, 5]  # the file's first 7 records, the blank one included
    assert next(iter(raw["train"]))["number"] == 6


def test_the_offline_wikipedia_streams_its_own_splits():
    whole = load_raw_datasets(DataArguments(dataset_name="offline-wikipedia"))
    raw = load_raw_datasets(DataArguments(dataset_name="offline-wikipedia", streaming=True))
    assert set(raw) == {"train", "validation", "test"} and all(isinstance(d, IterableDataset) for d in raw.values())
    assert [r["title"] for r in raw["validation"]] == whole["validation"]["title"]


@pytest.mark.parametrize("packing", [False, True])
def test_a_stream_cuts_the_blocks_the_map_path_cuts(corpus, tokenizer, tmp_path, packing):
    # Under 1,000 documents the map path groups in one batch, so it drops only the last tail, as a stream does.
    texts = wikipedia_texts("train")[:400]
    mapped = tokenize_and_group(
        DatasetDict({"train": Dataset.from_dict({"text": texts})}), tokenizer, 32, packing=packing, cache_dir=tmp_path
    )["train"]
    streamed = stream_lm_blocks(
        IterableDatasetDict({"train": Dataset.from_dict({"text": texts}).to_iterable_dataset()}),
        tokenizer,
        32,
        packing=packing,
    )["train"]
    rows = list(streamed)
    assert len(rows) == len(mapped) > 400
    assert rows == mapped.to_list()


def test_a_stream_carries_each_tail_into_the_next_block(corpus, tokenizer):
    # More documents than one tokenizer call takes: the blocks are the whole token stream, cut every 32 tokens.
    texts = wikipedia_texts("train")[:400]
    assert len(texts) > 3 * blocks.STREAM_TOKENIZE_ROWS
    eos = tokenizer.eos_token_id
    stream = [token for text in texts for token in [*tokenizer(text)["input_ids"], eos]]
    raw = load_raw_datasets(stream_args(corpus, validation_documents=1))
    rows = list(stream_lm_blocks(raw, tokenizer, 32)["train"])
    first = len(tokenizer(texts[0])["input_ids"]) + 1  # the held-out document
    expected = stream[first:]
    assert [token for row in rows for token in row["input_ids"]] == expected[: len(expected) // 32 * 32]
    assert all(row["labels"] == row["input_ids"] for row in rows)


@pytest.mark.parametrize("shards, files", [(2, 1), (3, 1), (2, 5)])
def test_worker_shards_each_tokenize_every_nth_document_after_the_held_out_ones(
    corpus, tokenizer, tmp_path, shards, files
):
    lines = (corpus / "train.jsonl").read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    if files == 1:
        raw = load_raw_datasets(stream_args(corpus, validation_documents=5))
    else:  # a stream of 5 files: datasets would deal them out among the workers; each part reads them all
        size = math.ceil(len(lines) / files)
        for number in range(files):
            (tmp_path / f"part-{number}.jsonl").write_text("".join(lines[number * size : (number + 1) * size]))
        pattern = str(tmp_path / "part-*.jsonl")
        raw = load_raw_datasets(DataArguments(train_file=pattern, streaming=True, validation_documents=5))
        assert raw["train"].num_shards == files
    streamed = stream_lm_blocks(raw, tokenizer, 32, packing=True, shards=shards)
    assert streamed["train"].num_shards == streamed["validation"].num_shards == shards
    eos = tokenizer.eos_token_id
    for part in range(shards):
        mine = [r["text"] for r in records[5:][part::shards] if r["text"].strip()]
        stream = [token for text in mine for token in [*tokenizer(text)["input_ids"], eos]]
        rows = list(streamed["train"].shard(num_shards=shards, index=part))
        assert [token for row in rows for token in row["input_ids"]] == stream[: len(stream) // 32 * 32]
        ends = [n for n, token in enumerate(stream[:32]) if token == eos]  # packing numbers the part's documents
        assert rows[0]["document_ids"] == [sum(n < place for n in ends) for place in range(32)]
    # Through as many DataLoader workers, each tokenizes its own part, and their blocks alternate.
    loader = torch.utils.data.DataLoader(streamed["train"], None, num_workers=shards)
    rows = [[int(token) for token in row["input_ids"]] for row in loader]
    parts = [[row["input_ids"] for row in streamed["train"].shard(num_shards=shards, index=p)] for p in range(shards)]
    assert rows[:shards] == [part[0] for part in parts] and sorted(rows) == sorted(sum(parts, []))
    with pytest.raises(ValueError, match="shards must be a positive integer, got 0"):
        stream_lm_blocks(raw, tokenizer, 32, shards=0)


def test_workers_started_without_fork_read_the_same_blocks(corpus, tokenizer):
    # Python 3.14 starts DataLoader workers by forkserver on Linux, macOS by spawn: the stream travels pickled.
    raw = load_raw_datasets(stream_args(corpus, validation_documents=5))
    streamed = stream_lm_blocks(raw, tokenizer, 32, shards=2)["train"]
    loader = torch.utils.data.DataLoader(streamed, None, num_workers=2, multiprocessing_context="forkserver")
    rows = [[int(token) for token in row["input_ids"]] for row in loader]
    assert sorted(rows) == sorted(row["input_ids"] for row in streamed) and len(rows) > 100


def test_packed_pieces_of_a_long_document_are_one_document_in_both_paths(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(blocks, "TEXT_PIECE_CHARS", 997)
    texts = ["short one", prose(6000, seed=3), "another short one"]
    raw = DatasetDict({"train": Dataset.from_dict({"text": texts})})
    stream = IterableDatasetDict({"train": raw["train"].to_iterable_dataset()})
    streamed = list(stream_lm_blocks(stream, tokenizer, 64, packing=True)["train"])
    mapped = tokenize_and_group(raw, tokenizer, 64, packing=True, cache_dir=tmp_path)["train"].to_list()
    assert len(streamed) > 6  # the long document spans several pieces and blocks
    for rows in (streamed, mapped):
        ids = [document for row in rows for document in row["document_ids"]]
        starts = [row["document_ids"][0] for row in rows]
        assert starts == [0] * len(rows)
        # Inside the long document (every block but the first and last) one id: pieces are not documents.
        assert all(set(row["document_ids"]) == {0} for row in rows[1:-1])
        assert max(ids) <= 1
    # The map path groups 8 pieces per batch and drops each batch's tail; up to the first tail the blocks agree.
    assert streamed[:8] == mapped[:8]


def test_streaming_limits_repeats_and_shuffles_the_training_blocks(corpus, tokenizer):
    ordered = build_lm_datasets(stream_args(corpus, shuffle_buffer_size=0, max_eval_samples=3), tokenizer, 32)
    assert len(list(ordered["validation"])) == 3
    train = [row["input_ids"] for row in ordered["train"]]
    shuffled = build_lm_datasets(stream_args(corpus, shuffle_buffer_size=50), tokenizer, 32, seed=1)["train"]
    again = build_lm_datasets(stream_args(corpus, shuffle_buffer_size=50), tokenizer, 32, seed=1)["train"]
    order = [row["input_ids"] for row in shuffled]
    assert order != train and sorted(order) == sorted(train)  # the same blocks in another order
    assert order == [row["input_ids"] for row in again]  # seeded
    shuffled.set_epoch(1)  # Trainer does this at each pass
    assert [row["input_ids"] for row in shuffled] != order
    repeated = build_lm_datasets(
        stream_args(corpus, shuffle_buffer_size=0, max_train_samples=40, repeat_span_fraction=1.0), tokenizer, 32
    )["train"]
    rows = list(repeated)
    assert len(rows) == 40 and all(-100 in row["labels"] for row in rows)
    assert all(row["input_ids"] != plain for row, plain in zip(rows, train))


def test_a_local_dataset_folder_streams_through_the_hub_path(corpus, tokenizer, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text((corpus / "train.jsonl").read_text())
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder), streaming=True, validation_documents=5))
    assert isinstance(raw["train"], IterableDataset)
    assert [r["number"] for r in raw["validation"]] == [0, -1, 1, 2, 3]


@pytest.fixture()
def served(corpus):
    """The corpus folder on a local HTTP server (the stand-in for a remote file: https://, hf://, s3://)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(corpus))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("streaming", [False, True])
def test_a_data_file_url_is_read_by_datasets(served, tmp_path, streaming):
    args = DataArguments(
        train_file=f"{served}/train.jsonl?version=1",  # the suffix is the URL path's, not the query's
        streaming=streaming,
        validation_documents=3,
        validation_split_percentage=1,
        cache_dir=str(tmp_path),
    )
    raw = load_raw_datasets(args)
    assert [record["number"] for record in raw["validation"]][:3] == [0, -1, 1]
    assert sum(1 for _ in raw["train"]) + sum(1 for _ in raw["validation"]) == 408
    with pytest.raises(FileNotFoundError, match=r"127\.0\.0\.1:\d+/missing\.jsonl"):
        raw = load_raw_datasets(DataArguments(train_file=f"{served}/missing.jsonl", streaming=streaming))
        next(iter(raw["train"]))


@pytest.mark.parametrize("streaming", [False, True])
def test_a_glob_reads_a_corpus_in_many_files_in_sorted_order(corpus, tokenizer, tmp_path, streaming):
    lines = (corpus / "train.jsonl").read_text().splitlines(keepends=True)
    shards = tmp_path / "shards"
    (shards / "more").mkdir(parents=True)
    for number, start in enumerate(range(0, len(lines), 100)):  # written out of order: the glob sorts them
        folder = shards / "more" if number % 2 else shards
        (folder / f"part-{4 - number}.jsonl").write_text("".join(lines[start : start + 100]))
    pattern = str(shards / "**" / "part-*.jsonl")
    args = DataArguments(
        train_file=pattern, streaming=streaming, validation_documents=3, validation_split_percentage=1
    )
    raw = load_raw_datasets(args)
    if streaming:
        assert raw["train"].num_shards == 5  # one shard per file
    # Sorted paths: more/part-1 (lines 300-399), more/part-3 (100-199), part-0 (400-), part-2, part-4 (0-99).
    first = json.loads(lines[300])["number"]
    assert next(iter(raw["validation"]))["number"] == first
    assert sum(1 for _ in raw["train"]) + sum(1 for _ in raw["validation"]) == len(lines)
    if streaming:
        # datasets' `skip` on a stream of many shards skips per shard once the shards are split among DataLoader
        # workers (datasets 5.2: held-out documents trained on, others lost). The blocks are cut from the whole
        # stream in one worker, so training sees exactly the documents after the held-out ones, in order.
        order = [json.loads(line) for start in (300, 100, 400, 200, 0) for line in lines[start : start + 100]]
        texts = [record["text"] for record in order[3:] if record["text"].strip()]
        stream = [token for text in texts for token in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
        loader = torch.utils.data.DataLoader(stream_lm_blocks(raw, tokenizer, 32)["train"], None, num_workers=2)
        blocks = [token for row in loader for token in row["input_ids"]]
        assert [int(token) for token in blocks] == stream[: len(stream) // 32 * 32]
    with pytest.raises(FileNotFoundError, match=r"train data file pattern '.*nothing-\*\.jsonl' matches no file"):
        load_raw_datasets(DataArguments(train_file=str(shards / "nothing-*.jsonl"), streaming=streaming))
    (shards / "part-9.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"train data file .*part-9\.jsonl is empty"):
        load_raw_datasets(DataArguments(train_file=pattern.replace("**/", ""), streaming=streaming))


@pytest.mark.parametrize("opener, suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2"), (lzma.open, ".xz")])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_compressed_corpus_is_read_as_the_plain_one(corpus, tmp_path, streaming, opener, suffix):
    plain = (corpus / "train.jsonl").read_bytes()
    packed = tmp_path / f"train.jsonl{suffix}"
    with opener(packed, "wb") as f:
        f.write(plain)
    args = dict(streaming=streaming, validation_documents=3, validation_split_percentage=1)
    raw = load_raw_datasets(DataArguments(train_file=str(packed), **args))
    expected = load_raw_datasets(DataArguments(train_file=str(corpus / "train.jsonl"), **args))
    for split in ("train", "validation"):
        assert [r["number"] for r in raw[split]] == [r["number"] for r in expected[split]]
    text = tmp_path / f"words.txt{suffix}"
    with opener(text, "wb") as f:
        f.write(b"caf\xe9 au lait\n" * 10)
    with pytest.raises(ValueError, match=r"words\.txt\.\w+ is not UTF-8 text: byte 0xe9 at offset 3 \(decompressed\)"):
        load_raw_datasets(DataArguments(train_file=str(text), streaming=streaming))
    broken = tmp_path / f"broken.jsonl{suffix}"
    broken.write_bytes(b"not compressed at all")
    with pytest.raises(ValueError, match=rf"broken\.jsonl\{suffix} is not valid \{suffix} data"):
        load_raw_datasets(DataArguments(train_file=str(broken), streaming=streaming))
    (tmp_path / "table.parquet.gz").write_bytes(b"anything")
    with pytest.raises(ValueError, match=r"Unsupported data file type '\.parquet\.gz'"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "table.parquet.gz")))


# ---------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"validation_documents": 0}, "validation_documents must be at least 1"),
        ({"shuffle_buffer_size": -1}, "shuffle_buffer_size must be 0"),
        ({"preprocessing_num_workers": 2}, "preprocessing_num_workers does not apply with streaming"),
    ],
)
def test_bad_streaming_arguments_are_named(corpus, overrides, message):
    with pytest.raises(ValueError, match=message):
        stream_args(corpus, **overrides)


def test_a_bad_stream_is_named_before_training(corpus, tokenizer, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": unquoted}\n')
    with pytest.raises(ValueError, match=r"Could not read the train split of train_file .*broken\.jsonl.*JSON"):
        load_raw_datasets(DataArguments(train_file=str(broken), streaming=True))
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": 5}\n')
    with pytest.raises(ValueError, match="column 'text' holds int values, not text"):
        load_raw_datasets(DataArguments(train_file=str(numbers), streaming=True))
    with pytest.raises(ValueError, match=r"no column 'body'; its columns are \['number', 'text'\]"):
        load_raw_datasets(stream_args(corpus, text_column="body"))
    later = tmp_path / "later.jsonl"
    later.write_text('{"text": "fine words here"}\n{"text": 5}\n' * 3)
    raw = load_raw_datasets(DataArguments(train_file=str(later), streaming=True, validation_documents=1))
    with pytest.raises(ValueError, match=r"A record's 'text' holds int \('5'\), not text"):
        list(stream_lm_blocks(raw, tokenizer, 4)["train"])
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "a few words"}\n' * 3)
    with pytest.raises(ValueError, match="training stream is shorter than one block of 512 tokens"):
        build_lm_datasets(DataArguments(train_file=str(short), streaming=True, validation_documents=1), tokenizer, 512)


@pytest.fixture()
def small_reads(monkeypatch):
    """datasets reads JSON and text in 10 MiB chunks, so the files a test can write fail at the first record. Chunks
    of 4 KiB bring a bad record past the first chunk, where a corpus of GBs meets it: mid-stream, during training."""
    load_dataset = datasets.load_dataset

    def in_small_chunks(path, *args, **kwargs):
        return load_dataset(path, *args, **({"chunksize": 4096} if path in ("json", "text") else {}), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", in_small_chunks)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_bad_record_far_into_a_corpus_is_named_by_its_file_and_line(
    corpus, tokenizer, tmp_path, small_reads, streaming
):
    lines = (corpus / "train.jsonl").read_text().splitlines(keepends=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_text("".join(lines[:100]))
    (shards / "b.jsonl").write_text("".join([*lines[100:300], '{"text": unquoted words}\n', *lines[300:]]))
    args = DataArguments(train_file=str(shards / "*.jsonl"), streaming=streaming, validation_documents=3)
    where = r"The first bad record is .*b\.jsonl, line 201: Expecting value \(column 10\)"
    if not streaming:  # the map path reads it all before training: the load names it
        with pytest.raises(ValueError, match=rf"Could not read train_file .*\*\.jsonl as json: .*{where}"):
            load_raw_datasets(args)
        return
    blocks = build_lm_datasets(args, tokenizer, 32)  # the first chunks are sound: the stream starts
    with pytest.raises(
        ValueError, match=rf"Reading the train text failed after [\d,]+ records: ArrowInvalid: .*{where}"
    ):
        for _ in blocks["train"]:
            pass


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_stream_checks_its_head_before_training_and_the_rest_as_it_reads(
    tokenizer, tmp_path, small_reads, monkeypatch, suffix
):
    monkeypatch.setattr("alibi_lm.data.STREAM_CHECK_BYTES", 4096)
    text = b"".join(b"line %d of plain words\n" % number for number in range(4000))
    offset = text.index(b"line 3000")
    latin1 = text[:offset] + b"caf\xe9 " + text[offset:]
    path = tmp_path / f"words.txt{suffix}"
    with (gzip.open if suffix else open)(path, "wb") as f:
        f.write(latin1)
    blocks = build_lm_datasets(
        DataArguments(train_file=str(path), streaming=True, validation_documents=3), tokenizer, 32
    )
    where = rf"words\.txt{re.escape(suffix)} is not UTF-8 text: byte 0xe9 at offset {offset + 3}"
    with pytest.raises(
        ValueError, match=rf"Reading the train text failed after [\d,]+ records: UnicodeDecodeError: .*{where}"
    ):
        for _ in blocks["train"]:
            pass
    with pytest.raises(ValueError, match=where):  # without streaming, the whole file is checked before it loads
        load_raw_datasets(DataArguments(train_file=str(path)))


# ---------------------------------------------------------------------------------------------------------------
# Training


def stream_recipe(corpus: Path, out: Path, **values) -> Path:
    """`tiny_recipe` streaming the corpus's JSON lines (its first 20 documents held out) with its saved tokenizer."""
    stream = {
        "train_file": str(corpus / "train.jsonl"),
        "validation_file": None,
        "streaming": True,
        "validation_documents": 20,
        "tokenizer_name": str(corpus / "tokenizer"),
        "report_to": "none",
    }
    return tiny_recipe(out.parent, out.name, **{**stream, **values})


def losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"max_steps": -1}, "streaming needs max_steps"),
        ({"tokenizer_name": None}, "streaming needs a tokenizer"),
    ],
)
def test_a_stream_that_cannot_train_refuses_before_touching_the_folder(corpus, tmp_path, values, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(*parse_recipe(stream_recipe(corpus, out, **values)))
    assert not out.exists()


def test_streaming_trains_evaluates_packs_and_resumes_to_the_same_weights(corpus, tmp_path):
    whole = train(*parse_recipe(stream_recipe(corpus, tmp_path / "whole", eval_strategy="steps", eval_steps=3)))
    assert whole.global_step == 6 and len(losses(whole)) == 6
    assert [e["step"] for e in whole.log_history if "eval_loss" in e][:2] == [3, 6]
    assert all(torch.isfinite(torch.tensor(losses(whole))))
    reloaded = AutoModelForCausalLM.from_pretrained(whole.output_dir)
    assert reloaded.config.train_length == 32

    # Killed in step 4, resumed from checkpoint-3: the stream is read again and its first 3 batches skipped.
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(*parse_recipe(stream_recipe(corpus, cut)), callbacks=[KillAt(4)])
    resumed = train(*parse_recipe(stream_recipe(corpus, cut), ["--resume_from_checkpoint", str(cut / "checkpoint-3")]))
    assert losses(resumed)[-3:] == pytest.approx(losses(whole)[3:], abs=1e-5)
    final = AutoModelForCausalLM.from_pretrained(resumed.output_dir).state_dict()
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(final[name], tensor, atol=1e-6, rtol=0, msg=name)

    # document_ids reach the model: the same blocks in the same order, packed, give other losses.
    packed = train(*parse_recipe(stream_recipe(corpus, tmp_path / "packed", packing=True, save_strategy="no")))
    assert losses(packed) != pytest.approx(losses(whole), abs=1e-4)


@pytest.mark.parametrize("workers", [1, 2])
def test_dataloader_workers_read_the_stream(corpus, tmp_path, workers):
    # A stream has a shard per worker: the workers tokenize it beside training and hand over every block once.
    seen: list[list[int]] = []

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(
                lambda module, args, kwargs: seen.extend(kwargs["input_ids"].tolist()) if module.training else None,
                with_kwargs=True,
            )

    recipe = stream_recipe(
        corpus, tmp_path / "worker", dataloader_num_workers=workers, max_steps=3, save_strategy="no"
    )
    result = train(*parse_recipe(recipe), callbacks=[Record()])
    assert result.global_step == 3 and all(math.isfinite(loss) for loss in losses(result))
    assert len(seen) == 12 and len({tuple(row) for row in seen}) == 12


def test_two_workers_resume_to_the_losses_of_a_run_never_stopped(corpus, tmp_path):
    # Two shards, one per worker, interleave their blocks in a fixed order: the resumed run skips the same batches.
    whole = train(*parse_recipe(stream_recipe(corpus, tmp_path / "whole", dataloader_num_workers=2)))
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(*parse_recipe(stream_recipe(corpus, cut, dataloader_num_workers=2)), callbacks=[KillAt(4)])
    resumed = train(
        *parse_recipe(
            stream_recipe(corpus, cut, dataloader_num_workers=2),
            ["--resume_from_checkpoint", str(cut / "checkpoint-3")],
        )
    )
    assert losses(resumed)[-3:] == pytest.approx(losses(whole)[3:], abs=1e-5)
    one = train(*parse_recipe(stream_recipe(corpus, tmp_path / "one", save_strategy="no")))
    assert losses(one) != pytest.approx(losses(whole), abs=1e-4)  # two shards read the documents in another order
