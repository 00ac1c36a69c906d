"""Text -> token blocks for training an ALiBi LM (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022).

ALiBi is trained on blocks of a fixed length L and evaluated past it: this module turns documents (`alibi_lm.data`)
into blocks of exactly L tokens.

- The tokenizer is given (a path or Hub id), or a byte-level BPE is trained with `tokenizers` on the training
  split and wrapped as a `PreTrainedTokenizerFast`. Trained tokenizers are cached by the fingerprint of the data.
- Every document ends with the eos token; documents are concatenated and cut into blocks with datasets' batched
  `map`. With `packing`, each block also carries `document_ids` so the model's attention stays inside a document.
- Tokenized blocks are cached as Arrow files keyed by (data, tokenizer, block size, packing).
- `repeat_span_fraction` rewrites that fraction of the training blocks so that a span of the block comes again
  later in it (`repeat_spans`): a training mix that teaches a small model to copy, for the copy probe.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, List, Value
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .data import DataArguments, load_raw_datasets
from .data_files import named_read_error, read_errors
from .integrity import give_plain_mode

EOS_TOKEN = "<|endoftext|>"
# Bump when the cached tokenizer or block format changes, so stale cache files are never reused.
_CACHE_VERSION = "3"  # 2: padding on the left; 3: a long document's pieces keep "document_end" for packing


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


# One huge string costs a multiple of its size in `tokenizers` (an alignment pair per byte) and as Python lists of
# token ids (a 200 MB single-line file passed 16 GB). Longer texts go to BPE training, and to tokenizing
# (`split_long_documents`), in pieces of at most this many characters, cut just before a space: byte-level
# pre-tokenization starts a word at the space before it, so the pieces split into the same words, and encode to the
# same tokens, as the whole text (except inside a run of several spaces, or a piece with no space, cut where it ends).
TEXT_PIECE_CHARS = 1 << 20


def text_pieces(text: str, size: int | None = None) -> Iterator[str]:
    """`text` in pieces of at most `size` (default `TEXT_PIECE_CHARS`) characters, each cut just before a space."""
    size = size or TEXT_PIECE_CHARS
    start = 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + 1, start + size)
        cut = cut if cut > start else start + size
        yield text[start:cut]
        start = cut
    yield text[start:]


def _iter_texts(dataset: Dataset, text_column: str, batch_size: int = 1000) -> Iterator[list[str]]:
    for batch in dataset.iter(batch_size=batch_size):
        yield [piece for text in batch[text_column] if text and text.strip() for piece in text_pieces(text)]


def train_bpe_tokenizer(dataset: Dataset, vocab_size: int, text_column: str = "text") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style, eos "<|endoftext|>") on `dataset[text_column]`.

    Byte-level BPE needs no unknown token: every string is covered by the 256 byte symbols.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(
            f"A byte-level BPE vocabulary needs at least 257 entries (256 bytes + eos), got {vocab_size}."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(_iter_texts(dataset, text_column), trainer=trainer, length=len(dataset))
    # pad = eos, as GPT-2 does in practice: blocks are never padded, and generation needs a pad id. Padding goes on
    # the left, where batched generation needs it (right-padded, each row's first new token would follow a padding
    # slot); positions, and so the bias, come from the attention mask on either side.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN, padding_side="left"
    )


def cached_bpe_tokenizer(
    dataset: Dataset, vocab_size: int, cache_dir: str | os.PathLike, text_column: str = "text", overwrite: bool = False
) -> PreTrainedTokenizerFast:
    """`train_bpe_tokenizer`, cached under `cache_dir` by the fingerprint of the data and the vocabulary size."""
    # datasets has no public accessor for a dataset's fingerprint (the key of its own cache; datasets 5.2).
    # `datasets.fingerprint.generate_fingerprint` re-hashes the whole table and the cache files' mtimes, so it is
    # slow and changes when a cache file is rewritten; `_fingerprint` is what `Dataset.map` itself chains.
    key = Hasher.hash([_CACHE_VERSION, dataset._fingerprint, text_column, vocab_size])
    folder = Path(cache_dir) / f"tokenizer-bpe{vocab_size}-{key}"
    if (folder / "tokenizer.json").is_file() and not overwrite:
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer = train_bpe_tokenizer(dataset, vocab_size, text_column)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Save beside the final folder, then rename: a killed run never leaves a half-written tokenizer.
    staging = Path(tempfile.mkdtemp(prefix=".tmp-tokenizer-", dir=folder.parent))
    give_plain_mode(staging)  # mkdtemp made it private (0700): a shared cache's other users could not read it
    tokenizer.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(staging, folder)
    except OSError:  # another process won the race; its tokenizer is identical
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------


def group_texts(examples: dict[str, list[list[int]]], block_size: int, packing: bool = False) -> dict[str, list]:
    """Concatenate tokenized documents and cut them into blocks of `block_size` tokens.

    The tail shorter than a block is dropped (per `map` batch of 1,000 documents, so < 0.1% of tokens at L=512).
    With `packing`, "document_ids" numbers the documents inside each block from 0, so the model's
    block-diagonal mask keeps attention inside a document; the pieces of a long document (`split_long_documents`,
    a "document_end" column) are one document.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (one input and one target token), got {block_size}.")
    documents = examples["input_ids"]
    ids = list(chain.from_iterable(documents))
    total = len(ids) // block_size * block_size
    blocks = [ids[start : start + block_size] for start in range(0, total, block_size)]
    out: dict[str, list] = {"input_ids": blocks, "labels": [list(block) for block in blocks]}
    if packing:
        ends = examples.get(DOCUMENT_END) or [True] * len(documents)
        numbers = accumulate((int(end) for end in ends[:-1]), initial=0)  # a document's number goes up after its end
        doc_of_token = list(chain.from_iterable([number] * len(doc) for number, doc in zip(numbers, documents)))
        # Documents are non-empty (each ends with eos) and in order, so subtracting the first id numbers a block's
        # documents 0, 1, 2, ... without gaps.
        out["document_ids"] = [
            [doc - doc_of_token[start] for doc in doc_of_token[start : start + block_size]]
            for start in range(0, total, block_size)
        ]
    return out


