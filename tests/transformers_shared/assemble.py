# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""Assemble transformers' own shared model tests into a cache directory and run our ALiBi test module there.

transformers tests every built-in causal LM (Llama, Mistral, ...) with the same machinery:
`CausalLMModelTester` / `CausalLMModelTest` (tests/causal_lm_tester.py) on top of `ModelTesterMixin`,
`GenerationTesterMixin`, `PipelineTesterMixin`, `TrainingTesterMixin`, `TensorParallelTesterMixin` and
`FSDPTesterMixin`. None of it ships in the wheel, so this module builds a harness directory from:

- the transformers sdist from PyPI (`pip download transformers==<version> --no-binary :all:`): the top-level
  `tests/*.py` (ModelTesterMixin and the other mixins) and `pyproject.toml` (the pytest markers);
- a git clone or mirror of transformers (`ALIBI_LM_TRANSFORMERS_GIT`, commit `ALIBI_LM_TRANSFORMERS_COMMIT`)
  for the files the sdist lacks: `tests/causal_lm_tester.py`, `tests/generation/test_utils.py`,
  `tests/exporters/test_export.py`, `tests/utils/tiny_model_summary.json`, the root `conftest.py` and, as a
  control, `tests/models/llama/test_modeling_llama.py`;
- `tests/transformers_shared/test_modeling_alibi.py` from this repository, copied in as
  `tests/models/alibi/test_modeling_alibi.py`.

Nothing of transformers is copied into this repository; the harness lives under
`~/.cache/alibi-lm/transformers-tests-<version>` (`$XDG_CACHE_HOME` is honoured). The few edits the
assembly makes are listed in `PATCHES` and written to `PATCHES.txt` in the harness.

Usage::

    python tests/transformers_shared/assemble.py                 # assemble, print the harness path
    python tests/transformers_shared/assemble.py --run           # ... and run our module there
    python tests/transformers_shared/assemble.py --run --control # ... run transformers' Llama test instead
    python tests/transformers_shared/assemble.py --run -- -k generate --timeout 300
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

# The transformers release whose tests are assembled; the installed transformers must be the same release. Another
# release's tests (the newest 5.x): ALIBI_LM_SHARED_TESTS_VERSION=5.25.0 with transformers 5.25.0 installed.
VERSION_ENV = "ALIBI_LM_SHARED_TESTS_VERSION"
PINNED_VERSION = "5.24.0"  # the release whose tests the patches below were written for
TRANSFORMERS_VERSION = os.environ.get(VERSION_ENV) or PINNED_VERSION
DEFAULT_GIT_MIRROR = "/work/.mirror/zucchini-nlp+transformers/repo"
# transformers 5.16.0.dev0 (2026-08-19): the newest commit of the mirror whose test helpers match 5.24's mixins.
DEFAULT_GIT_COMMIT = "decba1d2ea4ed3cbf0495d1828abad4b2dba1846"
GIT_ENV = "ALIBI_LM_TRANSFORMERS_GIT"
COMMIT_ENV = "ALIBI_LM_TRANSFORMERS_COMMIT"

HERE = Path(__file__).resolve().parent
OUR_TEST_MODULE = HERE / "test_modeling_alibi.py"
ALIBI_TEST_PATH = "tests/models/alibi/test_modeling_alibi.py"
LLAMA_TEST_PATH = "tests/models/llama/test_modeling_llama.py"
STAMP_NAME = ".harness.json"

# Files taken verbatim (apart from `PATCHES`) from the git mirror: harness path -> path in the mirror.
GIT_FILES: dict[str, str] = {
    "conftest.py": "conftest.py",
    "tests/__init__.py": "tests/__init__.py",
    "tests/causal_lm_tester.py": "tests/causal_lm_tester.py",
    "tests/generation/__init__.py": "tests/generation/__init__.py",
    "tests/generation/test_utils.py": "tests/generation/test_utils.py",
    "tests/exporters/__init__.py": "tests/exporters/__init__.py",
    "tests/exporters/test_export.py": "tests/exporters/test_export.py",
    "tests/utils/__init__.py": "tests/utils/__init__.py",
    "tests/utils/tiny_model_summary.json": "tests/utils/tiny_model_summary.json",
    "tests/models/__init__.py": "tests/models/__init__.py",
    "tests/models/llama/__init__.py": "tests/models/llama/__init__.py",
    LLAMA_TEST_PATH: LLAMA_TEST_PATH,
}

