"""Checkpoints in and out of the Hugging Face Hub: push with remote code and a model card, load with clear errors.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

A pushed repo carries `configuration_alibi.py` and `modeling_alibi.py` and a `config.json` whose `auto_map` names
AutoConfig, AutoModel and AutoModelForCausalLM, so `from_pretrained("user/repo", trust_remote_code=True)` works with
nothing but transformers installed. Its README.md is a model card with the training length and, where the evaluation
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
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import httpx2
import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import get_session
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from . import modeling
from .integrity import DEFINING_FILES, MODELING_FILES, check_links_stay_inside, inside, verify_checksums
from .modeling.configuration_alibi import AUTO_MAP, TOKENIZER_AUTO_MAP  # AlibiConfig writes AUTO_MAP into config.json

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
TRAINER_FILES = frozenset({"trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"})
# Where `alibi-lm eval CKPT --json CKPT/extrapolation.json` puts its results; `push` picks them up from there.
RESULTS_FILE = "extrapolation.json"
CARD_INTRO = (
    "A causal language model with ALiBi (Attention with Linear Biases; Press, Smith & Lewis, "
    '["Train Short, Test Long"](https://arxiv.org/abs/2108.12409), ICLR 2022). ALiBi adds a per-head linear '
    "penalty on query-key distance instead of position embeddings, so the model runs on sequences longer than "
    "the ones it was trained on with no setting to change: `train_length` records the training length, and "
    "`max_position_embeddings`, the context that `generate`, lm-eval and serving engines read, is 16 times it."
)
CARD_REMOTE_CODE_NOTE = (
    "The modeling code ships in this repo, so only `transformers` is needed. With the `alibi-lm` package installed, "
    "`import alibi_lm` registers the classes and `trust_remote_code` is not needed."
)
CITATION = """@inproceedings{press2022train,
  title     = {Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation},
  author    = {Press, Ofir and Smith, Noah A. and Lewis, Mike},
  booktitle = {International Conference on Learning Representations},
  year      = {2022},
  url       = {https://arxiv.org/abs/2108.12409}
}"""
# Errors after which the same request may well succeed: no answer in time, a refused, reset or dropped connection.
TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PushTimeoutError(TimeoutError):
    """The Hub did not answer a push request within the timeout, and sending it again did not help."""


class PushConnectionError(ConnectionError):
    """A push could not reach the Hub, or lost the connection, on every try."""


def prepare_for_hub(model: PreTrainedModel, tokenizer: Any = None) -> PreTrainedModel:
    """Make `save_pretrained` / `push_to_hub` write the remote code next to the weights.

    transformers' `register_for_auto_class` makes `save_pretrained` copy the modeling files and map AutoConfig and
    the model's class in `auto_map`; AlibiConfig already carries the full `auto_map` (AutoModel too). Registration
    is per class (transformers' API), so afterwards every ALiBi model this process saves carries the code. Returns
    the model, for chaining.

    A `tokenizer` saved with the model gets `TOKENIZER_AUTO_MAP` in its tokenizer_config.json, so that on
    transformers 4 it fails with the remote code's version message (transformers 5 ignores it without
    `trust_remote_code=True`, and loads the same tokenizer with it).
    """
    model.config.register_for_auto_class()
    model.register_for_auto_class("AutoModelForCausalLM")
    if tokenizer is not None:
        tokenizer._auto_map = dict(TOKENIZER_AUTO_MAP)
    return model


def find_weights(folder: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, checked to exist and to be readable.

    Raises:
        FileNotFoundError: the folder, or the weights (a single file or every shard of an index), are missing.
        ValueError: a safetensors file is truncated or corrupt.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not inside(folder, name).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are not in {folder}: {', '.join(missing)}")
        files = [folder / name for name in shards]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        legacy = [p.name for p in folder.glob("*.bin") if p.name not in TRAINER_FILES]
        hint = f" (found {', '.join(legacy)}: re-save with save_pretrained to get safetensors)" if legacy else ""
        raise FileNotFoundError(
            f"no weights in {folder}: expected model.safetensors or model.safetensors.index.json{hint}"
        )
    for file in files:
        check_safetensors(file)
    return files


def check_safetensors(file: str | Path) -> None:
    """Raise a ValueError naming `file` if its safetensors header or length is wrong (a truncated download or copy)."""
    try:
        # safe_open validates the header and that the file is as long as the header says, without reading tensors.
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as err:
        size = Path(file).stat().st_size
        raise ValueError(f"{file} ({size} bytes) is not a valid safetensors file, probably truncated: {err}") from err


def check_model_folder(folder: str | Path) -> list[Path]:
    """Everything a loader must know before it reads a local model folder; returns its weights files.

    No file leads out of the folder (`check_links_stay_inside`, and `find_weights` for an index's shards); every
    safetensors header is whole; the weights, config, tokenizer and code match `SHA256SUMS` when there is one (a
    flipped bit or an edited config is named here, not generated from); and config.json implies the tensors the
    weights hold (a layer dropped or added at random is not a model). Load, export, fine-tuning and verify all call it.

    Raises:
        OutsideFolderError, FileNotFoundError, ValueError (IntegrityError among them): naming the file.
    """
    folder = Path(folder)
    check_links_stay_inside(folder)  # transformers would read what a link points at
    weights = find_weights(folder)
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)
    verify_checksums(folder)
    if (folder / "config.json").is_file():
        check_config_matches_weights(folder)
    return weights


def load_model(name_or_path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` that names the bad file when a checkpoint is truncated or corrupt.

    Raw `from_pretrained` raises `SafetensorError: Error while deserializing header: ...` without saying which
    file, and loads a file with a flipped bit inside a tensor without complaint. A local folder's safetensors
    headers are checked first, and its weights against `SHA256SUMS` when it has one (`alibi_lm.integrity`); an
    error from a downloaded file is re-raised with the repo name. `import alibi_lm` (this package) has registered the Auto classes, so no remote code runs.
    """
    if Path(name_or_path).is_dir():
        check_model_folder(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except SafetensorError as err:
        raise ValueError(
            f"the weights of {name_or_path} are not valid safetensors, probably truncated: {err}; "
            "download them again with force_download=True"
        ) from err


def read_extrapolation(path: str | Path, model_name: str | None = None) -> dict[int, float]:
    """Perplexity per evaluation length from a results JSON, sorted by length.

    Accepts what `alibi-lm eval --json` writes (a list of per-model results, each with `lengths` records holding
    `length` and `ppl`; `model_name` picks one when there are several), a bare `{"512": 19.7, "1024": 19.2}`
    map, or a list of `{"length": ..., "perplexity": ...}` records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    data = json.loads(path.read_text())
    record = _eval_record(data, path, model_name)
    if record is not None:
        data = record["lengths"]
    try:
        if isinstance(data, Mapping):
            table = {int(length): float(ppl) for length, ppl in data.items()}
        else:
            table = {int(row["length"]): float(row["ppl"] if "ppl" in row else row["perplexity"]) for row in data}
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"{path} is not an extrapolation table: expected `alibi-lm eval --json` output, {{length: perplexity}} "
            f"or a list of {{'length', 'perplexity'}} records ({type(err).__name__}: {err})"
        ) from err
    if not table or any(length <= 0 or not math.isfinite(ppl) for length, ppl in table.items()):
        raise ValueError(f"{path} must map positive lengths to finite perplexities, got {table}")
    return dict(sorted(table.items()))


def _eval_record(data: Any, path: Path, model_name: str | None) -> Mapping[str, Any] | None:
    """One model's record from `alibi-lm eval --json` output (`model_name` picks it among several), else None."""
    if isinstance(data, Mapping) and "lengths" in data:
        data = [data]
    if not (isinstance(data, list) and data and all(isinstance(r, Mapping) and "lengths" in r for r in data)):
        return None
    if len(data) > 1:
        matches = [r for r in data if model_name is not None and Path(str(r.get("model_name"))).name == model_name]
        if len(matches) != 1:
            names = [r.get("model_name") for r in data]
            raise ValueError(f"{path} holds results for {len(data)} models {names}; write one model's results")
        data = matches
    return data[0]


def sanitize_results(path: str | Path, model_name: str | None = None) -> dict[str, Any]:
    """The extrapolation results of `path` as they may be published: the numbers the card cites, no local paths.

    `alibi-lm eval --json` records the model as given on its command line, often an absolute path naming a home
    folder, so `model_name` keeps only its last component; of the settings, only those that say how the numbers
    were measured stay (mode, stride, training length). Reads what `read_extrapolation` reads, and reads back with it.

    Raises:
        FileNotFoundError, ValueError: as `read_extrapolation`.
    """
    table = read_extrapolation(path, model_name)
    record = _eval_record(json.loads(Path(path).read_text()), Path(path), model_name) or {}
    rows = {int(r["length"]): r for r in record.get("lengths", []) if isinstance(r, Mapping) and "length" in r}
    sanitized: dict[str, Any] = {}
    if record.get("model_name") is not None:
        # Windows separators too: the file may come from another machine.
        sanitized["model_name"] = PurePosixPath(str(record["model_name"]).replace("\\", "/").rstrip("/")).name
    for key, cast in (("mode", str), ("stride", int), ("training_length", int)):
        if key in record:
            sanitized[key] = None if record[key] is None else cast(record[key])
    sanitized["lengths"] = []
    for length, ppl in table.items():
        row = rows.get(length, {})
        extra = {key: cast(row[key]) for key, cast in (("nll", float), ("n_tokens", int)) if row.get(key) is not None}
        sanitized["lengths"].append({"length": length, "ppl": ppl, **extra})
    return sanitized


def count_parameters(weights: Sequence[Path]) -> int:
    """Number of stored parameters, read from the safetensors headers (tied weights are stored once)."""
    total = 0
    for file in weights:
        with safe_open(str(file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 - safe_open is not a Mapping
    return total


def build_model_card(
    config: Mapping[str, Any],
    repo_id: str,
    *,
    num_parameters: int | None = None,
    extrapolation: Mapping[int, float] | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    base_model: str | None = None,
) -> ModelCard:
    """The repo's README.md: YAML metadata, architecture, training length, extrapolation table, usage."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["alibi", "causal-lm", "length-extrapolation", "custom_code"],
        license=license,
        datasets=list(datasets) or None,
        base_model=base_model,
    )
    train_len = config.get("train_length")
    encoding = config.get("position_encoding", "alibi")
    rows = [
        ("position encoding", f"`{encoding}`"),
        ("training length (`train_length`)", f"{train_len} tokens" if train_len else "unknown"),
        ("context (`max_position_embeddings`)", f"{config.get('max_position_embeddings')} tokens"),
        ("layers", config.get("num_hidden_layers")),
        ("hidden size", config.get("hidden_size")),
        (
            "attention heads (key/value heads)",
            f"{config.get('num_attention_heads')} ({config.get('num_key_value_heads')})",
        ),
        ("vocabulary", config.get("vocab_size")),
    ]
    if num_parameters is not None:
        rows.insert(0, ("parameters", f"{num_parameters / 1e6:.2f}M" if num_parameters >= 1e5 else num_parameters))
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        CARD_INTRO,
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    if extrapolation:
        lines += [
            "## Extrapolation",
            "",
            f"Perplexity at evaluation lengths up to {max(extrapolation) / train_len:.0f}x the training length "
            "(`alibi-lm eval`)."
            if train_len
            else "Perplexity by evaluation length (`alibi-lm eval`).",
            "",
            "| evaluation length (tokens) | perplexity |",
            "|---:|---:|",
            *(
                f"| {length}{' (training length)' if length == train_len else ''} | {ppl:.2f} |"
                for length, ppl in extrapolation.items()
            ),
            "",
        ]
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)',
        # transformers 5 reads config.json before the tokenizer's files, so the tokenizer needs the flag too.
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)',
        'inputs = tokenizer("The meaning of life is", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=50)[0]))",
        "```",
        "",
        CARD_REMOTE_CODE_NOTE,
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def check_config_matches_weights(folder: str | Path) -> None:
    """Raise a ValueError unless the weights hold every tensor the folder's config.json implies, with its shape.

    A config edited after saving (another vocabulary size, one layer more) makes a repo that loads wrong: transformers
    initialises a missing tensor at random with only a warning, and refuses a shape mismatch with an error that does
    not name the config. The model is built from config.json on the meta device (no memory, no initialisation) and
    each tensor of its state dict, persistent buffers included, is compared with the safetensors headers. Tensors tied
    to each other (lm_head to embed_tokens) are one tensor, stored once under any of its names.

    Raises:
        FileNotFoundError: no config.json, or no weights (`find_weights`).
        ValueError: a tensor's shape differs from what config.json implies (the first one is named with the config
            fields its shape is made of), or tensors are missing from the weights or are not in the model.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    stored: dict[str, tuple[list[int], str]] = {}  # tensor name -> (shape, file name)
    for file in find_weights(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                stored[name] = (list(f.get_slice(name).get_shape()), file.name)
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # keep_vars returns the tensors themselves, so names of one shared tensor (tied weights) group by identity.
    tied: dict[int, list[str]] = {}
    expected: dict[str, list[int]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        tied.setdefault(id(tensor), []).append(name)
        expected[name] = list(tensor.shape)
    differ = [name for name, shape in expected.items() if name in stored and stored[name][0] != shape]
    missing = [names[0] for names in tied.values() if not any(name in stored for name in names)]
    unexpected = [name for name in stored if name not in expected]
    problems = []
    if differ:
        name = differ[0]
        shape, file = stored[name]
        fields = _shape_fields(config, expected[name])
        more = f" ({len(differ) - 1} more tensors differ: {_first(differ[1:])})" if len(differ) > 1 else ""
        problems.append(f"{name} has shape {shape} in {file} but config.json{fields} expects {expected[name]}{more}")
    if missing:
        problems.append(f"config.json implies tensors the weights do not hold: {_first(missing)}")
    if unexpected:
        problems.append(f"the weights hold tensors the model of config.json does not have: {_first(unexpected)}")
    if problems:
        raise ValueError(f"{folder}: config.json does not match the weights: {'; '.join(problems)}")


def _shape_fields(config: PretrainedConfig, shape: Sequence[int]) -> str:
    """The config fields whose values make up `shape`, as " (vocab_size=2000, hidden_size=64)"; "" if none do."""
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    fields = []
    for dim in shape:
        for name in names:
            field = f"{name}={dim}"
            if getattr(config, name, None) == dim and field not in fields:
                fields.append(field)
    return f" ({', '.join(fields)})" if fields else ""


def _first(names: Sequence[str], limit: int = 3) -> str:
    """The first `limit` names, and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


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

    config["auto_map"] = {**(config.get("auto_map") or {}), **AUTO_MAP}
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
    package_code = Path(modeling.__file__).parent
    generated: dict[str, Path | bytes] = {
        "config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        "README.md": str(card).encode(),
        **{name: package_code / name for name in MODELING_FILES if not (folder / name).is_file()},
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
