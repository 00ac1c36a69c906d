"""Push a checkpoint to the Hugging Face Hub: the remote code, a model card, and nothing else from the folder.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

A pushed repo carries the remote code (`model_files.MODELING_FILES`: `modeling_alibi.py` and the modules it imports)
and a `config.json` whose `auto_map` names AutoConfig, AutoModel and AutoModelForCausalLM, so
`from_pretrained("user/repo", trust_remote_code=True)` works with nothing but transformers installed. Its README.md is a model card with the training length and, where the evaluation
harness left one, the extrapolation table.

A training folder collects more than the model: notes, credentials, `training_args.bin`, optimizer state,
`checkpoint-*/` folders, evaluation output with local paths, the local `SHA256SUMS` manifest. `push` uploads only what
the repo needs, the allow-list `HUB_FILES` (weights, configs, tokenizer, remote code, card), and names in a warning
every file it leaves behind. The results the card cites go up only on request (`--include-results`), rewritten
without local paths (`sanitize_results`). Before any request the folder is checked: weights readable, an ALiBi
config, and every tensor the config implies present in the weights with its shape (`check_config_matches_weights`).
The files to upload are printed with their sizes; `--dry-run` prints them and sends nothing. Each request has a
timeout (`--timeout`, 60 s); one that times out or cannot connect is sent again (`--retries`, 2) before the push
fails with a `PushTimeoutError` or `PushConnectionError` naming the endpoint.

    alibi-lm push MODEL_DIR REPO_ID [--results extrapolation.json] [--include-results] [--dry-run]
        [--timeout 60] [--retries 2] [--license apache-2.0] [--dataset NAME ...]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.utils import get_session

from .card import RESULTS_FILE, build_model_card, count_parameters, read_extrapolation, sanitize_results
from .integrity import check_links_stay_inside, verify_checksums
from .loading import check_config_matches_weights, find_weights
from .model_files import DEFINING_FILES, remote_code_of, with_auto_map

# All that `push` takes from a checkpoint folder (fnmatch patterns on the path inside it): the weights (only those
# `find_weights` loads, so a shard left over from an earlier save stays behind), what `save_pretrained` of the model
# and of a transformers 5.24 tokenizer writes (slow tokenizers' vocabulary files included), the remote code, and the
# card (generated, like config.json). An allow-list: a folder also holds notes, credentials, pickles and local paths.
HUB_FILES = (
    "model.safetensors",
    "model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors",
    "model.safetensors.index.json",
    *DEFINING_FILES,  # config, generation config, tokenizer files and the remote code (MODELING_FILES)
    "additional_chat_templates/*.jinja",
    "README.md",
)


# Trainer state that lives next to the weights in a checkpoint folder but is not part of the model.


# Errors after which the same request may well succeed: no answer in time, a refused, reset or dropped connection.
TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


logger = logging.getLogger(__name__)


T = TypeVar("T")


class PushTimeoutError(TimeoutError):
    """The Hub did not answer a push request within the timeout, and sending it again did not help."""


class PushConnectionError(ConnectionError):
    """A push could not reach the Hub, or lost the connection, on every try."""


@dataclass
class UploadPlan:
    """What a push sends: each file's content (a path in the folder, or bytes) by its path in the repo."""

    files: dict[str, Path | bytes]
    skipped: list[str]  # what the folder holds that stays behind; "name/" for a folder

    def sizes(self) -> dict[str, int]:
        return {
            name: len(data) if isinstance(data, bytes) else data.stat().st_size for name, data in self.files.items()
        }

    def describe(self) -> str:
        """The totals, then one indented line per file: path in the repo and size."""
        sizes = self.sizes()
        width = max(len(name) for name in sizes)
        lines = [f"{len(sizes)} files, {_format_size(sum(sizes.values()))}"]
        lines += [f"  {name:<{width}}  {_format_size(size):>10}" for name, size in sizes.items()]
        return "\n".join(lines)


