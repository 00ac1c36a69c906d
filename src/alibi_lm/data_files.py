"""Data files as users keep them: local paths, glob patterns or URLs; text, JSON lines, CSV or Parquet; the text
formats also compressed. Each local file is checked before `datasets` reads it, and a read that fails names the
file, and where it can, the line.

- `matching_files`: a path or glob pattern, expanded and sorted (one shard per file).
- `check_data_file`: a folder, a missing or empty file, text that is not UTF-8 (with the byte's offset), a broken
  archive. A stream checks only the first `STREAM_CHECK_BYTES` of its files in all before step 1, so a corpus of
  hundreds of GB starts at once; the rest is checked as it is read.
- `naming_read_errors`: datasets reports a bad file as a `DatasetGenerationError` or an Arrow error that names
  neither the file nor the line (a JSON parse error "in row N" counts rows of its 10 MB chunk). On such an error the
  local files are read once more, line by line, to name the first bad one (`first_bad_record`).
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from datasets.exceptions import DatasetGenerationError

BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# Compressed text that datasets reads as it is (`corpus.jsonl.gz`); the first three open with the standard library,
# so their text is checked as a plain file's is.
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": None}

# A stream's local files are checked up to here before training starts; the rest as they are read.
STREAM_CHECK_BYTES = 8 << 20


def is_remote(path: str) -> bool:
    """Whether `path` is a URL (https://, hf://, s3://, ...) that datasets reads through fsspec, not a local file."""
    return "://" in path


def matching_files(path: str, split: str = "train") -> list[str]:
    """`path`, or the local files a glob pattern in it (`*`, `?`, `[...]`, `**`) matches, sorted: one per shard.

    A corpus in many files streams as many shards; the sorted order makes the document order, and so the held-out
    documents, the same on every machine.
    """
    if is_remote(path) or not any(char in path for char in "*?["):
        return [path]
    matches = sorted(
        match for match in glob.glob(os.path.expanduser(path), recursive=True) if not Path(match).is_dir()
    )
    if not matches:
        raise FileNotFoundError(f"The {split} data file pattern {path!r} matches no file.")
    return matches


def _suffixes(path: str | os.PathLike) -> tuple[str, str | None]:
    """The format's suffix and the compression's, if any: (".jsonl", ".gz") for `corpus.jsonl.gz`."""
    name = Path(urlparse(str(path)).path if is_remote(str(path)) else path)
    suffix = name.suffix.lower()
    if suffix in COMPRESSIONS:
        return name.with_suffix("").suffix.lower(), suffix
    return suffix, None


def _builder_for(path: str) -> str:
    suffix, compression = _suffixes(path)
    if suffix not in BUILDERS or (compression and BUILDERS[suffix] == "parquet"):
        kinds = f"{sorted(BUILDERS)}, text formats optionally compressed ({', '.join(COMPRESSIONS)})"
        raise ValueError(
            f"Unsupported data file type {suffix + (compression or '')!r} for {path}; use one of {kinds}."
        )
    return BUILDERS[suffix]


def check_data_file(path: str | os.PathLike, split: str = "train", limit: int | None = None) -> int:
    """Raise an error naming `path` if it is missing, empty, or (for text formats) not UTF-8; return the bytes
    decoded.

    datasets reports these as a `DatasetGenerationError` without the file name, or as an empty split. With `limit`,
    only the first `limit` bytes (decompressed) are decoded: a stream checks the rest as it reads it.
    """
    file = Path(path)
    if file.is_dir():
        raise IsADirectoryError(
            f"The {split} data file {str(path)!r} is a directory; give one file ({', '.join(sorted(BUILDERS))})."
        )
    if not file.is_file():
        raise FileNotFoundError(f"The {split} data file {str(path)!r} does not exist.")
    if file.stat().st_size == 0:
        raise ValueError(f"The {split} data file {path} is empty.")
    suffix, compression = _suffixes(file)
    if BUILDERS.get(suffix) == "parquet" or (compression and COMPRESSIONS[compression] is None):
        return 0
    opener = COMPRESSIONS[compression] if compression else open
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, blank = 0, True
    try:
        with opener(file, "rb") as f:
            while chunk := f.read(1 << 20 if limit is None else min(1 << 20, limit - offset)):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    raise ValueError(
                        f"The {split} data file {path} is not UTF-8 text: byte {chunk[err.start]:#04x} at offset "
                        f"{offset + err.start}{' (decompressed)' if compression else ''} cannot be decoded. Convert "
                        "it, e.g. `iconv -f latin1 -t utf-8`."
                    ) from None
                offset += len(chunk)
                blank = blank and not chunk.strip()
    except (OSError, EOFError, lzma.LZMAError) as err:  # gzip.BadGzipFile is an OSError
        if not compression:
            raise
        raise ValueError(f"The {split} data file {path} is not valid {compression} data: {err}") from None
    if limit is not None and offset >= limit:
        return offset  # the rest is read, and checked, as the stream reaches it
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"The {split} data file {path} is not UTF-8 text: it ends inside a character.") from None
    if blank:
        raise ValueError(f"The {split} data file {path} holds only whitespace.")
    return offset


