"""Checkpoints in and out of the Hugging Face Hub: push with remote code and a model card, load with clear errors.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

A pushed repo carries `configuration_alibi.py` and `modeling_alibi.py` and a `config.json` whose `auto_map` names
AutoConfig, AutoModel and AutoModelForCausalLM, so `from_pretrained("user/repo", trust_remote_code=True)` works with
nothing but transformers installed. Its README.md is a model card with the training length and, where the evaluation
harness left one, the extrapolation table.

    alibi-lm push MODEL_DIR REPO_ID [--results extrapolation.json] [--license apache-2.0] [--dataset NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, ModelCardData
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, PreTrainedModel

from . import modeling

MODELING_FILES = ("configuration_alibi.py", "modeling_alibi.py")
AUTO_MAP = {
    "AutoConfig": "configuration_alibi.AlibiConfig",
    "AutoModel": "modeling_alibi.AlibiModel",
    "AutoModelForCausalLM": "modeling_alibi.AlibiForCausalLM",
}
# Files a checkpoint folder may hold that belong on the Hub: weights, configs, tokenizer, chat template, remote code.
HUB_SUFFIXES = (".safetensors", ".json", ".py", ".txt", ".model", ".tiktoken", ".jinja")
# Trainer state that lives next to the weights in a checkpoint folder but is not part of the model.
TRAINER_FILES = frozenset({"trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"})
# Where `alibi-lm eval CKPT --json CKPT/extrapolation.json` puts its results; `push` picks them up from there.
RESULTS_FILE = "extrapolation.json"
CARD_INTRO = (
    "A causal language model with ALiBi (Attention with Linear Biases; Press, Smith & Lewis, "
    '["Train Short, Test Long"](https://arxiv.org/abs/2108.12409), ICLR 2022). ALiBi adds a per-head linear '
    "penalty on query-key distance instead of position embeddings, so the model runs on sequences longer than "
    "the ones it was trained on with no setting to change: `max_position_embeddings` records the training "
    "length and is not a limit."
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


def prepare_for_hub(model: PreTrainedModel) -> PreTrainedModel:
    """Make `save_pretrained` / `push_to_hub` write the remote code and a full `auto_map`.

    `register_for_auto_class` copies the modeling files into the saved folder but maps only AutoConfig and the
    model's own class; AutoModel is added here so that `AutoModel.from_pretrained(repo, trust_remote_code=True)`
    also works. Registration is per class (transformers' API), so afterwards every ALiBi model this process saves
    carries the code. Returns the model, for chaining.
    """
    model.config.register_for_auto_class()
    model.register_for_auto_class("AutoModelForCausalLM")
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    auto_map["AutoModel"] = AUTO_MAP["AutoModel"]
    model.config.auto_map = auto_map
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
        missing = [name for name in shards if not (folder / name).is_file()]
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


def load_model(name_or_path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` that names the bad file when a checkpoint is truncated or corrupt.

    Raw `from_pretrained` raises `SafetensorError: Error while deserializing header: ...` without saying which
    file; a local folder's safetensors files are checked first, and an error from a downloaded file is re-raised
    with the repo name. `import alibi_lm` (this package) has registered the Auto classes, so no remote code runs.
    """
    if Path(name_or_path).is_dir():
        for file in sorted(Path(name_or_path).glob("*.safetensors")):
            check_safetensors(file)
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
    if isinstance(data, Mapping) and "lengths" in data:
        data = [data]
    if isinstance(data, list) and data and all(isinstance(r, Mapping) and "lengths" in r for r in data):
        if len(data) > 1:
            matches = [r for r in data if model_name is not None and Path(str(r.get("model_name"))).name == model_name]
            if len(matches) != 1:
                names = [r.get("model_name") for r in data]
                raise ValueError(f"{path} holds results for {len(data)} models {names}; write one model's results")
            data = matches
        data = data[0]["lengths"]
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
    train_len = config.get("max_position_embeddings")
    encoding = config.get("position_encoding", "alibi")
    rows = [
        ("position encoding", f"`{encoding}`"),
        ("training length (`max_position_embeddings`)", f"{train_len} tokens" if train_len else "unknown"),
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
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
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


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    results: str | Path | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload ALiBi model",
) -> CommitInfo:
    """Upload a checkpoint folder as a Hub repo that loads with nothing but transformers.

    The folder is checked (weights present and readable, an ALiBi config) before any request is sent. The pushed
    `config.json` gets the full `auto_map`, the modeling files come from the folder or, if it has none, from this
    package, and README.md is a fresh model card (`build_model_card`).

    Args:
        folder: a `save_pretrained` folder, tokenizer files included if any.
        repo_id: "user/name"; created if it does not exist.
        results: an extrapolation JSON for the card (`read_extrapolation`); defaults to `folder/extrapolation.json`.
        endpoint: the Hub URL; defaults to huggingface_hub's (which honours `HF_ENDPOINT`).
    """
    folder = Path(folder)
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
    if results is None and (folder / RESULTS_FILE).is_file():
        results = folder / RESULTS_FILE
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
    generated = {
        "config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        "README.md": str(card).encode(),
        **{name: (package_code / name).read_bytes() for name in MODELING_FILES if not (folder / name).is_file()},
    }
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in generated.items()]
    operations += [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        for path in sorted(folder.iterdir())
        if path.is_file()
        and path.suffix in HUB_SUFFIXES
        # Only our two modeling files: a folder saved under FSDP2 by plain Trainer can hold torch's own sources.
        and (path.suffix != ".py" or path.name in MODELING_FILES)
        and path.name not in TRAINER_FILES
        and path.name not in generated
        and path.name != RESULTS_FILE
    ]

    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    return api.create_commit(repo_url.repo_id, operations, commit_message=commit_message)


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
    parser.add_argument("--license", default="apache-2.0", help="license id for the card metadata")
    parser.add_argument(
        "--dataset", dest="datasets", action="append", default=[], help="training dataset (repeatable)"
    )
    parser.add_argument("--base-model", default=None, help="repo id this model was fine-tuned or converted from")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the one from `hf auth login` or HF_TOKEN)")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--message", default="Upload ALiBi model", help="commit message")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = push_to_hub(
        args.model_dir,
        args.repo_id,
        results=args.results,
        license=args.license,
        datasets=args.datasets,
        base_model=args.base_model,
        private=args.private or None,
        token=args.token,
        endpoint=args.endpoint,
        commit_message=args.message,
    )
    print(f"pushed {args.model_dir} to {args.repo_id}: {info.commit_url}")
    return 0
