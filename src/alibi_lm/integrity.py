"""Weights that are what was saved: a sha256 per weights file, written at save time and checked at load.

safetensors validates its header and the file's length, but not the tensor bytes: a flipped bit inside a
tensor loads without complaint and the model generates from it. So every folder this package saves (final
model and checkpoints) gets `SHA256SUMS`, one `<hex digest>  <file name>` line per weights file, the format
`sha256sum` writes and `sha256sum -c SHA256SUMS` checks. Our loaders (`alibi_lm.hub.load_model`, resume,
`alibi-lm eval`, `generate`, `push`) and `alibi-lm verify DIR` compare the files against it.

What the Hub already does: weights are stored with Git LFS, whose object id is the sha256 of the file; the
Hub computes it on upload and shows it (`HfApi.get_paths_info(...)[i].lfs.sha256`, the same hex digest as
here), and huggingface_hub names cached blobs by it. It does not re-hash a file after download. The manifest
is therefore local: it guards folders on disk and is not pushed (the Hub has its own digest of every file).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from pathlib import Path

CHECKSUMS_FILE = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class IntegrityError(ValueError):
    """A weights file does not match the sha256 recorded when it was saved."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def weights_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files directly in `folder`, sorted by name."""
    return sorted(p for p in Path(folder).glob("*.safetensors") if p.is_file())


def write_checksums(folder: str | os.PathLike) -> Path:
    """Write `folder/SHA256SUMS` for every safetensors file in `folder`, atomically; return its path."""
    folder = Path(folder)
    lines = [f"{sha256_file(file)}  {file.name}\n" for file in weights_files(folder)]
    target = folder / CHECKSUMS_FILE
    partial = target.with_name(f".{CHECKSUMS_FILE}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, target)
    return target


def read_checksums(folder: str | os.PathLike) -> dict[str, str] | None:
    """{file name: hex digest} from `folder/SHA256SUMS`, or None if the folder has none.

    Raises:
        IntegrityError: the manifest is not in `sha256sum` format.
    """
    path = Path(folder) / CHECKSUMS_FILE
    if not path.is_file():
        return None
    recorded = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise IntegrityError(f"{path}, line {number}: expected '<64 hex digits>  <file name>', got {line[:80]!r}")
        recorded[match.group(2)] = match.group(1)
    return recorded


def verify_checksums(folder: str | os.PathLike, required: bool = False) -> list[Path]:
    """Check every weights file of `folder` against its `SHA256SUMS`; return the files checked.

    A folder without a manifest (saved by plain `save_pretrained`, or downloaded) passes unchecked unless
    `required`.

    Raises:
        IntegrityError: a file's digest differs from the recorded one, a recorded file is missing, a weights file
            is not in the manifest, or (with `required`) there is no manifest.
    """
    folder = Path(folder)
    recorded = read_checksums(folder)
    if recorded is None:
        if required:
            raise IntegrityError(f"{folder} has no {CHECKSUMS_FILE}: nothing to verify the weights against")
        return []
    present = {file.name: file for file in weights_files(folder)}
    missing = sorted(set(recorded) - set(present))
    if missing:
        raise IntegrityError(f"{folder}: {', '.join(missing)} listed in {CHECKSUMS_FILE} but missing")
    unlisted = sorted(set(present) - set(recorded))
    if unlisted:
        raise IntegrityError(
            f"{folder}: {', '.join(unlisted)} not in {CHECKSUMS_FILE}: the weights changed after it was written"
        )
    for name, expected in sorted(recorded.items()):
        actual = sha256_file(present[name])
        if actual != expected:
            raise IntegrityError(
                f"{present[name]}: sha256 {actual} does not match {expected} recorded in {CHECKSUMS_FILE} when it "
                "was saved; the file is corrupt (disk or copy error). Restore it from a backup or an earlier "
                "checkpoint."
            )
    return [present[name] for name in sorted(recorded)]


# ---------------------------------------------------------------------------------------------------------
# CLI: alibi-lm verify


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `alibi-lm verify`."""
    parser = subparsers.add_parser(
        "verify",
        help="check a model folder: weights against SHA256SUMS, safetensors headers, config against weight shapes",
        description="Check a saved model or checkpoint folder before trusting it.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="model or checkpoint folders")
    parser.add_argument("--require-checksums", action="store_true", help=f"fail when a folder has no {CHECKSUMS_FILE}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .hub import check_config_matches_weights, find_weights

    for folder in args.folders:
        files = find_weights(folder)
        checked = verify_checksums(folder, required=args.require_checksums)
        check_config_matches_weights(folder)
        note = f"sha256 matches {CHECKSUMS_FILE}" if checked else f"no {CHECKSUMS_FILE}: headers checked only"
        print(f"{folder}: OK ({len(files)} weights file(s), {note}; config matches the weight shapes)")
    return 0