def data_files_arguments(files: dict[str, str], sample_by: str, check_bytes: int | None = None) -> dict[str, Any]:
    """`load_dataset`'s arguments for data files given per split (paths, glob patterns or URLs), every local file
    checked first (`check_data_file`), so a bad one is named before datasets reads it. With `check_bytes`, the text
    decoded is at most that much in all, the first files' (a corpus of 10,000 files is not read up front); the rest
    are only checked to exist and hold something."""
    data_files = {split: matching_files(path, split) for split, path in files.items()}
    local = [(split, path) for split, paths in data_files.items() for path in paths if not is_remote(path)]
    for split, path in local:
        if not Path(path).is_file():
            check_data_file(path, split)  # a folder or a missing file is named before its suffix is read
    builders = {_builder_for(path) for paths in data_files.values() for path in paths}
    if len(builders) > 1:
        raise ValueError(f"All data files must have the same format, got {sorted(builders)}.")
    budget = check_bytes
    for split, path in local:  # a URL is datasets' to fetch; it names one that is not there
        decoded = check_data_file(path, split, budget)
        budget = None if budget is None else max(0, budget - decoded)
    builder = builders.pop()
    arguments: dict[str, Any] = {"path": builder, "data_files": data_files}
    if builder == "text":
        arguments["sample_by"] = sample_by
    return arguments


def names_data_files(source: str) -> bool:
    """Whether `source` names data files (a path with a data suffix, an existing file, a glob pattern or a URL)
    rather than a dataset (a Hub name such as "Salesforce/wikitext", or a local dataset folder)."""
    if is_remote(source) or any(char in source for char in "*?["):
        return True
    if Path(source).is_dir():
        return False
    suffix, compression = _suffixes(source)
    return Path(source).exists() or suffix in BUILDERS or compression is not None


def local_files(files: Sequence[str]) -> list[str]:
    """The local files among paths and glob patterns (each expanded), in reading order; URLs are left out."""
    return [match for path in files for match in matching_files(path) if not is_remote(match)]


def first_bad_record(paths: Sequence[str]) -> str | None:
    """A sentence naming the first unreadable record of local files ("The first bad record is FILE, line N: why."),
    reading each whole, or None.

    Text that is not UTF-8 or a broken archive is named by `check_data_file`; JSON is parsed line by line (JSON
    lines, which datasets reads as one object per line) or whole (a JSON array), so the line is the file's own.
    """
    for path in paths:
        try:
            check_data_file(path)
        except (OSError, ValueError) as err:
            return str(err)
        suffix, compression = _suffixes(path)
        if BUILDERS.get(suffix) != "json":
            continue
        opener = COMPRESSIONS[compression] if compression else open
        if opener is None:
            continue
        with opener(path, "rt", encoding="utf-8") as f:
            head = f.read(4096).lstrip()
            f.seek(0)
            try:
                if head.startswith("["):
                    json.load(f)
                    continue
                for number, line in enumerate(f, 1):
                    if line.strip() and not isinstance(json.loads(line), dict):
                        return f"The first bad record is {path}, line {number}: not a JSON object (one per line)."
            except json.JSONDecodeError as err:
                line = err.lineno if head.startswith("[") else number
                return f"The first bad record is {path}, line {line}: {err.msg} (column {err.colno})."
    return None


def read_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    # datasets wraps a failed build in DatasetGenerationError; a stream raises its reader's own errors: Arrow's
    # (a JSON parse error), a decoder's, or a decompressor's at a truncated or corrupt archive.
    return (
        DatasetGenerationError,
        pa.ArrowException,
        UnicodeDecodeError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        gzip.BadGzipFile,
    )


def named_read_error(what: str, err: BaseException, files: Sequence[str] = ()) -> ValueError:
    """A `ValueError` saying `what` failed and why, and, when local `files` were read, their first bad record."""
    if isinstance(err, DatasetGenerationError):  # datasets names neither the file nor, often, the cause
        err = err.__cause__ or err.__context__ or err
    message = f"{what}: {type(err).__name__}: {err}".rstrip(": ")
    where = first_bad_record(files) if files else None
    return ValueError(f"{message}. {where}" if where else message)


@contextmanager
def naming_read_errors(what: str, files: Sequence[str] = ()) -> Iterator[None]:
    """Turn a read error of datasets into `named_read_error`."""
    try:
        yield
    except read_errors() as err:
        raise named_read_error(what, err, files) from err


__all__ = [
    "BUILDERS",
    "COMPRESSIONS",
    "STREAM_CHECK_BYTES",
    "check_data_file",
    "data_files_arguments",
    "first_bad_record",
    "is_remote",
    "local_files",
    "matching_files",
    "named_read_error",
    "read_errors",
    "names_data_files",
    "naming_read_errors",
]
