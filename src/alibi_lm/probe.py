"""How far back a model can look: a span of held-out text, repeated after a gap of d tokens.

    alibi-lm eval MODEL --probe [--probe-span 32] [--probe-gaps 0 16 64 256 1024] [--probe-samples 8]

Perplexity can stay flat far past the training length while the model uses only its last few hundred tokens. The
probe asks directly: each sample is a span A of held-out tokens, then d other held-out tokens (the gap), then A
again. A model that can reach back span + d tokens predicts the repeat far better than it predicted A the first
time. The result, per gap: the mean loss (nats) and top-1 accuracy on A's tokens the first time and on the repeat
(both on A[1:], the tokens that have a predecessor inside A). Where the repeat's loss rises to the first time's,
retrieval has stopped, whatever perplexity says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


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
        for gap in tqdm(sorted(gaps), desc="copy probe", disable=not progress):
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


__all__ = ["ProbeResult", "alibi_reach", "copy_probe", "loss_by_position", "probe_sequences"]
