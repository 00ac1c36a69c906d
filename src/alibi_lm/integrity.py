"""Weights that are what was saved: a sha256 per weights file, written at save time and checked at load.

safetensors validates its header and the file's length, but not the tensor bytes: a flipped bit inside a
tensor loads without complaint and the model generates from it. So every folder this package saves (final
model and checkpoints) gets `SHA256SUMS`, one `<hex digest>  <file name>` line per weights file, the format
`sha256sum` writes and `sha256sum -c SHA256SUMS` checks. Our loaders (`alibi_lm.loading.load_model`, resume,
`alibi-lm eval`, `generate`, `push`) and `alibi-lm verify DIR` compare the files against it.

What the Hub already does: weights are stored with Git LFS, whose object id is the sha256 of the file; the
Hub computes it on upload and shows it (`HfApi.get_paths_info(...)[i].lfs.sha256`, the same hex digest as
here), and huggingface_hub names cached blobs by it. It does not re-hash a file after download. The manifest
is therefore local: it guards folders on disk and is not pushed (the Hub has its own digest of every file).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from .model_files import DEFINING_FILES

CHECKSUMS_FILE = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class IntegrityError(ValueError):
    """A weights file does not match the sha256 recorded when it was saved."""


class OutsideFolderError(ValueError):
    """A file that a model folder holds, names or links to lies outside the folder."""


def inside(folder: str | os.PathLike, name: str | os.PathLike) -> Path:
    """`folder / name`, checked to stay inside `folder`: no absolute name, no `..`, no symbolic link out.

    A model folder is read by load, verify, export and push, and push uploads what it reads: a `tokenizer.json`
    linked to /etc/passwd would go to the Hub byte for byte. The one link out that is allowed is a Hub cache
    snapshot's into its own `blobs/` (huggingface_hub's layout: `snapshots/<commit>/<file>` -> `../../blobs/<sha>`).

    Raises:
        OutsideFolderError: naming the file and where it leads.
    """
    folder = Path(folder)
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise OutsideFolderError(
            f"{folder}: the file name {str(name)!r} leads outside the folder; refusing to read it"
        )
    path, root = folder / relative, folder.resolve()
    target = path.resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    if target != root and root not in target.parents and not (blobs is not None and blobs in target.parents):
        raise OutsideFolderError(
            f"{path} is a symbolic link to {target}, outside {folder}; refusing to read or upload it "
            "(copy the file into the folder if it belongs to the model)"
        )
    return path


def check_links_stay_inside(folder: str | os.PathLike) -> None:
    """Raise `OutsideFolderError` for the first symbolic link under `folder` (links are not followed) that leads out."""
    folder = Path(folder)
    for directory, subfolders, files in os.walk(folder):
        for name in sorted(subfolders + files):
            path = Path(directory) / name
            if path.is_symlink():
                inside(folder, path.relative_to(folder))


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


def give_plain_mode(folder: Path) -> None:
    """Give a folder made by `tempfile.mkdtemp` (0700) the mode a plain `mkdir` would under this process's umask,
    before it is renamed into place where others (a shared cache, a colleague) may need to read it."""
    umask = os.umask(0)  # the only portable way to read it: set, then restore at once
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def share_weights_like_config(folder: str | os.PathLike) -> list[Path]:
    """Give the safetensors files in `folder` the read and write bits its `config.json` has; return those changed.

    safetensors 0.8 writes each file through a temporary file, created 0600 whatever the umask, and renames it into
    place (safetensors/safetensors#782; the fix, #789, is not released): a model saved by one user, or by root while
    building a container image, cannot then be read by anyone else, while the config.json beside it, written by
    `open`, follows the umask (and keeps the mode of the file it overwrites). Every folder this package saves goes
    through here. Links are left alone; nothing changes where there is no config.json.
    """
    config = Path(folder) / "config.json"
    if not config.is_file() or config.is_symlink():
        return []
    mode = stat.S_IMODE(config.stat().st_mode) & 0o666
    changed = []
    for file in weights_files(folder):
        if not file.is_symlink() and stat.S_IMODE(file.stat().st_mode) != mode:
            file.chmod(mode)
            changed.append(file)
    return changed


def manifest_files(folder: str | os.PathLike) -> list[Path]:
    """What `SHA256SUMS` covers: the weights and the `DEFINING_FILES` that `folder` holds."""
    folder = Path(folder)
    return weights_files(folder) + [folder / name for name in DEFINING_FILES if (folder / name).is_file()]


def write_checksums(folder: str | os.PathLike) -> Path:
    """Write `folder/SHA256SUMS` for the weights and defining files in `folder`, atomically; return its path."""
    folder = Path(folder)
    lines = [f"{sha256_file(file)}  {file.name}\n" for file in manifest_files(folder)]
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
        inside(path.parent, match.group(2))  # a manifest names files of its own folder only
        if "/" in match.group(2):
            raise OutsideFolderError(f"{path}, line {number}: {match.group(2)!r} is not a file of {path.parent}")
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
    weights = {file.name: file for file in weights_files(folder)}
    present = {file.name: file for file in manifest_files(folder)}
    missing = sorted(set(recorded) - set(present))
    if missing:
        raise IntegrityError(f"{folder}: {', '.join(missing)} listed in {CHECKSUMS_FILE} but missing")
    # A defining file a manifest does not list is older than the manifest format that covers it; a weights file
    # it does not list was written after it.
    unlisted = sorted(set(weights) - set(recorded))
    if unlisted:
        raise IntegrityError(
            f"{folder}: {', '.join(unlisted)} not in {CHECKSUMS_FILE}: the weights changed after it was written"
        )
    for name, expected in sorted(recorded.items()):
        actual = sha256_file(present[name])
        if actual != expected and name in weights:
            raise IntegrityError(
                f"{present[name]}: sha256 {actual} does not match {expected} recorded in {CHECKSUMS_FILE} when it "
                "was saved; the file is corrupt (disk or copy error). Restore it from a backup or an earlier "
                "checkpoint."
            )
        if actual != expected:
            raise IntegrityError(
                f"{present[name]} changed since the model was saved (sha256 {actual[:12]}... is not the "
                f"{expected[:12]}... recorded in {CHECKSUMS_FILE}): the weights were trained with the saved one. "
                "Restore it, or re-save the model if the edit is meant."
            )
    return [present[name] for name in sorted(recorded)]


def non_finite_tensors(folder: str | os.PathLike) -> list[str]:
    """Names of the tensors in `folder`'s safetensors files that hold a NaN or an infinity (a diverged run)."""
    import torch
    from safetensors import safe_open

    bad = []
    for file in weights_files(folder):
        with safe_open(str(file), framework="pt") as f:
            bad += [name for name in f.keys() if not bool(torch.isfinite(f.get_tensor(name)).all())]  # noqa: SIM118
    return bad


# ---------------------------------------------------------------------------------------------------------
# CLI: alibi-lm verify
