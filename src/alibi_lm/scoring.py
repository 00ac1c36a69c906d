"""Scoring a model at several evaluation lengths: the extrapolation test of ALiBi, and what it reads.

Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022 (arXiv:2108.12409), evaluate a model trained at length L on inputs of
length L, 2L, ... in two ways (section 4 and appendix B):

- **non-overlapping**: the text is cut into consecutive chunks of length L and each chunk is scored on
  every token it predicts (L - 1 of them: a chunk's first token has no context inside the chunk);
- **sliding window** with stride s <= L: windows of length L start every s tokens; the first window
  scores all its predicted tokens, every later one only its last min(s, L - 1) tokens, which continue
  exactly where the previous window stopped. Stride 1 is the paper's Table 15; stride L equals
  non-overlapping.

Perplexity is token-weighted (total NLL over all scored tokens / their number), accumulated in fp64.
`perplexity_at_lengths` is the one implementation; the `alibi-lm eval` CLI, `ExtrapolationCallback`
(Trainer) and the `evaluate` module in `alibi_lm/metrics/perplexity_at_lengths.py` all call it (through
`alibi_lm.evaluation`, which holds the formats, the callback and the CLI). `evaluation_texts` is the one rule for
what text a command scores: the offline Wikipedia test split, data files or a dataset.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .model_files import has_tokenizer
from .progress import progress_bar

MODES = ("nonoverlapping", "sliding")


# Auto batch size: about this many tokens per forward, so short lengths batch many windows and 16k runs alone.
TOKENS_PER_BATCH = 8192


@dataclass(frozen=True)
class LengthResult:
    """Perplexity of one model at one evaluation length."""

    length: int
    ppl: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    n_tokens: int  # tokens scored
    n_windows: int  # forward passes of `length` tokens


@dataclass
class PerplexityResult:
    """Perplexity of one model at every evaluation length, with the settings that produced it."""

    model_name: str
    mode: str
    stride: int | None
    training_length: int | None  # the length the model was trained at (`training_length(config)`)
    span_tokens: int  # every length is evaluated inside the first `span_tokens` tokens of the text
    lengths: list[LengthResult] = field(default_factory=list)

    @property
    def ppl(self) -> dict[int, float]:
        return {r.length: r.ppl for r in self.lengths}

    def __getitem__(self, length: int) -> LengthResult:
        for r in self.lengths:
            if r.length == length:
                return r
        raise KeyError(f"no result at length {length}; evaluated at {[r.length for r in self.lengths]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerplexityResult:
        """The inverse of `to_dict`: read back a result saved as JSON (e.g. a model's `extrapolation.json`)."""
        return cls(**{**data, "lengths": [LengthResult(**row) for row in data["lengths"]]})

    def to_table(self) -> str:
        return format_table([self])

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        return to_json([self], path)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        return to_csv([self], path)

    def plot(self, path: str | os.PathLike) -> Path:
        from .plotting import plot_perplexity

        return plot_perplexity([self], path)


def training_length(config: Any) -> int | None:
    """The length a model was trained at: `AlibiConfig.train_length`, else (other architectures, where it sizes the
    position table) `max_position_embeddings`; None when the config has neither."""
    return getattr(config, "train_length", None) or getattr(config, "max_position_embeddings", None)


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL), inf past float range (a diverged model) rather than an OverflowError."""
    return math.exp(mean_nll) if mean_nll < math.log(sys.float_info.max) else math.inf


def validate_lengths(lengths: Sequence[int], mode: str, stride: int | None) -> list[int]:
    """Check the evaluation settings; return the lengths sorted and deduplicated."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lengths = list(lengths)
    if not lengths:
        raise ValueError("lengths is empty: give at least one evaluation length")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"lengths must be integers, got {length!r}")
        if length < 2:
            raise ValueError(
                f"every evaluation length must be >= 2 (a window of 1 token predicts nothing), got {length}"
            )
    if mode == "nonoverlapping":
        if stride is not None:
            raise ValueError("stride applies only to mode='sliding'; non-overlapping chunks have stride = length")
    else:
        if stride is None:
            raise ValueError(
                "mode='sliding' needs a stride (1 is the paper's Table 15; stride = length is non-overlapping)"
            )
        if isinstance(stride, bool) or not isinstance(stride, int) or stride <= 0:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        too_short = [length for length in lengths if stride > length]
        if too_short:
            raise ValueError(
                f"stride {stride} is longer than evaluation length(s) {too_short}; stride must be <= length"
            )
    return sorted(set(lengths))


