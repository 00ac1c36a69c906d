"""How far back a model can look: a span of held-out text, repeated after a gap of d tokens; and how its loss
depends on the position inside the window.

    alibi-lm eval MODEL [MODEL ...] --probe [--probe-span 32] [--probe-gaps 0 16 64 256 1024] [--probe-samples 8]
    alibi-lm eval MODEL [MODEL ...] --by-position [--lengths 1024]

Perplexity can stay flat far past the training length while the model uses only its last few hundred tokens. The
probe asks directly: each sample is a span A of held-out tokens, then d other held-out tokens (the gap), then A
again. A model that can reach back span + d tokens predicts the repeat far better than it predicted A the first
time. The result, per gap: the mean loss (nats) and top-1 accuracy on A's tokens the first time and on the repeat
(both on A[1:], the tokens that have a predecessor inside A). Where the repeat's loss rises to the first time's,
retrieval has stopped, whatever perplexity says.

`loss_by_position` is the paper's early-token-curse analysis (Press et al. 2022, section 5): the mean loss at each
position of non-overlapping chunks. Both are `alibi-lm eval` modes (`run_probe`, `run_by_position`), with a table,
JSON and a plot with one curve per model.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .progress import progress_bar

if TYPE_CHECKING:
    from .scoring import TextPrefix


@dataclass
class ProbeResult:
    """Loss and accuracy on a repeated span, per gap between its two occurrences."""

    model_name: str
    span: int
    samples: int
    gaps: list[int] = field(default_factory=list)
    first_loss: list[float] = field(default_factory=list)  # mean NLL on A[1:], first occurrence
    repeat_loss: list[float] = field(default_factory=list)  # mean NLL on A[1:], after the gap
    first_accuracy: list[float] = field(default_factory=list)
    repeat_accuracy: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self) -> str:
        lines = [
            f"copy probe: {self.model_name}, span {self.span}, {self.samples} samples",
            "| gap d | loss, first time | loss, repeat | top-1, first time | top-1, repeat |",
            "|---:|---:|---:|---:|---:|",
        ]
        for i, gap in enumerate(self.gaps):
            lines.append(
                f"| {gap} | {self.first_loss[i]:.3f} | {self.repeat_loss[i]:.3f} | "
                f"{self.first_accuracy[i]:.1%} | {self.repeat_accuracy[i]:.1%} |"
            )
        return "\n".join(lines) + "\n"


def probe_sequences(token_ids: torch.Tensor, span: int, gap: int, samples: int) -> torch.Tensor:
    """`[samples, 2 * span + gap]`: A, then `gap` filler tokens, then A again.

    Spans come from the first half of the stream, one every `span` tokens; fillers from the second half, so no
    filler repeats its own span.
    """
    half = token_ids.numel() // 2
    if samples * span > half or gap > half:
        raise ValueError(
            f"the text has {token_ids.numel()} tokens; the probe needs {samples} spans of {span} in its first half "
            f"and gaps of up to {gap} in its second half: use fewer samples, a shorter span or a longer text."
        )
    rows = []
    for s in range(samples):
        a = token_ids[s * span : (s + 1) * span]
        start = half + (s * 997) % max(1, half - gap)  # a different filler per sample
        rows.append(torch.cat([a, token_ids[start : start + gap], a]))
    return torch.stack(rows)


def copy_probe(
    model: torch.nn.Module,
    token_ids: Sequence[int] | torch.Tensor,
    gaps: Sequence[int],
    span: int = 32,
    samples: int = 8,
    model_name: str = "model",
    progress: bool = True,
) -> ProbeResult:
    """Run the probe (module docstring) on `token_ids` [N] for each gap; one forward per sample and gap."""
    token_ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if span < 2 or samples < 1 or not gaps or any(g < 0 for g in gaps):
        raise ValueError(
            f"need span >= 2, samples >= 1 and gaps >= 0; got span {span}, samples {samples}, gaps {list(gaps)}."
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    result = ProbeResult(model_name, span, samples)
    try:
        for gap in progress_bar(sorted(gaps), desc="copy probe", disable=not progress):
            rows = probe_sequences(token_ids, span, gap, samples).to(device)
            first_nll, repeat_nll, first_hit, repeat_hit = [], [], [], []
            with torch.no_grad():
                for row in rows:
                    logits = model(row[None]).logits[0, :-1].float()  # predicts row[1:]
                    targets = row[1:]
                    nll = F.cross_entropy(logits, targets, reduction="none")
                    hit = (logits.argmax(-1) == targets).float()
                    first = slice(0, span - 1)  # predictions of A[1:] the first time
                    repeat = slice(span + gap, 2 * span + gap - 1)  # ... and after the gap
                    first_nll.append(nll[first])
                    repeat_nll.append(nll[repeat])
                    first_hit.append(hit[first])
                    repeat_hit.append(hit[repeat])
            result.gaps.append(int(gap))
            result.first_loss.append(float(torch.cat(first_nll).mean()))
            result.repeat_loss.append(float(torch.cat(repeat_nll).mean()))
            result.first_accuracy.append(float(torch.cat(first_hit).mean()))
            result.repeat_accuracy.append(float(torch.cat(repeat_hit).mean()))
    finally:
        model.train(was_training)
    return result


def loss_by_position(
    model: torch.nn.Module,
    token_ids: Sequence[int] | torch.Tensor,
    length: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Mean NLL (nats, fp64) at each position of non-overlapping chunks of `length`: `[length - 1]`.

    Entry i is the loss on the token predicted from the chunk's first i + 1 tokens. Every chunk contributes one token
    to every position, so the curve's mean is the non-overlapping loss at this length (`perplexity_at_lengths`, same
    tokens) and its shape shows how much of that is the early-token curse (Press et al. 2022, section 5).
    """
    token_ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        token_ids = token_ids[:max_tokens]
    chunks = token_ids.numel() // length
    if length < 2 or chunks < 1:
        raise ValueError(f"need length >= 2 and at least one chunk; got length {length}, {token_ids.numel()} tokens.")
    windows = token_ids[: chunks * length].view(chunks, length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(length - 1, dtype=torch.float64)
    try:
        with torch.no_grad():
            for begin in range(0, chunks, batch_size):
                x = windows[begin : begin + batch_size].to(device)
                logits = model(x).logits[:, :-1].float()
                nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # [B, length - 1]
                total += nll.double().sum(0).cpu()
    finally:
        model.train(was_training)
    return total / chunks


def alibi_reach(slopes: Sequence[float], weight: float = 0.01) -> list[int]:
    """Per head, the distance at which ALiBi's bias alone leaves `weight` of the nearest key's weight: ln(1/w) / m."""
    return [math.ceil(math.log(1 / weight) / m) for m in slopes]


def position_buckets(length: int, training_length: int) -> list[tuple[int, int]]:
    """Context sizes [first, last] grouping a curve of `length - 1` positions: 1-8, 9-L, L+1-2L, 2L+1-4L, ..."""
    edges = [0, min(8, length - 1)]
    bound = training_length
    while edges[-1] < length - 1:
        edges.append(min(max(bound, edges[-1] + 1), length - 1))
        bound *= 2
    return [(a + 1, b) for a, b in zip(edges, edges[1:]) if b > a]


def _smoothed(curve: Sequence[float], per_octave: int = 4) -> tuple[list[float], list[float]]:
    """Mean of `curve` (entry i = context i + 1) in log-spaced bins: (geometric bin centres, means)."""
    xs, ys, start = [], [], 1
    while start <= len(curve):
        stop = max(start + 1, math.floor(start * 2 ** (1 / per_octave) + 0.5))
        values = curve[start - 1 : stop - 1]
        xs.append(math.sqrt(start * (start + len(values) - 1)))
        ys.append(sum(values) / len(values))
        start = stop
    return xs, ys


def _probe_model_names(paths: Sequence[str]) -> list[str]:
    """Short, distinct names for the models of a plot: the folder names, or the paths where those repeat."""
    names = [Path(p).name or p for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def run_probe(args: argparse.Namespace, texts: TextPrefix, device: str) -> int:
    """`alibi-lm eval --probe`: the copy probe for each model, on the first `--max-tokens` tokens of the texts (all
    of them without); table, per-head ALiBi reach, JSON, plot."""
    from .scoring import load_model_and_tokenizer, tokenize_texts, training_length

    results, reach = [], {}
    for path, name in zip(args.models, _probe_model_names(args.models)):
        model, tokenizer = load_model_and_tokenizer(path, device, args.dtype)
        train_len = training_length(model.config) or 64
        gaps = args.probe_gaps or [0, train_len // 2, train_len, 4 * train_len, 16 * train_len]
        token_ids = tokenize_texts(texts.up_to(tokenizer, args.max_tokens), tokenizer)[: args.max_tokens]
        result = copy_probe(
            model, token_ids, gaps, span=args.probe_span, samples=args.probe_samples, model_name=name,
            progress=not args.no_progress,
        )  # fmt: skip
        print(result.to_table())
        if getattr(model.config, "position_encoding", None) == "alibi":
            from .modeling.alibi_masks import get_alibi_slopes

            slopes = get_alibi_slopes(model.config.num_attention_heads, model.config.alibi_max_bias).tolist()
            reach[name] = alibi_reach(slopes)
            print("ALiBi bias alone leaves 1% of the weight at distances (per head):", reach[name])
        results.append((result, train_len))
        del model
    if args.json:
        payload = {"probe": [r.to_dict() | {"training_length": t} for r, t in results], "alibi_reach_1pct": reach}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    if args.plot:
        from .plotting import plot_curves

        # Distance from a token of the repeat back to its first copy: span + gap.
        curves = {r.model_name: ([r.span + g for g in r.gaps], r.repeat_loss) for r, _ in results}
        first = {f"{r.model_name}, first time": ([r.span + g for g in r.gaps], r.first_loss) for r, _ in results}
        lengths = sorted({t for _, t in results})
        plot_curves(
            curves, args.plot, xlabel="distance back to the first copy (span + gap, tokens)",
            ylabel="loss on the repeated span (nats)", title=f"Copy probe: span {args.probe_span}, repeat after a gap",
            marks={f"training length {t}": t for t in lengths}, dashed=first,
        )  # fmt: skip
    return 0


def run_by_position(args: argparse.Namespace, texts: TextPrefix, device: str) -> int:
    """`alibi-lm eval --by-position`: the loss at each position of non-overlapping chunks, per model."""
    from .scoring import load_model_and_tokenizer, tokenize_texts, training_length

    rows = []
    length = max(args.lengths) if args.lengths else None
    for path, name in zip(args.models, _probe_model_names(args.models)):
        model, tokenizer = load_model_and_tokenizer(path, device, args.dtype)
        train_len = training_length(model.config)
        if length is None:
            if not train_len:
                raise ValueError(f"{path}: config has no train_length or max_position_embeddings; pass --lengths")
            length = 16 * train_len
        curve = loss_by_position(
            model, tokenize_texts(texts.up_to(tokenizer, args.max_tokens), tokenizer), length,
            batch_size=args.batch_size or max(1, 8192 // length),
            max_tokens=args.max_tokens,
        )  # fmt: skip
        rows.append({"model": name, "training_length": train_len, "length": length, "loss": curve.tolist()})
        del model
    chunks_tokens = f"chunks of {length}"
    buckets = position_buckets(length, rows[0]["training_length"] or length)
    lines = [
        f"loss (nats) by context size inside non-overlapping {chunks_tokens}",
        "| context (tokens) | " + " | ".join(r["model"] for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for first, last in buckets:
        cells = [sum(r["loss"][first - 1 : last]) / (last - first + 1) for r in rows]
        lines.append(f"| {first}-{last} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    means = [sum(r["loss"]) / len(r["loss"]) for r in rows]
    lines.append("| all (= non-overlapping loss) | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines.append("| perplexity | " + " | ".join(f"{math.exp(m):.2f}" for m in means) + " |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"by_position": rows}, indent=2) + "\n")
    if args.plot:
        from .plotting import plot_curves

        curves = {r["model"]: _smoothed(r["loss"]) for r in rows}
        trained = sorted({r["training_length"] for r in rows if r["training_length"]})
        plot_curves(
            curves, args.plot, xlabel="context: tokens seen inside the chunk (log scale)", ylabel="loss (nats)",
            title=f"Loss by position inside non-overlapping {chunks_tokens}",
            marks={f"training length {t}": t for t in trained},
            ticks=[2**k for k in range(int(math.log2(length)) + 1)],
        )  # fmt: skip
    return 0


__all__ = [
    "ProbeResult",
    "alibi_reach",
    "copy_probe",
    "loss_by_position",
    "position_buckets",
    "probe_sequences",
    "run_by_position",
    "run_probe",
]
