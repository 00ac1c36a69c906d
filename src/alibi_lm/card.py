"""The model card a pushed repo gets: what the model is, how to load it, and what its evaluation measured.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

The card names the training length and, where the evaluation harness left one (`RESULTS_FILE`), the extrapolation
table. Results files are read with clear errors and, when they go up with the card, rewritten without local paths
(`sanitize_results`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open

from .loading import model_class

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


# A folder holding a head (config.json's `architectures`): its task and the usage line after the inputs (the Auto
# class is the head's own `_auto_class`).
HEAD_CARDS = {
    "AlibiForSequenceClassification": (
        "text-classification",
        "print(model.config.id2label[int(model(**inputs).logits.argmax(-1))])",
    ),
    "AlibiForTokenClassification": (
        "token-classification",
        "print([model.config.id2label[int(i)] for i in model(**inputs).logits.argmax(-1)[0]])",
    ),
    "AlibiForQuestionAnswering": (
        "question-answering",
        "out = model(**inputs)  # the answer spans start_logits.argmax() to end_logits.argmax()",
    ),
}


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
    """The repo's README.md: YAML metadata, architecture, training length, extrapolation table, usage (a head's own,
    for a folder whose `architectures` names one: `HEAD_CARDS`)."""
    model = model_class(config.get("architectures"))
    architecture, auto_class = model.__name__, model._auto_class
    task, usage = HEAD_CARDS.get(architecture, ("text-generation", None))
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        tags=["alibi", "causal-lm" if usage is None else task, "length-extrapolation", "custom_code"],
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
    head = [] if usage is None else [f"This repo holds the model with a {task} head (`{architecture}`).", ""]
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        CARD_INTRO,
        "",
        *head,
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
        f"from transformers import {auto_class}, AutoTokenizer",
        "",
        f'model = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)',
        # transformers 5 reads config.json before the tokenizer's files, so the tokenizer needs the flag too.
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)',
        'inputs = tokenizer("The meaning of life is", return_tensors="pt")',
        usage or "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=50)[0]))",
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