DISTRIBUTED_STUB = '''\
"""Stand-in for transformers' `tests/distributed_testing_utils.py`, written by alibi-lm's assemble.py.

The FSDP / tensor-parallel / expert-parallel mixins of transformers {version} import their process-spawning
helpers from this module, which is neither in the sdist nor in the git history we assemble from. Every
helper raises `unittest.SkipTest`, so the multi-process tests skip with this reason while the mixins'
single-process tests (plan declarations and the like) still run.
"""

import unittest

REASON = (
    "multi-process test: transformers' tests/distributed_testing_utils.py is not published "
    "(stubbed by alibi-lm's assemble.py)"
)


def _skip(*args, **kwargs):
    raise unittest.SkipTest(REASON)


_get_distributed_backend = _skip
_get_distributed_device_type = _skip
_get_rank_device = _skip
_set_rank_device = _skip
_start_rank_processes = _skip
run_distributed = _skip
'''


class HarnessUnavailableError(RuntimeError):
    """A source of the harness (the sdist, the git mirror, a file in it) cannot be had."""


@dataclass(frozen=True)
class Patch:
    """An exact, checked text replacement in one assembled file."""

    path: str
    old: str
    new: str
    why: str

    def apply(self, text: str, fill: dict[str, str]) -> str:
        """Return `text` with `old` replaced by `new`, whose `{name}` fields come from `fill`.

        `old` must occur exactly once, so that a changed upstream file fails loudly instead of being
        patched in the wrong place.
        """
        count = text.count(self.old)
        if count != 1:
            raise HarnessUnavailableError(
                f"patch for {self.path} expects its anchor exactly once, found it {count} times: {self.old!r}"
            )
        new = self.new
        for name, value in fill.items():
            new = new.replace("{" + name + "}", value)
        return text.replace(self.old, new)


PATCHES: tuple[Patch, ...] = (
    Patch(
        path="tests/causal_lm_tester.py",
        old="    _TEXT_MODEL_TESTER_DEFAULTS,\n",
        new="",
        why="transformers 5.24's testing_utils no longer exports _TEXT_MODEL_TESTER_DEFAULTS; the dict is "
        "defined in the file instead, copied from testing_utils.py at the mirror's commit (next patch)",
    ),
    Patch(
        path="tests/causal_lm_tester.py",
        old="\nfrom .test_configuration_common import ConfigTester\n",
        new="\n_TEXT_MODEL_TESTER_DEFAULTS = {defaults}\n\nfrom .test_configuration_common import ConfigTester\n",
        why="defines _TEXT_MODEL_TESTER_DEFAULTS (tester defaults: batch 13, seq 7, vocab 99, hidden 32, ...) "
        "with the literal value from src/transformers/testing_utils.py at the same commit",
    ),
    Patch(
        path="conftest.py",
        old="    register_network_debug_plugin(config)\n",
        new='    if config.pluginmanager.hasplugin("xdist"):  # alibi-lm: its plugin declares an xdist-only hook\n'
        "        register_network_debug_plugin(config)\n",
        why="the network-debug plugin (an opt-in Hub request profiler) declares the pytest-xdist hook "
        "pytest_configure_node, which pytest rejects when xdist is not installed; registered only with xdist",
    ),
    Patch(
        path="tests/test_pipeline_mixin.py",
        old="transformers_module = direct_transformers_import(PATH_TO_TRANSFORMERS)\n",
        new="import transformers as transformers_module  # alibi-lm: the installed package, no src/ here\n",
        why="the sdist has no src/transformers beside tests/ to import from; the installed transformers is "
        "the one under test",
    ),
)

GENERATED_NOTES: tuple[str, ...] = (
    (
        "tests/distributed_testing_utils.py: stub whose helpers raise unittest.SkipTest; transformers' own is "
        "in neither the sdist nor the git history, and the FSDP/TP/EP mixins import it"
    ),
    (
        "tests/utils/test_configuration_utils.py: only its `config_common_kwargs` dict (the literal from the "
        "mirror's file), which test_configuration_common.py imports; the rest of that file needs httpx, the "
        "Hub's staging server and utils/test_module"
    ),
    "tests/models/alibi/: our test module (tests/transformers_shared/test_modeling_alibi.py) and an empty __init__.py",
    (
        "tests/pipelines/ is not assembled: the pipeline tests import it only after loading a tiny model from "
        "the Hub, which the runner keeps offline (HF_HUB_OFFLINE=1), so they skip before that"
    ),
)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/alibi-lm`, i.e. `~/.cache/alibi-lm` by default."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alibi-lm"


def harness_dir(cache_dir: Path | None = None) -> Path:
    """Where `assemble` puts the harness for the pinned transformers version."""
    return (cache_dir or default_cache_dir()) / f"transformers-tests-{TRANSFORMERS_VERSION}"


def _git_source() -> tuple[Path, str]:
    return Path(os.environ.get(GIT_ENV) or DEFAULT_GIT_MIRROR), os.environ.get(COMMIT_ENV) or DEFAULT_GIT_COMMIT


def _check_installed_transformers() -> None:
    try:
        installed = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError as error:
        raise HarnessUnavailableError("transformers is not installed") from error
    if installed != TRANSFORMERS_VERSION:
        raise HarnessUnavailableError(
            f"the harness pins transformers {TRANSFORMERS_VERSION}'s tests, but transformers {installed} is "
            f"installed; update TRANSFORMERS_VERSION in {Path(__file__).name} (and its patches) first"
        )


class GitMirror:
    """Read files of one commit of a transformers clone or bare mirror (no work tree needed)."""

    def __init__(self, path: Path, commit: str) -> None:
        self.path = path
        self.commit = commit
        if shutil.which("git") is None:
            raise HarnessUnavailableError("git is not installed; it reads the transformers mirror")
        if not path.exists():
            raise HarnessUnavailableError(
                f"no transformers git clone or mirror at {path}; set {GIT_ENV} to one that holds commit {commit}"
            )
        probe = self._git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False)
        if probe.returncode != 0:
            raise HarnessUnavailableError(
                f"the transformers git repository at {path} lacks commit {commit} ({COMMIT_ENV})"
            )
        self.commit = probe.stdout.decode().strip()  # a full hash, even when given a branch or a short hash

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, check=False)
        if check and result.returncode != 0:
            raise HarnessUnavailableError(
                f"git {' '.join(args)} failed in {self.path}: {result.stderr.decode().strip()}"
            )
        return result

    def read(self, path: str) -> bytes:
        """The bytes of `path` at the commit; raises `HarnessUnavailableError` naming the file if absent."""
        result = self._git("show", f"{self.commit}:{path}", check=False)
        if result.returncode != 0:
            raise HarnessUnavailableError(f"{path} is missing at commit {self.commit} of {self.path}")
        return result.stdout


def fetch_sdist(downloads: Path) -> Path:
    """The transformers sdist in `downloads`, fetched with `pip download` from PyPI when not there yet."""
    name = f"transformers-{TRANSFORMERS_VERSION}.tar.gz"
    sdist = downloads / name
    if sdist.is_file():
        return sdist
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", f"transformers=={TRANSFORMERS_VERSION}",
            "--no-deps", "--no-binary", ":all:", "--quiet", "-d", scratch,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        fetched = Path(scratch) / name
        if result.returncode != 0 or not fetched.is_file():
            raise HarnessUnavailableError(
                f"could not download the transformers {TRANSFORMERS_VERSION} sdist from PyPI "
                f"({' '.join(command)}): {(result.stderr or result.stdout).strip()[-2000:]}"
            )
        os.replace(fetched, sdist)
    return sdist


def _extract_sdist(sdist: Path, root: Path) -> None:
    """Copy the sdist's top-level `tests/*.py` and its `pyproject.toml` (pytest settings) into `root`."""
    prefix = PurePosixPath(f"transformers-{TRANSFORMERS_VERSION}")
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            relative = PurePosixPath(member.name).relative_to(prefix) if member.name.startswith(str(prefix)) else None
            if relative is None or not member.isfile():
                continue
            wanted = relative == PurePosixPath("pyproject.toml") or (
                relative.parent == PurePosixPath("tests") and relative.suffix == ".py"
            )
            if wanted:
                extracted = archive.extractfile(member)
                assert extracted is not None
                _write(root / relative, extracted.read())
    if not (root / "tests" / "test_modeling_common.py").is_file():
        raise HarnessUnavailableError(f"{sdist} has no tests/test_modeling_common.py")


def _literal_assignment(source: bytes, name: str, origin: str) -> str:
    """The source text of the literal assigned to module-level `name` in `source` (checked to be a literal)."""
    text = source.decode()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            segment = ast.get_source_segment(text, node.value)
            assert segment is not None
            ast.literal_eval(segment)
            return segment
    raise HarnessUnavailableError(f"{origin} does not assign {name}")


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)


def _inputs_digest(git: GitMirror) -> str:
    """Everything the harness depends on: versions, this file (sources, patches), our test module."""
    digest = hashlib.sha256()
    for part in (
        TRANSFORMERS_VERSION,
        git.commit,
        Path(__file__).read_bytes(),
        OUR_TEST_MODULE.read_bytes(),
    ):
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _is_current(path: Path, digest: str) -> bool:
    try:
        return json.loads((path / STAMP_NAME).read_text())["inputs"] == digest
    except (OSError, ValueError, KeyError):
        return False


def _build(root: Path, sdist: Path, git: GitMirror) -> None:
    _extract_sdist(sdist, root)
    for target, source in GIT_FILES.items():
        _write(root / target, git.read(source))
    config_kwargs = _literal_assignment(
        git.read("tests/utils/test_configuration_utils.py"),
        "config_common_kwargs",
        "test_configuration_utils.py",
    )
    _write(
        root / "tests/utils/test_configuration_utils.py",
        '"""Reduced by alibi-lm\'s assemble.py to what test_configuration_common.py imports."""\n\n'
        f"config_common_kwargs = {config_kwargs}\n",
    )
    defaults = _literal_assignment(
        git.read("src/transformers/testing_utils.py"),
        "_TEXT_MODEL_TESTER_DEFAULTS",
        "testing_utils.py",
    )
    for patch in PATCHES:
        path = root / patch.path
        path.write_text(patch.apply(path.read_text(), fill={"defaults": defaults}))
    _write(
        root / "tests/distributed_testing_utils.py",
        DISTRIBUTED_STUB.format(version=TRANSFORMERS_VERSION),
    )
    _write(root / "tests/models/alibi/__init__.py", "")
    shutil.copyfile(OUR_TEST_MODULE, root / ALIBI_TEST_PATH)
    lines = [f"- {p.path}: {p.why}" for p in PATCHES] + [f"- {note}" for note in GENERATED_NOTES]
    _write(
        root / "PATCHES.txt",
        "Edits made by alibi-lm's tests/transformers_shared/assemble.py\n\n" + "\n".join(lines) + "\n",
    )


def assemble(cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the harness directory and return its path.

    `cache_dir` defaults to `~/.cache/alibi-lm`; the harness is `cache_dir/transformers-tests-<version>`. The
    build is idempotent (a stamp records the digest of every input, so an unchanged harness is reused and a
    changed test module or patch rebuilds it) and atomic (built in a temporary sibling directory, then renamed
    into place). Raises `HarnessUnavailableError`, naming what is missing, when transformers is not the pinned
    version, the sdist cannot be downloaded, or the git mirror or one of its files is absent.
    """
    _check_installed_transformers()
    cache_root = cache_dir or default_cache_dir()
    target = harness_dir(cache_root)
    git = GitMirror(*_git_source())
    digest = _inputs_digest(git)
    if _is_current(target, digest):
        return target
    sdist = fetch_sdist(cache_root / "downloads")
    cache_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{target.name}.tmp-"))
    try:
        _build(scratch, sdist, git)
        stamp = {
            "inputs": digest,
            "transformers": TRANSFORMERS_VERSION,
            "git": str(git.path),
            "commit": git.commit,
        }
        _write(scratch / STAMP_NAME, json.dumps(stamp, indent=2) + "\n")
        scratch.chmod(0o755)  # mkdtemp made it private
        if target.exists():
            stale = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{target.name}.old-"))
            os.replace(target, stale / "harness")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(scratch, target)
        except OSError:
            if not _is_current(target, digest):  # not a concurrent build of the same inputs: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


SUMMARY_RE = re.compile(
    r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?"
    r"|subtests passed|subtests failed|subtests skipped)"
)


def parse_summary(output: str) -> dict[str, int]:
    """Counts from pytest's final summary line (`3 failed, 120 passed, 40 skipped, 2 errors in 9.1s`).

    Keys are `passed`, `failed`, `skipped`, `errors`, `warnings`, `xfailed`, `xpassed`, `deselected` and the
    `subtests ...` counts, as present; raises `ValueError` when no summary line is found.
    """
    for line in reversed(output.splitlines()):
        stripped = line.strip(" =")
        if re.search(r" in [\d.]+s( \([\d:]+\))?$", stripped) and SUMMARY_RE.search(stripped):
            counts: dict[str, int] = {}
            for number, word in SUMMARY_RE.findall(stripped):
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = counts.get(key, 0) + int(number)
            return counts
    raise ValueError("no pytest summary line in the output")


def pytest_command(harness: Path, extra_args: Sequence[str] = (), control: bool = False) -> list[str]:
    """The pytest command line (run with cwd=`harness`) for our module, or Llama's with `control`."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        LLAMA_TEST_PATH if control else ALIBI_TEST_PATH,
    ]
    command += ["-p", "no:cacheprovider", "-q", "-rfEs"]
    if importlib.util.find_spec("pytest_timeout") is not None and not any(
        a.startswith("--timeout") for a in extra_args
    ):
        command += ["--timeout", "600"]
    return command + list(extra_args)


def run(
    extra_args: Sequence[str] = (),
    cache_dir: Path | None = None,
    control: bool = False,
    echo: Callable[[str], object] | None = None,
    log: TextIO | None = None,
) -> tuple[int, str]:
    """Assemble the harness, then run pytest on our module (or Llama's) there in a subprocess.

    The subprocess runs offline (`HF_HUB_OFFLINE=1` unless set) without writing bytecode into the harness.
    Each output line goes to `echo` and `log` as it comes. Returns pytest's exit status and its whole output.
    """
    harness = assemble(cache_dir)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    lines: list[str] = []
    with subprocess.Popen(
        pytest_command(harness, extra_args, control),
        cwd=harness,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if echo is not None:
                echo(line.rstrip("\n"))
            if log is not None:
                log.write(line)
                log.flush()
    return process.returncode, "".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: assemble, and with `--run` run pytest there; arguments after `--` go to pytest."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, extra = argv[:index], argv[index + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache root (default: ~/.cache/alibi-lm)",
    )
    parser.add_argument(
        "--run",
        action="store_true",
        help="run pytest on tests/models/alibi in the harness",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="with --run: run transformers' Llama test instead",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="with --run: also write pytest's output here",
    )
    args = parser.parse_args(argv)
    try:
        if not args.run:
            print(assemble(args.cache_dir))
            return 0
        start = time.monotonic()
        log = args.output.open("w") if args.output else None
        try:
            code, output = run(extra, args.cache_dir, args.control, echo=print, log=log)
        finally:
            if log is not None:
                log.close()
    except HarnessUnavailableError as error:
        print(f"harness unavailable: {error}", file=sys.stderr)
        return 2
    try:
        counts = parse_summary(output)
    except ValueError:
        counts = {}
    label = "llama control" if args.control else "alibi"
    print(
        f"\n[{label}] pytest exit {code}, {time.monotonic() - start:.0f}s wall, counts {json.dumps(counts)}, "
        f"harness {harness_dir(args.cache_dir)}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