def repeat_spans(
    examples: dict[str, list[list[int]]],
    indices: list[int],
    fraction: float,
    seed: int = 0,
    vocab_size: int | None = None,
    exclude: Sequence[int] = (),
) -> dict[str, list[list[int]]]:
    """Rewrite about `fraction` of the blocks so that a span comes twice in each: a mix meant to teach copying.

    For a chosen block x of length L: a span length s in [max(2, L/16), max(2, L/4)], a gap g in [0, L - 2s] and a
    start p in [0, L - 2s - g], all uniform. The block becomes x[:p] + A + x[p+s : p+s+g] + A + x[p+s+g : L-s]:
    still L tokens, with A at p and again at p + s + g, so A's second copy is predictable from its first at a
    distance s + g (from s up to L - s). With `vocab_size`, A is s tokens drawn uniformly from [0, vocab_size) less
    `exclude` (the special tokens): the first copy cannot be predicted, so the only way to lower the loss on the
    second is to copy. Its labels are -100 on the first copy and on the second copy's first token: nothing can
    predict them, and scoring them only adds noise to the gradient (this alone did not make the demo's 2-layer
    models copy, `recipes/results/copy-probe-attempt.md`; `recipes/experiments/train_copier.py` did). Without
    `vocab_size`, A is the text x[p : p+s] itself, which a language model already predicts in part, and a small
    model gains much less from copying; labels then follow input_ids everywhere. Which blocks and spans depend only
    on `seed` and the block's index. Blocks shorter than 4 tokens are left alone.
    """
    import numpy as np

    pool = None if vocab_size is None else np.setdiff1d(np.arange(vocab_size), np.asarray(exclude, dtype=np.int64))
    blocks, labels = [], []
    for index, block in zip(indices, examples["input_ids"]):
        rng = np.random.default_rng([seed, index])
        length = len(block)
        if length < 4 or rng.random() >= fraction:
            blocks.append(list(block))
            labels.append(list(block))
            continue
        span = int(rng.integers(max(2, length // 16), max(2, length // 4) + 1))
        gap = int(rng.integers(0, length - 2 * span + 1))
        start = int(rng.integers(0, length - 2 * span - gap + 1))
        copied = list(block[start : start + span]) if pool is None else rng.choice(pool, span).tolist()
        cut = start + span + gap
        blocks.append(
            list(block[:start]) + copied + list(block[start + span : cut]) + copied + list(block[cut : length - span])
        )
        labels.append(list(blocks[-1]))
        if pool is not None:  # random tokens: the first copy and the second's first token are unpredictable
            labels[-1][start : start + span] = [-100] * span
            labels[-1][cut] = -100
    return {"input_ids": blocks, "labels": labels}


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what the tokenizer does, not of where it was loaded from (used to key the cache)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: fall back to datasets' pickle-based hash
        return Hasher.hash(tokenizer)
    return Hasher.hash([type(tokenizer).__name__, backend.to_str(), tokenizer.eos_token, tokenizer.all_special_tokens])


def _tokenize_documents(
    examples: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase, text_column: str
) -> dict[str, list[list[int]]]:
    eos = tokenizer.eos_token_id
    encoded = tokenizer(examples[text_column], return_attention_mask=False)["input_ids"]
    # Every document ends with eos, so a model trained on concatenated blocks sees where documents meet; a long
    # document's pieces (`split_long_documents`) get it after the last one only.
    ends = examples.get(DOCUMENT_END)
    out = {
        "input_ids": [
            ids if not end or (ids and ids[-1] == eos) else ids + [eos]
            for ids, end in zip(encoded, ends or [True] * len(encoded))
        ]
    }
    if ends is not None:  # `group_texts` numbers the pieces of one document as one
        out[DOCUMENT_END] = ends
    return out


DOCUMENT_END = "document_end"  # the column `split_long_documents` adds: whether a piece ends its document


def _piece_rows(examples: dict[str, list[str]], text_column: str) -> dict[str, list]:
    pieces = [list(text_pieces(text)) for text in examples[text_column]]
    return {
        text_column: [piece for document in pieces for piece in document],
        DOCUMENT_END: [i == len(document) - 1 for document in pieces for i in range(len(document))],
    }


def split_long_documents(dataset: Dataset, text_column: str, key: str, cache: Path | None) -> Dataset | None:
    """`dataset` with every document over `TEXT_PIECE_CHARS` cut into rows of pieces, or None if none is that long.

    A 200 MB single-line file is one document: tokenized whole, it becomes one row of 50M token ids that the
    tokenizer, `map` and `group_texts` each hold as Python lists at once. As pieces (cut before a space, so they
    tokenize to the same tokens) it streams through `map` a few MiB at a time; `_tokenize_documents` puts the eos
    after each document's last piece only, so the token stream is the same.
    """
    import pyarrow.compute as pc

    longest = pc.max(pc.binary_length(dataset.data.column(text_column))).as_py() or 0  # bytes >= characters
    if longest <= TEXT_PIECE_CHARS:
        return None
    return dataset.map(
        _piece_rows,
        fn_kwargs={"text_column": text_column},
        batched=True,
        batch_size=1,
        remove_columns=dataset.column_names,
        new_fingerprint=key,
        cache_file_name=str(cache / f"pieces-{key}.arrow") if cache else None,
        desc="Cutting long documents into pieces",
    )


def _check_block_inputs(block_size: int, tokenizer: PreTrainedTokenizerBase) -> None:
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (one input and one target token), got {block_size}.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; documents need one as separator. Set `eos_token`.")


def tokenize_and_group(
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    packing: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
) -> DatasetDict:
    """Tokenize every split of `raw` and group it into blocks: columns input_ids, labels (and document_ids).

    Each `map` writes an Arrow cache file under `cache_dir`, named by the fingerprint of its input and settings,
    so a second run with the same data, tokenizer and block size loads the blocks instead of recomputing them.
    """
    _check_block_inputs(block_size, tokenizer)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    out = DatasetDict()
    for split, dataset in raw.items():
        # Blank lines of line-split files would otherwise become runs of bare eos tokens.
        key = Hasher.hash([_CACHE_VERSION, dataset._fingerprint, text_column, "filter"])
        dataset = dataset.filter(
            _nonempty,
            fn_kwargs={"text_column": text_column},
            batched=True,
            num_proc=num_proc,
            new_fingerprint=key,
            cache_file_name=str(cache / f"nonempty-{key}.arrow") if cache else None,
            load_from_cache_file=not overwrite_cache,
            desc=f"Dropping empty {split} documents",
        )
        key = Hasher.hash([_CACHE_VERSION, dataset._fingerprint, text_column, TEXT_PIECE_CHARS, "pieces"])
        pieces = split_long_documents(dataset, text_column, key, cache)
        # Rows of pieces are up to TEXT_PIECE_CHARS long: a few at a time keep each map batch to a few MiB of text.
        rows_per_batch = 1000 if pieces is None else 8
        dataset = dataset if pieces is None else pieces
        key = Hasher.hash([_CACHE_VERSION, dataset._fingerprint, text_column, tokenizer_hash])
        tokenized = dataset.map(
            _tokenize_documents,
            fn_kwargs={"tokenizer": tokenizer, "text_column": text_column},
            batched=True,
            batch_size=rows_per_batch,
            num_proc=num_proc,
            remove_columns=dataset.column_names,
            new_fingerprint=key,
            cache_file_name=str(cache / f"tokens-{key}.arrow") if cache else None,
            load_from_cache_file=not overwrite_cache,
            desc=f"Tokenizing {split}",
        )
        key = Hasher.hash([_CACHE_VERSION, tokenized._fingerprint, block_size, packing])
        out[split] = tokenized.map(
            group_texts,
            fn_kwargs={"block_size": block_size, "packing": packing},
            batched=True,
            batch_size=rows_per_batch,
            num_proc=num_proc,
            remove_columns=tokenized.column_names,
            new_fingerprint=key,
            cache_file_name=str(cache / f"blocks{block_size}{'-packed' if packing else ''}-{key}.arrow")
            if cache
            else None,
            load_from_cache_file=not overwrite_cache,
            desc=f"Grouping {split} into blocks of {block_size}",
        )
    return out


def _nonempty(batch: dict[str, list], text_column: str) -> list[bool]:
    for text in batch[text_column]:
        # A map-style split's column is typed when it is loaded; a stream's records are seen only one by one.
        if text is not None and not isinstance(text, str):
            raise ValueError(
                f"A record's {text_column!r} holds {type(text).__name__} ({str(text)[:40]!r}), not text; every "
                "record needs a string there."
            )
    return [bool(text and text.strip()) for text in batch[text_column]]


# Documents a stream reads at a time, and pieces (of up to TEXT_PIECE_CHARS) it tokenizes per call: a bounded batch.
STREAM_TOKENIZE_ROWS = 64


def _stream_group(
    parts: list[int],
    source: IterableDataset,
    shards: int,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    block_size: int,
    packing: bool,
    split: str = "train",
    files: Sequence[str] = (),
) -> Iterator[dict[str, list[int]]]:
    """Blocks of exactly `block_size` tokens from a stream of documents; what is left of one starts the next block.

    The steps of `tokenize_and_group` (drop empty documents, cut long ones into pieces, tokenize with an eos after
    each document, cut blocks) run here on batches of documents: one pass in Python took 1.8 s where a chain of
    `IterableDataset.map`s took 3.1 s (9,000 documents), as those turn every batch into examples and back.

    Part `p` of `shards` tokenizes the documents whose place in the stream is `p` modulo `shards`: DataLoader workers,
    one per part, share the tokenizing and each reads the whole stream, so held-out documents stay held out.
    """
    for part in parts:
        pending: list[int] = []
        owners: list[int] = []  # with packing, the document number of each pending token
        document = read = 0
        batches = source.iter(batch_size=STREAM_TOKENIZE_ROWS * shards)
        while True:
            try:
                batch = next(batches, None)
            except read_errors() as err:  # a bad record past what was checked up front: name it
                raise named_read_error(f"Reading the {split} text failed after {read:,} records", err, files) from err
            if batch is None:
                break
            mine = {text_column: batch[text_column][(part - read) % shards :: shards]}
            read += len(batch[text_column])
            texts = [text for text, keep in zip(mine[text_column], _nonempty(mine, text_column)) if keep]
            pieces = _piece_rows({text_column: texts}, text_column)
            for start in range(0, len(pieces[text_column]), STREAM_TOKENIZE_ROWS):
                chunk = {name: rows[start : start + STREAM_TOKENIZE_ROWS] for name, rows in pieces.items()}
                tokens = _tokenize_documents(chunk, tokenizer, text_column)
                for ids, end in zip(tokens["input_ids"], tokens[DOCUMENT_END]):
                    pending += ids
                    if packing:
                        owners += [document] * len(ids)
                    document += end
                full = len(pending) // block_size * block_size
                for cut in range(0, full, block_size):
                    block = pending[cut : cut + block_size]
                    out = {"input_ids": block, "labels": list(block)}
                    if packing:
                        first = owners[cut]
                        out["document_ids"] = [owner - first for owner in owners[cut : cut + block_size]]
                    yield out
                del pending[:full], owners[:full]


def stream_lm_blocks(
    raw: IterableDatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    packing: bool = False,
    files: dict[str, list[str]] | None = None,
    shards: int = 1,
) -> IterableDatasetDict:
    """`tokenize_and_group` for a stream: blocks are cut as training reads the text, and nothing is cached.

    The same documents (empty ones dropped, long ones read in pieces, eos after each) and the same block columns.
    Where the map path drops a tail per batch of documents, a stream carries it into the next block, so only the
    stream's last partial block is left out. A read that fails names the first bad record of the split's local
    `files`. With `shards` > 1 each split has that many shards, each tokenizing every `shards`-th document, so as
    many DataLoader workers share the work (one shard per worker: `dataloader_num_workers`).
    """
    _check_block_inputs(block_size, tokenizer)
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards!r}.")
    columns = ["input_ids", "labels", *(["document_ids"] if packing else [])]
    features = Features({column: List(Value("int64")) for column in columns})
    return IterableDatasetDict(
        {
            split: IterableDataset.from_generator(
                _stream_group,
                gen_kwargs={
                    "parts": list(range(shards)),  # the one list in gen_kwargs: datasets' shards
                    "source": dataset,
                    "shards": shards,
                    "tokenizer": tokenizer,
                    "text_column": text_column,
                    "block_size": block_size,
                    "packing": packing,
                    "split": split,
                    "files": tuple((files or {}).get(split, ())),
                },
                features=features,
            )
            for split, dataset in raw.items()
        }
    )


def build_lm_datasets(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    raw: DatasetDict | IterableDatasetDict | None = None,
    seed: int = 0,
    shards: int = 1,
) -> DatasetDict | IterableDatasetDict:
    """The training pipeline in one call: load (unless `raw` is given), tokenize, group, truncate.

    Returns "train" and "validation" blocks; a "test" split is left to the evaluation harness. With
    `data_args.streaming` they are `IterableDataset`s, the training blocks shuffled in a buffer seeded by `seed`.
    """
    raw = load_raw_datasets(data_args) if raw is None else raw
    if data_args.streaming:
        return _stream_lm_datasets(data_args, tokenizer, block_size, raw, seed, shards)
    blocks = tokenize_and_group(
        DatasetDict({split: raw[split] for split in ("train", "validation") if split in raw}),
        tokenizer,
        block_size,
        text_column=data_args.text_column,
        packing=data_args.packing,
        cache_dir=data_args.resolved_cache_dir(),
        num_proc=data_args.preprocessing_num_workers,
        overwrite_cache=data_args.overwrite_cache,
    )
    if len(blocks["train"]) == 0:
        raise ValueError(
            f"The training text is shorter than one block of {block_size} tokens; lower `block_size` or add text."
        )
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None and split in blocks:
            blocks[split] = blocks[split].select(range(min(limit, len(blocks[split]))))
    return _with_repeated_spans(blocks, data_args, tokenizer)


def _with_repeated_spans(
    blocks: DatasetDict | IterableDatasetDict, data_args: DataArguments, tokenizer: PreTrainedTokenizerBase
) -> DatasetDict | IterableDatasetDict:
    if data_args.repeat_span_fraction:
        # Training blocks only: the validation loss stays a loss on the text itself.
        blocks["train"] = blocks["train"].map(
            repeat_spans,
            with_indices=True,
            batched=True,
            fn_kwargs={
                "fraction": data_args.repeat_span_fraction,
                "vocab_size": None if data_args.repeat_span_source == "text" else len(tokenizer),
                "exclude": tokenizer.all_special_ids,
            },
            # An IterableDataset's map has no progress bar (desc); it runs as training reads each block.
            **(
                {}
                if isinstance(blocks["train"], IterableDataset)
                else {"desc": f"Repeating spans in {data_args.repeat_span_fraction:.0%} of the training blocks"}
            ),
        )
    return blocks


def _stream_lm_datasets(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    raw: DatasetDict | IterableDatasetDict,
    seed: int,
    shards: int,
) -> IterableDatasetDict:
    splits = {split: raw[split] for split in ("train", "validation") if split in raw}
    streams = IterableDatasetDict(
        {split: d if isinstance(d, IterableDataset) else d.to_iterable_dataset() for split, d in splits.items()}
    )
    files = {split: data_args.local_files(split) for split in streams}
    blocks = stream_lm_blocks(streams, tokenizer, block_size, data_args.text_column, data_args.packing, files, shards)
    if next(iter(blocks["train"]), None) is None:
        raise ValueError(
            f"The training stream is shorter than one block of {block_size} tokens; lower `block_size` or add text."
        )
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None and split in blocks:
            blocks[split] = blocks[split].take(limit)
    blocks = _with_repeated_spans(blocks, data_args, tokenizer)
    if data_args.shuffle_buffer_size:
        # Neighbouring blocks come from one document; Trainer sets the epoch, so each pass draws a new order.
        blocks["train"] = blocks["train"].shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    return blocks


__all__ = [
    "DOCUMENT_END",
    "EOS_TOKEN",
    "TEXT_PIECE_CHARS",
    "build_lm_datasets",
    "cached_bpe_tokenizer",
    "group_texts",
    "repeat_spans",
    "split_long_documents",
    "stream_lm_blocks",
    "text_pieces",
    "tokenize_and_group",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]