def _format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def plan_push(
    folder: str | Path,
    repo_id: str,
    *,
    results: str | Path | None = None,
    include_results: bool = False,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    base_model: str | None = None,
) -> UploadPlan:
    """Check a checkpoint folder and list what pushing it sends; reads the folder only.

    The folder's files that match `HUB_FILES` go up, with config.json given the full `auto_map`, README.md a fresh
    model card (`build_model_card`), and the modeling files taken from this package where the folder has none.
    With `include_results`, the results the card cites go up too, as `RESULTS_FILE` rewritten by `sanitize_results`.

    Args:
        folder: a `save_pretrained` folder, tokenizer files included if any.
        repo_id: "user/name", for the card.
        results: an extrapolation JSON for the card (`read_extrapolation`); defaults to `folder/extrapolation.json`.
        include_results: also upload the results, without local paths.

    Raises:
        FileNotFoundError: no weights, no config.json, or `include_results` without a results file.
        ValueError: corrupt weights, a config that is not ALiBi or does not match the weights, a bad results file.
    """
    folder = Path(folder)
    check_links_stay_inside(folder)  # before anything is read: a link out would upload what it points at
    weights = find_weights(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "alibi":
        raise ValueError(
            f"{config_path} has model_type {config.get('model_type')!r}, not 'alibi'; "
            "convert Bloom or MPT checkpoints first with `alibi-lm convert`"
        )
    check_config_matches_weights(folder)
    verify_checksums(folder)  # weights whose bytes changed since the save never leave the machine
    if results is None and (folder / RESULTS_FILE).is_file():
        results = folder / RESULTS_FILE
    if include_results and results is None:
        raise FileNotFoundError(f"include_results: no {RESULTS_FILE} in {folder} and no results file given")
    extrapolation = read_extrapolation(results, model_name=folder.name) if results is not None else None

    config = with_auto_map(config)
    card = build_model_card(
        config,
        repo_id,
        num_parameters=count_parameters(weights),
        extrapolation=extrapolation,
        license=license,
        datasets=datasets,
        base_model=base_model,
    )
    # The folder's own modeling files are the code its weights were saved with; otherwise ship the installed code.
    generated: dict[str, Path | bytes] = {
        "config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        "README.md": str(card).encode(),
        **remote_code_of(folder),
    }
    if include_results:
        generated[RESULTS_FILE] = (json.dumps(sanitize_results(results, folder.name), indent=2) + "\n").encode()

    loaded = {path.name for path in weights} | {"model.safetensors.index.json"}  # find_weights read the index if any
    files: dict[str, Path | bytes] = dict(generated)
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            # Only an allow-listed folder (additional_chat_templates/) is entered; checkpoint-*/ stays whole.
            if not any(pattern.startswith(f"{path.name}/") for pattern in HUB_FILES):
                skipped.append(f"{path.name}/")
                continue
            entries = sorted(p.relative_to(folder).as_posix() for p in path.rglob("*") if p.is_file())
        else:
            entries = [path.name]
        for name in entries:
            if name in generated:
                continue  # replaced by what push writes
            is_weights = name.endswith(".safetensors") or name == "model.safetensors.index.json"
            # fnmatch's `*` also matches `/`: a pattern matches only at its own depth (not a nested folder's files).
            allowed = any(
                fnmatch.fnmatchcase(name, pattern) and name.count("/") == pattern.count("/") for pattern in HUB_FILES
            )
            if allowed and (name in loaded or not is_weights):
                files[name] = folder / name
            else:
                skipped.append(name)
    return UploadPlan(dict(sorted(files.items())), skipped)


@contextmanager
def hub_timeout(seconds: float) -> Iterator[None]:
    """Give huggingface_hub's shared HTTP client a timeout of `seconds` for the block, then restore its own.

    huggingface_hub 2.4 builds its client with `timeout=None`, so a Hub that accepts a connection and never answers
    hangs a push for ever. The shared client (`get_session`) is changed in place rather than replaced through
    `set_client_factory`, because a factory the caller set (a proxy, certificates) cannot be read back to be restored.
    huggingface_hub closes and rebuilds that client after a connection error inside its own retries; the rebuilt one
    has the factory's timeout until the next try enters this block again.
    """
    session = get_session()
    previous = session.timeout
    session.timeout = httpx2.Timeout(seconds)
    try:
        yield
    finally:
        session.timeout = previous


def call_with_retries(call: Callable[[], T], endpoint: str, *, timeout: float, retries: int) -> T:
    """`call()` under `hub_timeout(timeout)`, sent again after a timeout or a connection error, `retries` times at most.

    huggingface_hub retries some requests itself (preupload, up to 5 times with its own backoff); the tries counted
    here are calls of `call`.

    Raises:
        PushTimeoutError: the last try timed out.
        PushConnectionError: the last try could not connect or lost the connection.
    """
    tries = retries + 1
    for attempt in range(tries):
        try:
            with hub_timeout(timeout):
                return call()
        except TRANSIENT_ERRORS as err:
            error = err
            if attempt < retries:
                wait = min(2.0**attempt, 8.0)  # a blip passes in seconds; longer waits only delay the error
                logger.warning(
                    "%s from %s; try %d of %d in %.0f s", type(err).__name__, endpoint, attempt + 2, tries, wait
                )
                time.sleep(wait)
    times = f"{tries} {'try' if tries == 1 else 'tries'}"
    if isinstance(error, httpx2.TimeoutException):
        raise PushTimeoutError(
            f"push to {endpoint} timed out after {timeout:g} s ({times}); check the network or raise --timeout"
        ) from error
    raise PushConnectionError(
        f"push to {endpoint} failed: {type(error).__name__}: {error} ({times}); check the network and --endpoint"
    ) from error


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    results: str | Path | None = None,
    include_results: bool = False,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload ALiBi model",
    dry_run: bool = False,
    timeout: float = 60.0,
    retries: int = 2,
) -> CommitInfo | None:
    """Upload a checkpoint folder as a Hub repo that loads with nothing but transformers.

    The folder is checked and the upload planned (`plan_push`) before any request is sent. The files to upload are
    printed, path in the repo and size; the folder's other files are named in a warning ("not uploaded: ...").

    Args:
        folder: a `save_pretrained` folder, tokenizer files included if any.
        repo_id: "user/name"; created if it does not exist.
        results: an extrapolation JSON for the card (`read_extrapolation`); defaults to `folder/extrapolation.json`.
        include_results: also upload the results, as `RESULTS_FILE` without local paths (`sanitize_results`).
        endpoint: the Hub URL; defaults to huggingface_hub's (which honours `HF_ENDPOINT`).
        dry_run: print what would be uploaded and return None, sending no request.
        timeout: seconds each request may wait for the Hub (to connect, or between bytes of the answer).
        retries: how many times a request that timed out or could not connect is sent again.

    Returns:
        The commit, or None for a dry run.

    Raises:
        FileNotFoundError, ValueError: the folder fails a check (`plan_push`), or timeout or retries is out of
            range; nothing was sent.
        PushTimeoutError, PushConnectionError: the Hub did not answer or could not be reached, after the retries.
    """
    if timeout <= 0 or retries < 0:
        raise ValueError(f"timeout must be > 0 and retries >= 0, got timeout={timeout}, retries={retries}")
    plan = plan_push(
        folder,
        repo_id,
        results=results,
        include_results=include_results,
        license=license,
        datasets=datasets,
        base_model=base_model,
    )
    api = HfApi(endpoint=endpoint, token=token)
    print(f"{'dry run: would upload' if dry_run else 'uploading'} to {repo_id} at {api.endpoint}: {plan.describe()}")
    if plan.skipped:
        logger.warning("not uploaded: %s", ", ".join(plan.skipped))
    if dry_run:
        return None
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=data if isinstance(data, bytes) else str(data))
        for name, data in plan.files.items()
    ]
    repo_url = call_with_retries(
        lambda: api.create_repo(repo_id, private=private, exist_ok=True),
        api.endpoint,
        timeout=timeout,
        retries=retries,
    )
    return call_with_retries(
        lambda: api.create_commit(repo_url.repo_id, operations, commit_message=commit_message),
        api.endpoint,
        timeout=timeout,
        retries=retries,
    )


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push", help="upload a checkpoint folder to the Hub with remote code and a model card"
    )
    parser.add_argument("model_dir", type=Path, help="a save_pretrained folder (weights, config, tokenizer)")
    parser.add_argument("repo_id", help="target repo, e.g. user/alibi-350m; created if missing")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"extrapolation JSON for the card (default: MODEL_DIR/{RESULTS_FILE})",
    )
    parser.add_argument(
        "--include-results",
        action="store_true",
        help=f"also upload the results as {RESULTS_FILE}, without local paths",
    )
    parser.add_argument("--license", default="apache-2.0", help="license id for the card metadata")
    parser.add_argument(
        "--dataset", dest="datasets", action="append", default=[], help="training dataset (repeatable)"
    )
    parser.add_argument("--base-model", default=None, help="repo id this model was fine-tuned or converted from")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the one from `hf auth login` or HF_TOKEN)")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--message", default="Upload ALiBi model", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="print the files that would be uploaded; send nothing")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each request may wait (default: 60)")
    parser.add_argument(
        "--retries", type=int, default=2, help="times a request that timed out or failed to connect is sent again"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = push_to_hub(
        args.model_dir,
        args.repo_id,
        results=args.results,
        include_results=args.include_results,
        license=args.license,
        datasets=args.datasets,
        base_model=args.base_model,
        private=args.private or None,
        token=args.token,
        endpoint=args.endpoint,
        commit_message=args.message,
        dry_run=args.dry_run,
        timeout=args.timeout,
        retries=args.retries,
    )
    if info is not None:
        print(f"pushed {args.model_dir} to {args.repo_id}: {info.commit_url}")
    return 0