def tokenize_texts(texts: str | Sequence[str], tokenizer: Any) -> torch.Tensor:
    """Tokenize texts into one stream of ids, each text ending with the tokenizer's EOS token (if it has one).

    The paper scores one long stream (WikiText-103's test set). Documents are tokenized and joined exactly as
    `alibi_lm.blocks` joins them for training (the tokenizer's own special tokens, then EOS unless the text
    already ends with it), so a model is evaluated on the kind of stream it was trained on. Returns [N].
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("texts is empty")
    encoded = tokenizer(list(texts), return_attention_mask=False)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            stream.append(eos)
    return torch.tensor(stream, dtype=torch.long)


def document_log_likelihood(model: torch.nn.Module, tokenizer: Any, text: str) -> tuple[float, int]:
    """Log-likelihood of one document in a single forward pass, whatever its length: (sum of log p in nats, tokens).

    The document is scored after one prefix token (the tokenizer's bos, else its eos), so every one of its tokens
    is predicted; this is what lm-evaluation-harness's `loglikelihood_rolling` computes when its `max_length` holds
    the whole document. ALiBi needs no window: the model sees the whole document as context, however far past its
    training length. Log-softmax in fp32, sum in fp64.
    """
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError("the tokenizer has neither a bos nor an eos token to start the document with")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if not ids:
        raise ValueError("the document has no tokens")
    device = next(model.parameters()).device
    inputs = torch.tensor([[prefix, *ids]], device=device)  # [1, 1 + N]
    with torch.inference_mode():
        logits = model(input_ids=inputs[:, :-1], use_cache=False).logits.float()  # [1, N, V]
    log_probs = logits.log_softmax(-1).gather(-1, inputs[:, 1:, None])  # [1, N, 1]
    return log_probs.double().sum().item(), len(ids)


def as_ids(token_ids: Any) -> torch.Tensor:
    ids = torch.as_tensor(token_ids)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"token_ids must be one stream of ids (1-D, or [1, N]); got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"token_ids must be integers, got dtype {ids.dtype}")
    return ids.long()


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _score_windows(
    model: torch.nn.Module,
    windows: torch.Tensor,
    n_score: int,
    batch_size: int,
    device: torch.device,
    keep_logits: bool,
    bar: Any,
) -> tuple[float, int]:
    """Sum the NLL of the last `n_score` tokens of each window.

    Args:
        windows: LongTensor [W, L], possibly a strided view of the text (no copy until a batch is sliced).
        n_score: tokens scored per window, 1 <= n_score <= L - 1.
    Returns:
        (total NLL in nats, accumulated in fp64; number of scored tokens).
    """
    length = windows.shape[1]
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for begin in range(0, windows.shape[0], batch_size):
        x = windows[begin : begin + batch_size].to(device).contiguous()  # [B, L]
        targets = x[:, length - n_score :]  # [B, n_score]
        if keep_logits:
            # The last n_score + 1 positions; the very last predicts past the window and is dropped.
            logits = model(input_ids=x, use_cache=False, logits_to_keep=n_score + 1).logits[:, :-1]
        else:
            logits = model(input_ids=x, use_cache=False).logits[:, length - n_score - 1 : -1]
        # fp32 log-softmax whatever the model dtype; per-token losses summed in fp64.
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        total += nll.double().sum()
        count += targets.numel()
        bar.update(x.shape[0])
    return total.item(), count


def perplexity_at_lengths(
    model: torch.nn.Module,
    token_ids: Sequence[int] | torch.Tensor | None = None,
    lengths: Sequence[int] = (),
    *,
    texts: str | Sequence[str] | None = None,
    tokenizer: Any = None,
    mode: str = "nonoverlapping",
    stride: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    max_tokens: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Token-weighted perplexity of a causal LM on one text at each evaluation length.

    Every length is evaluated on the same span: the first floor(N / max(lengths)) * max(lengths) tokens of
    the N-token text. Non-overlapping mode cuts it into chunks of L (when L divides the longest length, as
    in the usual 1x, 2x, 4x, ... ladder, every length covers the span exactly; otherwise the last partial
    chunk is dropped). Sliding mode fits as many windows as the span holds (at most stride - 1 trailing
    tokens go unscored). A text with fewer than max(lengths) tokens raises ValueError: it is an error, not a
    skip, so that a table never silently misses a row.

    Args:
        model: a causal LM returning `.logits` [B, L, V] (any `AutoModelForCausalLM`). It is put in eval
            mode for the call and restored afterwards.
        token_ids: the text as one stream of ids, [N] (list, tensor or array). Give this or `texts`.
        lengths: evaluation lengths L, each >= 2.
        texts: a string or list of strings, tokenized with `tokenizer` by `tokenize_texts`.
        mode: "nonoverlapping" or "sliding".
        stride: sliding mode only; 1 <= stride <= every length.
        batch_size: windows per forward; default max(1, 8192 // L).
        device: where to run; default the model's device. If given, the model is moved there.
        max_tokens: use at most this many tokens of the text.
        model_name: the name shown in tables and plots; default config.name_or_path.
        progress: show a tqdm bar per length.
    """
    lengths = validate_lengths(lengths, mode, stride)
    if (token_ids is None) == (texts is None):
        raise ValueError("give exactly one of token_ids or texts")
    if texts is not None:
        if tokenizer is None:
            raise ValueError("texts need a tokenizer")
        token_ids = tokenize_texts(texts, tokenizer)
    ids = as_ids(token_ids)
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        ids = ids[:max_tokens]
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    longest = lengths[-1]
    if ids.numel() < longest:
        raise ValueError(
            f"the text has {ids.numel()} tokens, fewer than the longest evaluation length {longest}; "
            f"give more text or drop the lengths above {ids.numel()}"
        )
    span = ids.numel() // longest * longest
    ids = ids[:span]

    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    result = PerplexityResult(
        model_name=model_name or getattr(config, "name_or_path", "") or type(model).__name__,
        mode=mode,
        stride=stride,
        training_length=training_length(config),
        span_tokens=span,
    )
    keep_logits = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for length in lengths:
                bs = batch_size or max(1, TOKENS_PER_BATCH // length)
                if mode == "nonoverlapping":
                    step, later_scored = length, length - 1
                else:
                    # A window's first token has no context inside it, so stride L scores L - 1 per window,
                    # exactly as non-overlapping does.
                    step, later_scored = stride, min(stride, length - 1)
                windows = ids.unfold(0, length, step)  # [W, L] view: stride 1 costs no extra memory
                # The first window scores all its L - 1 predicted tokens; the later ones only their tail.
                first = 1 if later_scored < length - 1 else windows.shape[0]
                with progress_bar(
                    total=windows.shape[0], desc=f"ppl@{length}", unit="win", disable=not progress
                ) as bar:
                    nll, count = _score_windows(model, windows[:first], length - 1, bs, device, keep_logits, bar)
                    if first < windows.shape[0]:
                        rest = _score_windows(model, windows[first:], later_scored, bs, device, keep_logits, bar)
                        nll, count = nll + rest[0], count + rest[1]
                mean = nll / count
                result.lengths.append(LengthResult(length, perplexity(mean), mean, count, windows.shape[0]))
    finally:
        model.train(was_training)
    return result


# ---------------------------------------------------------------------------------------------------------
# CLI: alibi-lm eval


# ---------------------------------------------------------------------------------------------------------
# Output: table, JSON, CSV


def format_table(results: Sequence[PerplexityResult]) -> str:
    """A plain-text table: one row per evaluation length, one perplexity column per model."""
    if not results:
        return ""
    lengths = sorted({r.length for res in results for r in res.lengths})
    names = [res.model_name for res in results]
    header = ["length"] + names + ["tokens"]
    rows = []
    for length in lengths:
        row = [str(length)]
        tokens = ""
        for res in results:
            try:
                item = res[length]
            except KeyError:
                row.append("-")
                continue
            mark = "*" if res.training_length == length else ""
            row.append(f"{item.ppl:.2f}{mark}")
            tokens = tokens or str(item.n_tokens)
        rows.append(row + [tokens])
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))

    first = results[0]
    setting = first.mode if first.mode == "nonoverlapping" else f"sliding, stride {first.stride}"
    lines = [f"perplexity ({setting}); * = training length", fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


def _write(text: str, path: str | os.PathLike | None) -> str:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


def to_json(results: Sequence[PerplexityResult], path: str | os.PathLike | None = None) -> str:
    """Results as a JSON list (one object per model); written to `path` if given."""
    return _write(json.dumps([res.to_dict() for res in results], indent=2) + "\n", path)


CSV_FIELDS = ["model", "mode", "stride", "training_length", "length", "ppl", "nll", "n_tokens", "n_windows"]


def to_csv(results: Sequence[PerplexityResult], path: str | os.PathLike | None = None) -> str:
    """Results as CSV, one row per (model, length); written to `path` if given."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for res in results:
        for r in res.lengths:
            writer.writerow(
                {
                    "model": res.model_name,
                    "mode": res.mode,
                    "stride": res.stride,
                    "training_length": res.training_length,
                }
                | asdict(r)
            )
    return _write(buffer.getvalue(), path)


HELDOUT = "wikipedia"  # `--data wikipedia`: the offline Wikipedia test split


def open_evaluation_texts(
    data: str = HELDOUT, config: str | None = None, split: str = "test", text_column: str = "text"
) -> Iterator[str]:
    """What a command scores, as it is read: for `HELDOUT`, a split of the offline Wikipedia (by default "test":
    articles training never sees, neither as train nor validation; `config` is a topic); else the texts of one split
    of data files or a dataset (`alibi_lm.data.open_texts`: a path, glob pattern or URL, or a Hub name with its
    `config`). The source, split and column are checked before this returns."""
    from .data import OFFLINE_WIKIPEDIA, load_offline_wikipedia, open_texts

    if data not in (HELDOUT, OFFLINE_WIKIPEDIA):  # a recipe's name for it is taken too
        return open_texts(data, config, split, text_column)
    if text_column != "text":
        raise ValueError(f"The offline Wikipedia's text is in its column 'text', not {text_column!r}.")
    return iter(load_offline_wikipedia(split=split, topic=config)["text"])


def evaluation_texts(
    data: str = HELDOUT, config: str | None = None, split: str = "test", text_column: str = "text"
) -> list[str]:
    """All of `open_evaluation_texts`."""
    return list(open_evaluation_texts(data, config, split, text_column))


class TextPrefix:
    """Texts read only as far as scoring needs them: `--max-tokens` N on a split of a Hub corpus reads the texts
    that hold N tokens, not the split. Texts read once are kept, so several models share them."""

    def __init__(self, texts: Iterator[str]) -> None:
        self._source, self.texts = texts, []

    def read_all(self) -> list[str]:
        self.texts.extend(self._source)
        return self.texts

    def up_to(self, tokenizer: Any, max_tokens: int | None) -> list[str]:
        """The shortest prefix of texts holding `max_tokens` tokens of `tokenizer` (all texts for None), joined as
        `tokenize_texts` joins them, so scoring it gives what scoring every text would."""
        if max_tokens is None:
            return self.read_all()
        count = taken = 0
        while count < max_tokens:
            if taken == len(self.texts):
                text = next(self._source, None)
                if text is None:
                    break
                self.texts.append(text)
            count += len(tokenize_texts(self.texts[taken], tokenizer))
            taken += 1
        return self.texts[:taken]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """`--data`, `--data-config`, `--split` and `--text-column`: what `evaluation_texts` reads."""
    parser.add_argument(
        "--data",
        default=HELDOUT,
        help=f"'{HELDOUT}' (the offline Wikipedia; default), a data file (.txt, .json, .jsonl, .csv, .parquet; text "
        "ones also .gz/.bz2/.xz), a glob pattern, a URL, or a Hub dataset name such as Salesforce/wikitext",
    )
    parser.add_argument(
        "--data-config", help="the dataset's config, e.g. wikitext-103-raw-v1 (for wikipedia: a topic)"
    )
    parser.add_argument("--split", default="test", help="the split to score (default: test)")
    parser.add_argument("--text-column", default="text", help="the column holding the text (default: text)")


def data_text_prefix(args: argparse.Namespace) -> TextPrefix:
    """A `TextPrefix` of `open_evaluation_texts` for the arguments `add_data_arguments` added."""
    return TextPrefix(open_evaluation_texts(args.data, args.data_config, args.split, args.text_column))


def load_model_and_tokenizer(path: str, device: str | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """Load a folder written by `save_pretrained` (model and tokenizer) with the Auto classes."""
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"model folder not found: {path} (alibi-lm eval takes folders written by save_pretrained)"
        )
    from transformers import AutoTokenizer

    from .loading import load_model  # names a truncated file or one whose bytes changed since it was saved

    torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    model = load_model(path, dtype=torch_dtype)  # first: a damaged or tampered folder is named before anything else
    if not has_tokenizer(path):
        raise FileNotFoundError(
            f"{path} has no tokenizer (no tokenizer.json or tokenizer_config.json): save it beside the model with "
            "tokenizer.save_pretrained(folder)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer
